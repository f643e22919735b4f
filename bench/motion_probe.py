"""How good a prediction do low-resolution motion fields give, and what do they cost?

    python bench/motion_probe.py [--n-frames 9] [--p-pos 8] [--factors 1,4,8,16]

A design probe for inter coding (issue 9), not a codec. For each P and B
frame of the coding structure (default: random access, I0 P8 and
hierarchical B frames between), OpenCV's DIS optical flow (preset medium)
from the frame to each of its references, computed on the original luma,
is averaged down by each ``--factors`` value (area), rounded to a quarter
pixel, upsampled back bilinearly and used to warp the original references
(bilinear, border replication; a B frame averages its two predictions).
Printed per frame and factor: the luma PSNR of that prediction, and the
motion's zeroth-order entropy in bytes (each component of each vector
predicted by its left neighbour, the first of a row by the one above; the
empirical entropy of the quarter-pixel differences, all fields of the frame
pooled), a rough bound of what a classical motion coder without side
models would spend.

Both are optimistic: the flow and the warps use the originals, not decoded
frames. The point is the scale: how far the motion resolution can drop
before the prediction suffers, against the few hundred bytes that x265
spends on a frame of this clip (``--x265-crf``: x265 medium's bytes per
frame at that CRF, same frames, one intra frame, through PyAV as
``bench/rd_video.py`` runs it). Needs ``opencv-python-headless`` (the
``encoder`` extra). Last line: ``b_frame_prediction_psnr_y=<dB> dB`` (mean
over the B frames at the middle factor).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rd_kodak import psnr  # noqa: E402  (also puts the repository on sys.path)
from rd_video import VIDEO  # noqa: E402
from video_anchors import encode_ffmpeg, psnr_yuv, read_yuv420  # noqa: E402

from coolchic.decoder_runtime.coding_structure import coding_structure  # noqa: E402

QUARTER_PEL = 4


def entropy_bits(values: np.ndarray) -> float:
    """Zeroth-order empirical entropy of integer ``values``, in bits (total)."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def neighbour_residual(q: np.ndarray) -> np.ndarray:
    """Each value minus its left neighbour (the first column: minus the value above)."""
    r = q.copy()
    r[:, 1:] -= q[:, :-1]
    r[1:, 0] -= q[:-1, 0]
    return r


def main() -> None:
    import cv2

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, default=VIDEO)
    ap.add_argument("--size", default="640x272")
    ap.add_argument("--n-frames", type=int, default=9)
    ap.add_argument("--p-pos", default="8", help="P frame positions (default 8: random access)")
    ap.add_argument("--factors", default="1,4,8,16", help="motion downsampling factors")
    ap.add_argument("--x265-crf", type=float, default=None, help="also x265 medium's bytes per frame at this CRF")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    factors = [int(v) for v in args.factors.split(",")]
    frames = read_yuv420(args.input, w, h, args.n_frames)
    luma = [f[0] for f in frames]
    if args.x265_crf is not None:
        sizes: list = []
        n_bytes, decoded = encode_ffmpeg(frames, "libx265", args.x265_crf, packet_sizes=sizes)
        print(f"x265 medium CRF {args.x265_crf:g}: {n_bytes} bytes, PSNR-YUV {psnr_yuv(frames, decoded):.2f} dB; "
              "bytes per frame (display order): " + ", ".join(f"{i}: {b}" for i, b in sorted(sizes)))
    structure = coding_structure(args.n_frames, (0,), [int(v) for v in args.p_pos.split(",") if v])
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

    def warp(ref: np.ndarray, flow: np.ndarray) -> np.ndarray:
        return cv2.remap(ref.astype(np.float32), gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)

    print("frame\ttype\tdepth\t" + "\t".join(f"1/{f}: dB, bytes" for f in factors))
    b_psnr = []
    mid = factors[len(factors) // 2]
    for spec in structure:
        if spec.frame_type == "I":
            continue
        t = spec.display_index
        flows = [dis.calc(luma[t], luma[r], None) for r in spec.refs]
        cells = []
        for f in factors:
            preds, residuals = [], []
            for r, flow in zip(spec.refs, flows):
                small = cv2.resize(flow, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
                q = np.round(small * QUARTER_PEL).astype(np.int64)
                residuals += [neighbour_residual(q[..., c]).ravel() for c in range(2)]
                up = cv2.resize(q.astype(np.float32) / QUARTER_PEL, (w, h), interpolation=cv2.INTER_LINEAR)
                preds.append(warp(luma[r], up))
            p = psnr(luma[t], np.mean(preds, axis=0))
            n_bytes = entropy_bits(np.concatenate(residuals)) / 8
            cells.append(f"{p:.2f}, {n_bytes:.0f}")
            if spec.frame_type == "B" and f == mid:
                b_psnr.append(p)
        print(f"{t}\t{spec.frame_type}\t{spec.depth}\t" + "\t".join(cells), flush=True)
    print(f"b_frame_prediction_psnr_y={np.mean(b_psnr):.2f} dB")


if __name__ == "__main__":
    main()
