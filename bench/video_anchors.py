"""Video anchors for bench/rd_video.py: raw YUV 4:2:0 I/O, PSNR-YUV, x265/x264.

Plain functions, no state:

- :func:`read_yuv420`: frames of a raw planar 4:2:0 file (Y, U, V of each
  frame, frames back to back; 8 bit one byte a sample, above that two bytes
  little endian).
- :func:`psnr_yuv`: the sequence PSNR-YUV on 4:2:0, by default the JVET one,
  ``(6 * PSNR_Y + PSNR_U + PSNR_V) / 8`` per frame, mean over frames (two
  MSE-weighted conventions on request, among them the reference Cool-chic's).
- :func:`encode_ffmpeg`: x265 / x264 through PyAV (FFmpeg's libx265 /
  libx264), in memory: encode, decode back, count the bytes.
- :func:`anchor_curve`: a CRF sweep of :func:`encode_ffmpeg`.
- :func:`bd_rate`: Bjontegaard delta rate with the ``bjontegaard`` package's
  pchip fit, the function of bench/rd_kodak.py.

PyAV (``av``) and ``bjontegaard`` come with the ``bench`` extra.
"""

from __future__ import annotations

import sys
import warnings
from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent

Frame = Tuple[np.ndarray, np.ndarray, np.ndarray]  # Y (H x W), U, V (H/2 x W/2)

# FFmpeg decoder of each encoder's stream.
_DECODERS = {"libx265": "hevc", "libx264": "h264"}


def read_yuv420(path, width: int, height: int, n_frames: int, bitdepth: int = 8) -> List[Frame]:
    """The first ``n_frames`` frames of a raw planar YUV 4:2:0 file.

    Each frame is Y (``height`` x ``width``) then U and V (``height/2`` x
    ``width/2``), frames back to back. Samples are uint8 at 8 bit, uint16
    (little endian in the file) above. Raises ValueError when the file holds
    fewer frames.
    """
    if width % 2 or height % 2:
        raise ValueError(f"4:2:0 needs an even size, got {width}x{height}")
    dtype = np.dtype(np.uint8) if bitdepth <= 8 else np.dtype("<u2")
    cw, ch = width // 2, height // 2
    n_y, n_c = width * height, cw * ch
    per_frame = n_y + 2 * n_c
    data = np.fromfile(path, dtype=dtype, count=per_frame * n_frames)
    if data.size < per_frame * n_frames:
        raise ValueError(f"{path}: {data.size // per_frame} frames of {width}x{height}, asked for {n_frames}")
    if bitdepth > 8:
        data = data.astype(np.uint16)
    frames = []
    for i in range(n_frames):
        f = data[i * per_frame:(i + 1) * per_frame]
        frames.append((
            f[:n_y].reshape(height, width).copy(),
            f[n_y:n_y + n_c].reshape(ch, cw).copy(),
            f[n_y + n_c:].reshape(ch, cw).copy(),
        ))
    return frames


def _psnr(mse: float, peak: float) -> float:
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


# PSNR-YUV conventions of :func:`psnr_yuv`.
PSNR_MODES = ("psnr611", "mse611", "mse411")


