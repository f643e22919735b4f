"""Rate-distortion benchmark on Kodak: coolchic vs AVIF 4:4:4, WebP, JPEG,
JPEG XL and the reference Cool-chic (5.0 and 4.2).

    python bench/rd_kodak.py [--images 8 | --image kodim14 ...] [--crop 256]
                             [--lmbdas 0.02,0.006,0.002,0.0006,0.0002]
                             [--preset fast] [--dec-cfg mop] [--jobs 2]
                             [--out bench/results/rd]

Encodes the first ``--images`` Kodak images of ../shared/data/kodak/ (or the
ones named by ``--image``; centre
crops of ``--crop`` pixels, 0 for whole images) with coolchic at each lambda,
``--jobs`` encodes at a time, and decodes every bitstream with the torch-free
runtime: bpp from the file size, PSNR on RGB at 8 bit. The anchors sweep their
quality on the same pixels: Pillow's AVIF (4:4:4), WebP and JPEG (4:4:4), and
JPEG XL when ``pillow-jxl-plugin`` is installed (the ``bench`` extra).

BD-rate (Bjontegaard delta rate, %, negative = fewer bits at equal PSNR) is
computed per image with the ``bjontegaard`` package's piecewise cubic
(``pchip``) fit of log-rate over PSNR, the interpolation of the JVET/VCEG
tools, over the PSNR interval both curves cover; the headline is the mean
over images. Against the reference's published points when images are whole:
Cool-chic 5.0's rates are its encoder's estimates, not file sizes (its own
sample file lies 3.2 % above its point; ``bench/reference_rates.py``), 4.2's
are file sizes, like ours.

Coolchic results go to ``<out>.coolchic.tsv`` as they come, and a rerun with
the same options and the same preset and decoder configuration contents
reuses them (an interrupted run resumes; ``--fresh`` after a code change). Writes
``<out>.tsv`` (every point of every codec) and ``<out>.png`` (mean curves;
matplotlib). Last line: ``bd_rate_vs_avif=<mean> %``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import multiprocessing
import os
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
REFERENCE_RESULTS = SHARED / "reference" / "coolchic-results"
REFERENCE_TABLES = {  # anchor name: published per-image table
    "reference-coolchic-5.0-estimates": REFERENCE_RESULTS / "v5.0-image-kodak.tsv",
    "reference-coolchic-4.2-files": REFERENCE_RESULTS / "v4.2-image-kodak.tsv",
}


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def load_images(n: int, crop: int | None, names=None):
    """The first ``n`` Kodak images, or those of ``names`` (file stems) in that order."""
    if names:
        paths = [KODAK / f"{name}.png" for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SystemExit(f"no such Kodak image: {', '.join(missing)}")
    else:
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


# Quality sweeps of the anchors: (Pillow format, qualities, save options).
ANCHORS = {
    "avif444": ("AVIF", range(0, 96, 5), {"subsampling": "4:4:4", "speed": 4}),
    "webp": ("WEBP", range(5, 101, 5), {"method": 6}),
    "jpeg": ("JPEG", range(5, 101, 5), {"subsampling": 0}),
    "jxl": ("JXL", range(0, 100, 5), {"effort": 7}),
}


def pillow_curve(img: np.ndarray, fmt: str, qualities, options):
    pts = []
    for q in qualities:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, quality=int(q), **options)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        pts.append((int(q), 8 * buf.tell() / (img.shape[0] * img.shape[1]), psnr(img, dec)))
    return pts


def bd_rate(anchor, test) -> float:
    """BD-rate (%) of ``test`` against ``anchor``, each a list of (bpp, psnr).

    bjontegaard's ``pchip`` fit over the common PSNR interval (its warning that
    the interval covers less than 75 % of a curve is silenced: at the low end
    JPEG and JPEG XL do not reach coolchic's lowest rates); NaN for fewer than
    4 points.
    """
    import warnings

    import bjontegaard as bd

    a = sorted(set(anchor), key=lambda p: p[1])
    t = sorted(set(test), key=lambda p: p[1])
    if len(a) < 4 or len(t) < 4:
        return float("nan")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(bd.bd_rate([p[0] for p in a], [p[1] for p in a], [p[0] for p in t], [p[1] for p in t],
                                     method="pchip", require_matching_points=False))
    except Exception:  # the package raises plain Exceptions/ValueErrors on degenerate curves
        return float("nan")


def average_curve(per_image: dict) -> list:
    """Mean (bpp, PSNR) over images, point by point (same lambda / quality index)."""
    curves = list(per_image.values())
    n = min(len(c) for c in curves)
    return [
        (float(np.mean([c[i][0] for c in curves])), float(np.mean([c[i][1] for c in curves]))) for i in range(n)
    ]


def reference_curve(names, lmbdas=None, table=REFERENCE_TABLES["reference-coolchic-5.0-estimates"]):
    if not table.exists():
        return None
    rows = list(csv.DictReader(table.open(), delimiter="\t"))
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


def encode_coolchic(job):
    """One encode + torch-free decode; run in a worker process."""
    name, img, lmbda, preset, dec_cfg, n_itr, threads, keep = job
    from coolchic.decoder_runtime import decode
    from coolchic.decoder_runtime.frame import RawImage
    from coolchic.encoder.api import encode_image
    from coolchic.encoder.cpu import configure_cpu

    configure_cpu(threads)  # an application's choice, as coolchic-encode makes it (malloc tuning)
    raw = RawImage(tuple(img[..., c] for c in range(3)), "rgb", 8)
    t0 = time.perf_counter()
    res = encode_image(raw, lmbda=lmbda, preset=preset, dec_cfg=dec_cfg, n_itr=n_itr, threads=threads)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    dec = decode(res.bitstream).image.to_hwc()
    t_dec = time.perf_counter() - t0
    bpp = 8 * len(res.bitstream) / (img.shape[0] * img.shape[1])
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{name}_{lmbda}.cool").write_bytes(res.bitstream)
    return name, lmbda, bpp, psnr(img, dec), t_enc, t_dec


def _run_key(args) -> str:
    """Options and the contents of the preset and decoder configuration: editing
    ``cfg/enc/fast.cfg`` must not reuse points encoded with the old file."""
    import hashlib

    from coolchic.encoder.presets import load_decoder_config, load_encoder_preset

    cfg = repr(load_encoder_preset(args.preset)) + repr(sorted(load_decoder_config(args.dec_cfg).items()))
    return f"{args.preset}|{args.dec_cfg}|{args.n_itr}|{args.crop}|{hashlib.sha256(cfg.encode()).hexdigest()[:12]}"


def run_coolchic(images, lmbdas, args):
    """{image: [(lmbda, bpp, psnr, enc_s, dec_s)]}, reusing <out>.coolchic.tsv."""
    part = args.out.with_suffix(".coolchic.tsv")
    key = _run_key(args)
    done = {}
    if part.exists() and not args.fresh:
        for r in csv.DictReader(part.open(), delimiter="\t"):
            if r["run"] == key:
                done[(r["image"], float(r["lmbda"]))] = (float(r["bpp"]), float(r["psnr_db"]),
                                                         float(r["encode_s"]), float(r["decode_s"]))
    if not part.exists():
        part.write_text("run\timage\tlmbda\tbpp\tpsnr_db\tencode_s\tdecode_s\n")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(n, img, lm, args.preset, args.dec_cfg, args.n_itr, threads, args.keep_bitstreams)
            for lm in lmbdas for n, img in images if (n, lm) not in done]
    print(f"{len(done)} coolchic points reused, {len(jobs)} to encode ({args.jobs} at a time, {threads} threads each)",
          flush=True)
    print("image\tlmbda\tbpp\tpsnr_db\tencode_s\tdecode_s")
    for (n, lm), (b, p, te, td) in sorted(done.items()):
        print(f"{n}\t{lm}\t{b:.4f}\t{p:.3f}\t{te:.1f}\t{td:.3f}")
    if jobs:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            for n, lm, b, p, te, td in pool.map(encode_coolchic, jobs):
                done[(n, lm)] = (b, p, te, td)
                with part.open("a") as f:
                    f.write(f"{key}\t{n}\t{lm}\t{b}\t{p}\t{te}\t{td}\n")
                print(f"{n}\t{lm}\t{b:.4f}\t{p:.3f}\t{te:.1f}\t{td:.3f}", flush=True)
    return {n: [(lm,) + done[(n, lm)] for lm in lmbdas] for n, _ in images}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8, help="first N Kodak images (default 8)")
    ap.add_argument("--image", action="append", metavar="NAME",
                    help="encode this Kodak image (e.g. kodim14; repeatable) instead of the first --images")
    ap.add_argument("--crop", type=int, default=256, help="centre crop size, 0 for whole images (default 256)")
    ap.add_argument("--lmbdas", default="0.02,0.006,0.002,0.0006,0.0002")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--dec-cfg", default="mop")
    ap.add_argument("--n-itr", type=int, default=None, help="override the preset's main phase iterations")
    ap.add_argument("--jobs", type=int, default=2, help="encodes at a time (threads each: cores / jobs)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "rd")
    ap.add_argument("--keep-bitstreams", type=Path, default=None, metavar="DIR",
                    help="also write each coolchic bitstream to DIR/<image>_<lambda>.cool")
    ap.add_argument("--fresh", action="store_true",
                    help="encode every point again (after a code change: points are reused by options and "
                         "configuration contents only)")
    args = ap.parse_args()
    lmbdas = [float(v) for v in args.lmbdas.split(",")]
    images = load_images(args.images, args.crop or None, args.image)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    ours = run_coolchic(images, lmbdas, args)
    rows = [("coolchic", n, lm, b, p, te, td) for n, pts in ours.items() for lm, b, p, te, td in pts]
    curves = {"coolchic": {n: sorted((b, p) for _, b, p, _, _ in pts) for n, pts in ours.items()}}
    for key, (fmt, qs, opts) in ANCHORS.items():
        if fmt not in Image.registered_extensions().values():
            try:
                import pillow_jxl  # noqa: F401  (registers JXL)
            except ImportError:
                print(f"{key}: no Pillow {fmt} encoder here, skipped")
                continue
        curves[key] = {}
        for name, img in images:
            pts = pillow_curve(img, fmt, qs, opts)
            curves[key][name] = sorted((b, p) for _, b, p in pts)
            rows += [(key, name, q, b, p, 0.0, 0.0) for q, b, p in pts]
    if not args.crop:
        for key, table in REFERENCE_TABLES.items():
            ref = {n: reference_curve([n], table=table) for n, _ in images}
            if all(ref.values()):
                curves[key] = ref

    print("\nBD-rate of coolchic (%, per image; negative = fewer bits at equal PSNR)")
    names = [n for n, _ in images]
    anchors = [k for k in curves if k != "coolchic"]
    print("image\t" + "\t".join(anchors))
    bd = {k: [bd_rate(curves[k][n], curves["coolchic"][n]) for n in names] for k in anchors}
    for i, n in enumerate(names):
        print(n + "\t" + "\t".join(f"{bd[k][i]:+.1f}" for k in anchors))
    means = {k: float(np.nanmean(v)) if not all(np.isnan(v)) else float("nan") for k, v in bd.items()}
    print("mean\t" + "\t".join(f"{means[k]:+.1f}" for k in anchors))
    enc = [te for pts in ours.values() for _, _, _, te, _ in pts]
    print(f"coolchic encode time: median {np.median(enc):.1f} s, range {min(enc):.1f}-{max(enc):.1f} s per encode")
    avg = average_curve(curves["coolchic"])
    print("mean coolchic curve: " + ", ".join(f"({b:.3f} bpp, {p:.2f} dB)" for b, p in avg))

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

        fig, ax = plt.subplots(figsize=(7, 5))
        for key, per_image in curves.items():
            c = average_curve(per_image)
            label = key if key == "coolchic" else f"{key} (BD-rate {means[key]:+.1f} %)"
            ax.plot([b for b, _ in c], [p for _, p in c], "s-" if key == "coolchic" else "o-", ms=3, label=label)
        # The anchors' top qualities run far past coolchic's range: show that range.
        b_max = max(b for b, _ in avg) * 1.3
        p_lo = min(p for _, p in avg) - 2
        ax.set_xlim(0, b_max)
        ax.set_ylim(p_lo, max(p for _, p in avg) + 2)
        ax.set_xlabel("bpp")
        ax.set_ylabel("PSNR RGB (dB)")
        crop = f"{args.crop}x{args.crop} centre crops" if args.crop else "whole images"
        which = ", ".join(names) if args.image else f"kodim01-{len(names):02d}"
        ax.set_title(f"Kodak {which}, {crop}; coolchic {args.preset}, {args.dec_cfg}")
        ax.grid(True, alpha=0.4)
        ax.legend(fontsize=8)
        fig.savefig(args.out.with_suffix(".png"), dpi=120, bbox_inches="tight")
        print(f"wrote {args.out.with_suffix('.png')}")
    except ImportError:
        print("matplotlib not installed (pip install '.[bench]'): no plot")
    print(f"bd_rate_vs_avif={means.get('avif444', float('nan')):.1f} %")


if __name__ == "__main__":
    main()
