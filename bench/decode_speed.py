"""Benchmark: whole decode of a 512x768 Kodak image coded with mop.

    python bench/decode_speed.py [--bitstream bench/data/kodim01_mop.cool] [--threads 1] [--repeat 10]

1. In-process, single thread, after warm-up: total decode time of
   ``decoder_runtime.decode`` and its split (parse, latents, graph + session,
   upsampling + synthesis, output), min over runs.
2. Process wall time of ``coolchic-decode`` (warm numba cache), min over runs,
   and the peak resident memory of that process.
Last line: ``decode_total_ms=<in-process min> ms``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from coolchic import decoder_runtime  # noqa: E402


def child_wall_and_rss(cmd, runs: int):
    walls, rss = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
        # ru_maxrss of children is the largest of all children waited for so far (KiB on Linux).
        rss = max(rss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return min(walls), rss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bitstream", type=Path, default=HERE / "data" / "kodim01_mop.cool")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    if not args.bitstream.exists():
        sys.exit(f"{args.bitstream} is missing: run python bench/make_bench_bitstreams.py first")
    data = args.bitstream.read_bytes()
    decoder_runtime.decode(data, threads=args.threads)  # warm-up: JIT cache, tables, session
    best = None
    for _ in range(args.repeat):
        d = decoder_runtime.decode(data, threads=args.threads, timings=True)
        if best is None or d.timings["total"] < best["total"]:
            best = d.timings
    img = d.image
    print(f"{args.bitstream.name}: {len(data)} bytes, {img.width}x{img.height}, "
          f"{8 * len(data) / (img.width * img.height):.4f} bpp, threads={args.threads}")
    order = ("parse", "latents", "graph_build", "session", "upsampling_synthesis", "output")
    print("in-process (ms): " + ", ".join(f"{k} {1e3 * best.get(k, 0):.1f}" for k in order)
          + f"; total {1e3 * best['total']:.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.png")
        exe = [sys.executable, "-m", "coolchic.decoder_runtime", "-i", str(args.bitstream), "-o", out,
               "--threads", str(args.threads)]
        subprocess.run(exe, check=True, capture_output=True)  # warm numba cache on disk
        wall, rss = child_wall_and_rss(exe, 5)
    print(f"coolchic-decode process: wall {wall:.3f} s (min of 5), peak RSS {rss:.0f} MB")
    print(f"decode_total_ms={1e3 * best['total']:.1f} ms")


if __name__ == "__main__":
    main()
