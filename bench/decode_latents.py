"""Benchmark: decode all latents of a 512x768 Kodak image coded with mop.

    python bench/decode_latents.py [--bitstream bench/data/kodim01_mop.cool] [--threads 1] [--repeat 20]

Parses the bitstream, warms the numba JIT up, then times decode_latents alone
(range decoding + integer ARM + IFCE), single thread by default, and the
scaling on 2 threads. Last line: ``decode_latents_ms=<min over runs> ms``.
The default bitstream is made by ``bench/make_bench_bitstreams.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from coolchic.decoder_runtime.bitstream import read_bitstream  # noqa: E402
from coolchic.decoder_runtime.latent_codec import decode_latents  # noqa: E402


def time_decode(bs, threads: int, repeat: int):
    decode_latents(bs, threads=threads)  # JIT warm-up (and numba cache load)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        decode_latents(bs, threads=threads)
        runs.append(time.perf_counter() - t0)
    return min(runs), statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bitstream", type=Path, default=HERE / "data" / "kodim01_mop.cool")
    ap.add_argument("--threads", type=int, default=1, help="threads for the headline figure (default 1)")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    if not args.bitstream.exists():
        sys.exit(f"{args.bitstream} is missing: run python bench/make_bench_bitstreams.py first")
    bs = read_bitstream(args.bitstream.read_bytes())
    a = bs.arch
    n = a.n_latent_values()
    print(f"bitstream: {args.bitstream.name}, {bs.n_bytes} bytes, {a.img_size[0]}x{a.img_size[1]}, "
          f"ARM {a.spatial_context_arm},{a.n_hidden_layers_arm}, IFCE {a.ifce_features}, "
          f"{len(bs.substreams)} substreams, {n} latents")
    best, med = time_decode(bs, args.threads, args.repeat)
    print(f"threads={args.threads}: min {best * 1e3:.1f} ms, median {med * 1e3:.1f} ms, "
          f"{n / best / 1e6:.2f} M latents/s")
    if args.threads == 1 and len(bs.substreams) > 1:
        best2, med2 = time_decode(bs, 2, args.repeat)
        print(f"threads=2: min {best2 * 1e3:.1f} ms, median {med2 * 1e3:.1f} ms, "
              f"{n / best2 / 1e6:.2f} M latents/s, scaling x{best / best2:.2f}")
    print(f"decode_latents_ms={best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