def psnr_yuv(ref_frames: Sequence[Frame], dec_frames: Sequence[Frame], bitdepth: int = 8,
             mode: str = "psnr611") -> float:
    """PSNR-YUV (dB) of a 4:2:0 sequence; peak ``2**bitdepth - 1``.

    ``mode="psnr611"`` (default, the JVET common-test-conditions PSNR-YUV):
    per frame, the MSE of Y, U and V separately, a PSNR per plane, weighted
    ``(6 * PSNR_Y + PSNR_U + PSNR_V) / 8``; then the mean of these per-frame
    values over the frames. A plane with no error gives an infinite PSNR (and
    so an infinite result).

    Two other conventions, both a PSNR of one weighted MSE of the whole
    sequence (each plane's MSE averaged over the frames first):
    ``"mse611"``: ``-10 log10((6 MSE_Y + MSE_U + MSE_V) / 8)`` -- the one the
    x265 figures of ../shared/data/video/SOURCE.md were computed with;
    ``"mse411"``: ``-10 log10((4 MSE_Y + MSE_U + MSE_V) / 6)`` (MSE weighted by
    sample count) -- the PSNR_YUV420 of the reference Cool-chic's documentation
    (docs/source/results/video.rst) and training loss. On the same decoded
    frames ``psnr611`` reads higher than ``mse411``, which reads higher than
    ``mse611`` (0.3-1.3 dB apart on the bikes clip with x265).
    """
    if len(ref_frames) != len(dec_frames):
        raise ValueError(f"{len(ref_frames)} reference frames, {len(dec_frames)} decoded")
    if mode not in PSNR_MODES:
        raise ValueError(f"mode {mode!r}: one of {PSNR_MODES}")
    peak = float(2**bitdepth - 1)
    mse = np.array([
        [float(np.mean((np.asarray(r, np.float64) - np.asarray(d, np.float64)) ** 2)) for r, d in zip(ref, dec)]
        for ref, dec in zip(ref_frames, dec_frames)
    ])  # frames x (Y, U, V)
    if mode == "psnr611":
        return float(np.mean([(6 * _psnr(y, peak) + _psnr(u, peak) + _psnr(v, peak)) / 8 for y, u, v in mse]))
    y, u, v = mse.mean(axis=0)
    return _psnr((6 * y + u + v) / 8 if mode == "mse611" else (4 * y + u + v) / 6, peak)


def _codec_options(codec: str, crf: float, preset: str, gop: int) -> dict:
    opts = {"crf": str(crf), "preset": preset}
    if codec == "libx265":
        # info=0: no SEI with x265's version and option string (~2 KB a stream).
        opts["x265-params"] = f"keyint={gop}:min-keyint={gop}:log-level=error:info=0"
    elif codec == "libx264":
        opts["x264-params"] = f"keyint={gop}:min-keyint={gop}"
    else:
        raise ValueError(f"codec {codec!r}: libx265 or libx264")
    return opts


def _is_sei(codec: str, nal: bytes) -> bool:
    if codec == "libx265":
        return (nal[0] >> 1) & 0x3F in (39, 40)  # HEVC prefix / suffix SEI
    return nal[0] & 0x1F == 6  # H.264 SEI


