"""One rate-distortion point against a finished curve: how many more bits a
variant spends than the curve at the same PSNR.

    python bench/rd_point.py --image kodim07 --lmbda 0.02 [--crop 256] [--preset fast]
                             [--dec-cfg mop] [--set arm=16,2 ...] [--seed 0] [--threads 1]
                             [--curve bench/results/rd.coolchic.tsv]

Encodes one Kodak image (centre crop) as ``bench/rd_kodak.py`` does, with
decoder options overridden by ``--set key=value`` (the names of the decoder
configuration files), decodes it with the runtime, and places (bpp, PSNR)
against that image's curve in ``--curve`` (a ``rd_kodak.py`` coolchic TSV):
``pchip`` interpolation of log-rate over PSNR, the Bjontegaard tools' fit.
A cheap first look at a change before a full ``rd_kodak.py`` run. Last line:
``rate_vs_curve=<percent> %`` (positive: more bits than the curve).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rd_kodak import load_images, psnr  # noqa: E402


def rate_vs_curve(curve_tsv: Path, image: str, bpp: float, psnr_db: float) -> float:
    """Percent more bits than ``image``'s curve at ``psnr_db``; the curve is the
    file's last run for that image (``rd_kodak.py`` appends a run per configuration)."""
    from scipy.interpolate import PchipInterpolator

    rows = [r for r in csv.DictReader(curve_tsv.open(), delimiter="\t") if r["image"] == image]
    last = rows[-1]["run"] if rows else None
    pts = sorted((float(r["psnr_db"]), float(r["bpp"])) for r in rows if r["run"] == last)
    if len(pts) < 2:
        return float("nan")
    f = PchipInterpolator([p for p, _ in pts], np.log([b for _, b in pts]), extrapolate=True)
    return float((bpp / np.exp(f(psnr_db)) - 1) * 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="kodim01", help="Kodak image name (default kodim01)")
    ap.add_argument("--lmbda", type=float, default=0.02)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--dec-cfg", default="mop")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="decoder option override")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--curve", type=Path, default=HERE / "results" / "rd.coolchic.tsv")
    args = ap.parse_args()

    from coolchic.decoder_runtime import decode
    from coolchic.decoder_runtime.frame import RawImage
    from coolchic.encoder.api import encode_image
    from coolchic.encoder.cpu import configure_cpu

    configure_cpu(args.threads)  # an application's choice, as coolchic-encode makes it (malloc tuning)
    n = int(args.image.replace("kodim", ""))
    name, img = load_images(n, args.crop or None)[n - 1]
    overrides = dict(kv.split("=", 1) for kv in args.set)
    raw = RawImage(tuple(img[..., c] for c in range(3)), "rgb", 8)
    t0 = time.perf_counter()
    res = encode_image(raw, lmbda=args.lmbda, preset=args.preset, dec_cfg=args.dec_cfg, overrides=overrides,
                       threads=args.threads, seed=args.seed)
    t_enc = time.perf_counter() - t0
    bpp = 8 * len(res.bitstream) / (img.shape[0] * img.shape[1])
    p = psnr(img, decode(res.bitstream).image.to_hwc())
    print(f"{name} lambda {args.lmbda} {overrides or ''}: {bpp:.4f} bpp, {p:.3f} dB, encode {t_enc:.1f} s")
    print(f"rate_vs_curve={rate_vs_curve(args.curve, name, bpp, p):+.1f} %")


if __name__ == "__main__":
    main()
