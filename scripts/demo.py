"""Demo: encode examples/kodim15_192x128.png, decode it without torch, report.

Runs the two installed commands as separate processes, as a user would, so the
decoder process never has torch imported.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=REPO / "examples" / "kodim15_192x128.png")
    ap.add_argument("--lmbda", default="0.001")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--dec-cfg", default="mop")
    ap.add_argument("--out", type=Path, default=REPO / "out")
    args = ap.parse_args()
    args.out.mkdir(exist_ok=True)
    bitstream = args.out / (args.image.stem + ".cool")
    decoded = args.out / (args.image.stem + "_decoded.png")

    t0 = time.perf_counter()
    subprocess.run([str(BIN / "coolchic-encode"), "-i", str(args.image), "-o", str(bitstream),
                    "--lmbda", args.lmbda, "--preset", args.preset, "--dec-cfg", args.dec_cfg], check=True)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "coolchic-decode"), "-i", str(bitstream), "-o", str(decoded), "--verbose"], check=True)
    t_dec = time.perf_counter() - t0

    ref = np.asarray(Image.open(args.image).convert("RGB"), dtype=np.float64)
    out = np.asarray(Image.open(decoded).convert("RGB"), dtype=np.float64)
    mse = np.mean((ref - out) ** 2)
    n_bytes = bitstream.stat().st_size
    h, w = ref.shape[:2]
    print(f"\n{args.image.name} {w}x{h}: {n_bytes} bytes, {8 * n_bytes / (h * w):.4f} bpp, "
          f"PSNR {10 * np.log10(255 ** 2 / mse):.2f} dB, encode {t_enc:.1f} s, decode {t_dec:.2f} s (process wall)")
    print(f"bitstream: {bitstream}\ndecoded:   {decoded}")


if __name__ == "__main__":
    main()