def strip_sei(codec: str, data: bytes) -> bytes:
    """An Annex B access unit without its SEI NAL units (metadata a decoder does not need)."""
    starts = []  # (start of the start code, start of the NAL)
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append((i - 1 if i > 0 and data[i - 1] == 0 else i, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    if not starts:
        return data
    out = [data[:starts[0][0]]]
    for k, (sc, nal) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(data)
        if nal < end and not _is_sei(codec, data[nal:nal + 1]):
            out.append(data[sc:end])
    return b"".join(out)


def encode_ffmpeg(
    frames: Sequence[Frame],
    codec: str = "libx265",
    crf: float = 32,
    preset: str = "medium",
    gop: Optional[int] = None,
    fps: int = 25,
    threads: Optional[int] = None,
    keep_sei: bool = False,
    packet_sizes: Optional[list] = None,
) -> Tuple[int, List[Frame]]:
    """Encode 8-bit YUV 4:2:0 ``frames`` with x265 / x264 (PyAV), decode them back.

    yuv420p, constant rate factor ``crf``, the encoder's ``preset`` with its
    default B-frame structure (medium: x265 4 B frames, x264 3, adaptive), an
    intra period of ``gop`` frames (keyint = min-keyint = gop; default: the
    number of frames, a single intra frame). The stream is coded in memory,
    Annex B with in-band parameter sets (VPS/SPS/PPS, counted), and decoded
    with FFmpeg's HEVC / H.264 decoder. ``threads``: the encoder's thread
    count (None: FFmpeg's default).

    The SEI NAL units are dropped from the stream before it is counted and
    decoded (``keep_sei`` keeps them): with these settings they only carry the
    encoder's version and option string, about 2 KB for x265 (also turned off
    with its ``info=0``) and 0.6 KB for x264, as large as a whole low-rate
    stream of a few frames. ``packet_sizes``, a list, receives (display
    index, bytes) of each packet after that.

    Returns (bytes of the coded stream: the sum of the packet sizes, the
    decoded frames in display order as (Y, U, V) uint8 planes).
    """
    import av

    if codec not in _DECODERS:
        raise ValueError(f"codec {codec!r}: libx265 or libx264")
    h, w = frames[0][0].shape
    gop = int(gop or len(frames))
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height = w, h
    enc.pix_fmt = "yuv420p"
    enc.time_base = Fraction(1, fps)
    enc.framerate = Fraction(fps, 1)
    enc.gop_size = gop
    if threads:
        enc.thread_count = int(threads)
    enc.options = _codec_options(codec, crf, preset, gop)

    packets = []
    for i, (y, u, v) in enumerate(frames):
        if y.dtype != np.uint8:
            raise ValueError("encode_ffmpeg takes 8-bit frames")
        buf = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(h * 3 // 2, w)
        frame = av.VideoFrame.from_ndarray(buf, format="yuv420p")
        frame.pts = i
        frame.time_base = enc.time_base
        packets += enc.encode(frame)
    packets += enc.encode(None)
    if not keep_sei:
        stripped = []
        for p in packets:
            q = av.Packet(strip_sei(codec, bytes(p)))
            q.pts, q.dts, q.time_base = p.pts, p.dts, p.time_base
            stripped.append(q)
        packets = stripped
    n_bytes = sum(p.size for p in packets)
    if packet_sizes is not None:
        packet_sizes += [(int(p.pts), p.size) for p in packets]

    dec = av.CodecContext.create(_DECODERS[codec], "r")
    out = []
    for p in packets:
        out += dec.decode(p)
    out += dec.decode(None)
    if len(out) != len(frames):
        raise RuntimeError(f"{codec}: {len(frames)} frames coded, {len(out)} decoded")
    decoded = []
    n_y, n_c = h * w, (h // 2) * (w // 2)
    for f in out:
        a = f.to_ndarray(format="yuv420p").ravel()
        decoded.append((
            a[:n_y].reshape(h, w).copy(),
            a[n_y:n_y + n_c].reshape(h // 2, w // 2).copy(),
            a[n_y + n_c:n_y + 2 * n_c].reshape(h // 2, w // 2).copy(),
        ))
    return n_bytes, decoded


def anchor_curve(
    frames: Sequence[Frame],
    codec: str = "libx265",
    crfs: Sequence[float] = (22, 27, 32, 37, 42),
    gop: Optional[int] = None,
    preset: str = "medium",
    fps: int = 25,
    threads: Optional[int] = None,
    psnr_mode: str = "psnr611",
) -> List[dict]:
    """One :func:`encode_ffmpeg` per CRF: dicts with crf, bytes, bpp (8 * bytes / (W * H * frames)),
    psnr (:func:`psnr_yuv` with ``psnr_mode``)."""
    h, w = frames[0][0].shape
    pts = []
    for crf in crfs:
        n_bytes, dec = encode_ffmpeg(frames, codec, crf, preset=preset, gop=gop, fps=fps, threads=threads)
        pts.append({
            "crf": crf,
            "bytes": n_bytes,
            "bpp": 8 * n_bytes / (w * h * len(frames)),
            "psnr": psnr_yuv(frames, dec, mode=psnr_mode),
        })
    return pts


def _as_pairs(curve) -> List[Tuple[float, float]]:
    return [(float(p["bpp"]), float(p["psnr"])) if isinstance(p, dict) else (float(p[0]), float(p[1])) for p in curve]


def bd_rate(curve_a, curve_b) -> float:
    """Bjontegaard delta rate (%) of ``curve_a`` against ``curve_b``: negative = a needs fewer bits.

    Each curve is a list of dicts with ``bpp`` and ``psnr`` (as
    :func:`anchor_curve` returns) or of (bpp, psnr) pairs. bench/rd_kodak.py's
    ``bd_rate``: the ``bjontegaard`` package's pchip fit of log-rate over PSNR
    on the PSNR interval both curves cover; NaN with fewer than 4 points a
    curve, on a degenerate curve, or when ``bjontegaard`` is not installed.
    """
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from rd_kodak import bd_rate as _rd_kodak_bd_rate

    try:
        import bjontegaard  # noqa: F401
    except ImportError:
        warnings.warn("bjontegaard not installed (pip install '.[bench]'): BD-rate is NaN")
        return float("nan")
    return _rd_kodak_bd_rate(_as_pairs(curve_b), _as_pairs(curve_a))
