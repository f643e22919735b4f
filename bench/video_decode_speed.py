"""Benchmark: decoding the P and B frames of a 640x272 sequence, one thread.

    python bench/video_decode_speed.py [--bitstream bench/data/bikes_ipb_mop.cool] [--repeat 10]
    python bench/video_decode_speed.py --make [--dec-cfg-inter mop]    # (re)build the bitstream

The bitstream holds frames 0-2 of ../shared/data/video/bikes_640x272_25p_yuv420_8b.yuv
coded I0, P2, B1 (``--make`` encodes it with a short preset; decode speed
depends on the decoder configuration and the latent count, not on how long
the encoder trained). Each run decodes the whole sequence with
``decoder_runtime.decode_video`` (one thread, warm numba cache) and takes each
frame's time from its ``timings``: latents, upsampling and synthesis,
onnxruntime session, motion compensation. Two series of ``--repeat`` runs:
with the sessions known (the session cache kept from the previous run: what
every frame of a type after the first pays in a longer sequence, the graphs
taking the weights as inputs), then as a new file (the cache emptied before
each run: the first frame of each type makes its session). Reports the
median, min and max per frame and in frames per second.
Last line: ``inter_frame_decode_ms=<median of the P and B frames> ms``, new file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
CLIP = REPO.parent / "shared" / "data" / "video" / "bikes_640x272_25p_yuv420_8b.yuv"


def make(path: Path, dec_cfg_inter: str) -> None:
    from coolchic.encoder.video import encode_video, read_sequence

    frames = read_sequence(CLIP, 3)
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "short.cfg"
        cfg.write_text("n_itr = 60\nwarmup = 1x20\nfinal_itr = 10\nrdoq = false\n")
        res = encode_video(frames, (0,), (2,), lmbda=0.002, preset=str(cfg), dec_cfg="mop",
                           dec_cfg_inter=dec_cfg_inter, dec_cfg_b=dec_cfg_inter, threads=2)
    path.write_bytes(res.bitstream)
    print(f"wrote {path}: {len(res.bitstream)} bytes, " + ", ".join(
        f"{s['type']}{s['display_index']} {s['bytes']} B {s['psnr_db']:.2f} dB" for s in res.frames))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bitstream", type=Path, default=None)
    ap.add_argument("--dec-cfg-inter", default="mop", help="with --make: decoder of the P and B frames")
    ap.add_argument("--make", action="store_true", help="encode the bitstream first")
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    path = args.bitstream or HERE / "data" / f"bikes_ipb_{args.dec_cfg_inter}.cool"
    if args.make or not path.exists():
        make(path, args.dec_cfg_inter)

    from coolchic.decoder_runtime import decode_video
    from coolchic.decoder_runtime.ort_session import clear_session_cache
    from coolchic.decoder_runtime.sequence import index_sequence

    data = path.read_bytes()
    _, entries = index_sequence(data)
    kinds = {e.spec.display_index: e.spec.frame_type for e in entries}
    list(decode_video(data))  # warm-up: numba kernels loaded

    def run(new_sessions: bool):
        per = {k: [] for k in kinds}
        parts = {k: {"latents": [], "upsampling_synthesis": [], "motion_compensation": [], "session": []}
                 for k in kinds}
        walls = []
        for _ in range(args.repeat):
            if new_sessions:
                clear_session_cache()
            t0 = time.perf_counter()
            for i, dec in enumerate(decode_video(data, threads=1, timings=True)):
                per[i].append(dec.timings["total"])
                for name in parts[i]:
                    parts[i][name].append(dec.timings.get(name, 0.0))
            walls.append(time.perf_counter() - t0)
        return per, parts, walls

    # The graphs take the weights as inputs: within a sequence (and from one
    # sequence to the next) every frame of a type and size after the first
    # runs in the session the first one made.
    for new_sessions in (False, True):
        per, parts, walls = run(new_sessions)
        print("new file (sessions made)" if new_sessions else "sessions known (a later frame of each type)")
        for i in sorted(per):
            ts = per[i]
            split = ", ".join(f"{k} {1e3 * statistics.median(v):.1f}" for k, v in parts[i].items() if any(v))
            print(f"  frame {i} ({kinds[i]}): median {1e3 * statistics.median(ts):.1f} ms "
                  f"(min {1e3 * min(ts):.1f}, max {1e3 * max(ts):.1f}); {split}")
        print(f"  whole sequence: median {statistics.median(walls):.3f} s for {len(per)} frames "
              f"({len(per) / statistics.median(walls):.1f} frames/s)")
    inter = [t for i, ts in per.items() if kinds[i] != "I" for t in ts]
    print(f"inter_frame_decode_ms={1e3 * statistics.median(inter):.1f} ms")


if __name__ == "__main__":
    main()
