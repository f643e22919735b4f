"""Make the bitstreams the decoding benchmarks read (bench/data/*.cool).

    python bench/make_bench_bitstreams.py [--preset fast] [--lmbda 0.001] [--substreams 2]

Encodes ../shared/data/kodak/kodim01.png (512x768) with the mop configuration
and writes bench/data/kodim01_mop.cool. Also prints how the training-side rate
(float Laplace model) compares with the integer model and the coded size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from coolchic.decoder_runtime.atomic_file import atomic_write_bytes  # noqa: E402
from coolchic.decoder_runtime.image_io import read_image  # noqa: E402
from coolchic.encoder.api import encode_image  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=HERE.parent.parent / "shared" / "data" / "kodak" / "kodim01.png")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--dec-cfg", default="mop")
    ap.add_argument("--lmbda", type=float, default=1e-3)
    ap.add_argument("--substreams", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "data" / "kodim01_mop.cool")
    args = ap.parse_args()
    from coolchic.encoder.cpu import configure_cpu

    configure_cpu(args.threads)  # an application's choice, as coolchic-encode makes it (malloc tuning)
    t0 = time.perf_counter()
    res = encode_image(read_image(args.image), lmbda=args.lmbda, preset=args.preset, dec_cfg=args.dec_cfg,
                       threads=args.threads, n_substreams=args.substreams, progress=sys.stderr.isatty())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, res.bitstream)
    s = res.summary
    coded = 8 * s["latent_bytes"]
    print(f"{args.out}: {s['bytes']} bytes, {s['bpp']:.4f} bpp, PSNR {s['psnr_db']:.2f} dB, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"latent rate: float model {s['float_latent_bits']:.0f} bits, integer model "
          f"{s['ideal_latent_bits']:.0f} bits ({100 * (s['ideal_latent_bits'] / s['float_latent_bits'] - 1):+.2f} %), "
          f"coded {coded} bits ({100 * (coded / s['float_latent_bits'] - 1):+.2f} % vs float, "
          f"range coder overhead {100 * (coded / s['ideal_latent_bits'] - 1):+.3f} %)")
    print(f"network parameters {s['param_bytes']} bytes, framing {s['header_bytes']} bytes")


if __name__ == "__main__":
    main()
