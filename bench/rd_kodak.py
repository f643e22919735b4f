"""Rate-distortion benchmark on Kodak: coolchic vs JPEG, WebP, AVIF and the reference.

    python bench/rd_kodak.py [--images 4] [--crop 256] [--lmbdas 0.001,0.004,0.02]
                             [--preset fast] [--dec-cfg mop] [--out bench/results/rd]

Encodes a subset of ../shared/data/kodak/ (optionally centre crops) with
coolchic at each lambda, decodes every bitstream with the torch-free runtime
and measures bpp (file size) and PSNR (RGB, 8 bit). Pillow's JPEG, WebP and
AVIF encoders sweep their quality on the same images. Prints a table per image
and lambda, the average curves, and BD-rates (Bjontegaard, cubic fit of
log-rate over PSNR) against each codec, and against the published reference
Cool-chic 5.0 per-image results when the images are whole Kodak images.
Writes a TSV, and a PNG plot when matplotlib is installed. Last line:
``bd_rate_vs_jpeg=<value> %``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
KODAK = SHARED / "data" / "kodak"
REFERENCE = SHARED / "reference" / "coolchic-results" / "v5.0-image-kodak.tsv"


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def load_images(n: int, crop: int | None):
    paths = sorted(KODAK.glob("kodim*.png"))[:n]
    out = []
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        if crop:
            h, w = img.shape[:2]
            y, x = (h - crop) // 2, (w - crop) // 2
            img = img[y:y + crop, x:x + crop]
        out.append((p.stem, np.ascontiguousarray(img)))
    return out


def pillow_curve(img: np.ndarray, fmt: str, qualities):
    pts = []
    for q in qualities:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, quality=int(q))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        pts.append((8 * buf.tell() / (img.shape[0] * img.shape[1]), psnr(img, dec)))
    return pts


def bd_rate(ref, test) -> float:
    """Average bitrate difference (%) of ``test`` vs ``ref`` at equal PSNR.

    Each curve is a list of (bpp, psnr). Cubic fit of log(rate) as a function
    of PSNR, integrated over the overlapping PSNR interval.
    """
    ref = sorted(ref, key=lambda p: p[1])
    test = sorted(test, key=lambda p: p[1])
    if len(ref) < 2 or len(test) < 2:
        return float("nan")
    r1, p1 = np.log([p[0] for p in ref]), np.array([p[1] for p in ref])
    r2, p2 = np.log([p[0] for p in test]), np.array([p[1] for p in test])
    lo, hi = max(p1.min(), p2.min()), min(p1.max(), p2.max())
    if hi <= lo:
        return float("nan")
    deg1, deg2 = min(3, len(ref) - 1), min(3, len(test) - 1)
    c1, c2 = np.polyfit(p1, r1, deg1), np.polyfit(p2, r2, deg2)
    i1 = np.polyval(np.polyint(c1), hi) - np.polyval(np.polyint(c1), lo)
    i2 = np.polyval(np.polyint(c2), hi) - np.polyval(np.polyint(c2), lo)
    return float((np.exp((i2 - i1) / (hi - lo)) - 1) * 100)


def average_curve(per_image: dict) -> list:
    """Mean (bpp, PSNR) over images, point by point (same lambda / quality index)."""
    curves = list(per_image.values())
    n = min(len(c) for c in curves)
    return [
        (float(np.mean([c[i][0] for c in curves])), float(np.mean([c[i][1] for c in curves]))) for i in range(n)
    ]


def reference_curve(names, lmbdas=None):
    if not REFERENCE.exists():
        return None
    rows = list(csv.DictReader(REFERENCE.open(), delimiter="\t"))
    by_l = {}
    for r in rows:
        if r["seq_name"] in names:
            by_l.setdefault(float(r["lmbda"]), []).append((float(r["rate_bpp"]), float(r["psnr_db"])))
    pts = [
        (float(np.mean([p[0] for p in v])), float(np.mean([p[1] for p in v])))
        for lm, v in sorted(by_l.items())
        if len(v) == len(names)
    ]
    return pts or None


def encode_coolchic(img: np.ndarray, lmbda: float, preset: str, dec_cfg: str, n_itr):
    from decoder_runtime import decode
    from decoder_runtime.frame import RawImage
    from encoder.api import encode_image

    raw = RawImage(tuple(img[..., c] for c in range(3)), "rgb", 8)
    t0 = time.perf_counter()
    res = encode_image(raw, lmbda=lmbda, preset=preset, dec_cfg=dec_cfg, n_itr=n_itr)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    dec = decode(res.bitstream).image.to_hwc()
    t_dec = time.perf_counter() - t0
    bpp = 8 * len(res.bitstream) / (img.shape[0] * img.shape[1])
    return bpp, psnr(img, dec), t_enc, t_dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4, help="first N Kodak images (default 4)")
    ap.add_argument("--crop", type=int, default=256, help="centre crop size, 0 for whole images (default 256)")
    ap.add_argument("--lmbdas", default="0.001,0.004,0.02")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--dec-cfg", default="mop")
    ap.add_argument("--n-itr", type=int, default=None, help="override the preset's iteration count")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "rd")
    args = ap.parse_args()
    lmbdas = [float(v) for v in args.lmbdas.split(",")]
    images = load_images(args.images, args.crop or None)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    ours, rows = {}, []
    print("image\tlmbda\tbpp\tpsnr_db\tencode_s\tdecode_s")
    for name, img in images:
        pts = []
        for lm in lmbdas:
            bpp, p, te, td = encode_coolchic(img, lm, args.preset, args.dec_cfg, args.n_itr)
            pts.append((bpp, p))
            rows.append(("coolchic", name, lm, bpp, p, te, td))
            print(f"{name}\t{lm}\t{bpp:.4f}\t{p:.3f}\t{te:.1f}\t{td:.3f}", flush=True)
        ours[name] = sorted(pts)
    codecs = {
        "jpeg": ("JPEG", range(5, 96, 10)),
        "webp": ("WEBP", range(5, 96, 10)),
        "avif": ("AVIF", range(10, 91, 10)),
    }
    others = {}
    for key, (fmt, qs) in codecs.items():
        others[key] = {}
        for name, img in images:
            pts = pillow_curve(img, fmt, qs)
            others[key][name] = sorted(pts)
            rows += [(key, name, q, b, p, 0.0, 0.0) for q, (b, p) in zip(qs, pts)]

    avg = average_curve(ours)
    print("\naverage coolchic curve: " + ", ".join(f"({b:.3f} bpp, {p:.2f} dB)" for b, p in avg))
    results = {}
    for key in codecs:
        results[key] = bd_rate(average_curve(others[key]), avg)
        print(f"BD-rate vs {key}: {results[key]:+.1f} %")
    if not args.crop and args.images:
        ref = reference_curve([n for n, _ in images])
        if ref:
            results["reference"] = bd_rate(ref, avg)
            print("reference Cool-chic 5.0 curve: " + ", ".join(f"({b:.3f}, {p:.2f})" for b, p in ref))
            print(f"BD-rate vs reference Cool-chic 5.0: {results['reference']:+.1f} %")
    else:
        print("BD-rate vs reference Cool-chic 5.0: n/a (its published results are for whole images; use --crop 0)")

    tsv = args.out.with_suffix(".tsv")
    with tsv.open("w") as f:
        f.write("codec\timage\tlmbda_or_quality\tbpp\tpsnr_db\tencode_s\tdecode_s\n")
        for r in rows:
            f.write("\t".join(str(v) for v in r) + "\n")
    print(f"wrote {tsv}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for key in codecs:
            c = average_curve(others[key])
            ax.plot([b for b, _ in c], [p for _, p in c], "o-", label=key)
        ax.plot([b for b, _ in avg], [p for _, p in avg], "s-", label="coolchic")
        ax.set_xlabel("bpp")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(True)
        ax.legend()
        fig.savefig(args.out.with_suffix(".png"), dpi=120, bbox_inches="tight")
        print(f"wrote {args.out.with_suffix('.png')}")
    except ImportError:
        pass
    print(f"bd_rate_vs_jpeg={results['jpeg']:.1f} %")


if __name__ == "__main__":
    main()
