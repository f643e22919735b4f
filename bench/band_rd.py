"""Benchmark: does training in bands cost rate-distortion?

    python bench/band_rd.py [--images kodim01,kodim07,kodim14] [--seeds 0,1] [--crop 256]
                            [--bands 4] [--preset fast] [--lmbda 0.001] [--jobs 2] [--noise]

Each (image, seed) is encoded twice with the same seed and one training
thread: whole frame, and in ``--bands`` bands of rows (the smallest
``max_memory`` for which ``encoder.tiling.plan_tiles`` picks that many). Both
bitstreams are decoded by the runtime; rate and RGB PSNR are compared.

The band path gives the whole frame's loss and gradients up to float summation
order (``tests/test_encoder_tiling.py``), but a 2000-iteration encode amplifies
any float difference, whatever its source: ``--noise`` also encodes each pair's
whole frame on two threads (another float order, same seed) to show how far
two equally valid runs land apart.

Prints one line per pair and the mean and spread of the differences.
Last line: ``band_rate_diff_mean=<percent> %`` (bands against whole frame).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from rd_kodak import load_images, psnr  # noqa: E402


def budget_for_bands(h: int, w: int, dec_cfg: str, n_bands: int) -> int:
    """Smallest budget in MiB for which the encoder trains the crop in ``n_bands`` bands."""
    from coolchic.encoder.presets import decoder_config_to_param, load_decoder_config
    from coolchic.encoder.tiling import plan_tiles

    arch = decoder_config_to_param(load_decoder_config(dec_cfg), None, (h, w)).to_arch("rgb", 8)
    for mib in range(1, 4096):
        plan = plan_tiles(arch, mib << 20)
        if plan is not None and len(plan.rows) <= n_bands:
            if len(plan.rows) != n_bands:
                raise SystemExit(f"no budget gives {n_bands} bands at {h}x{w}")
            return mib
    raise SystemExit(f"no budget gives {n_bands} bands at {h}x{w}")


def worker(args) -> None:
    """One encode in this process; prints a JSON line."""
    from coolchic.decoder_runtime import decode
    from coolchic.decoder_runtime.frame import RawImage
    from coolchic.encoder.api import encode_image
    from coolchic.encoder.cpu import configure_cpu

    configure_cpu(args.threads)
    n = int(args.image.replace("kodim", ""))
    _, img = load_images(n, args.crop or None)[n - 1]
    raw = RawImage(tuple(img[..., c] for c in range(3)), "rgb", 8)
    t0 = time.perf_counter()
    res = encode_image(raw, lmbda=args.lmbda, preset=args.preset, dec_cfg=args.dec_cfg, threads=args.threads,
                       seed=args.seed, max_memory=(args.max_memory_mib << 20) if args.max_memory_mib else None)
    wall = time.perf_counter() - t0
    print(json.dumps(dict(bytes=len(res.bitstream), psnr=psnr(img, decode(res.bitstream).image.to_hwc()),
                          seconds=wall)))


def run_one(args, image: str, seed: int, threads: int, mib: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--image", image, "--seed", str(seed), "--threads", str(threads),
           "--max-memory-mib", str(mib), "--crop", str(args.crop), "--preset", args.preset,
           "--lmbda", str(args.lmbda), "--dec-cfg", args.dec_cfg]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="kodim01,kodim07,kodim14")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--lmbda", type=float, default=0.001)
    ap.add_argument("--dec-cfg", default="mop")
    ap.add_argument("--jobs", type=int, default=2, help="encodes run side by side (each on its threads)")
    ap.add_argument("--noise", action="store_true", help="also the whole frame on 2 threads")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--max-memory-mib", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    mib = budget_for_bands(args.crop, args.crop, args.dec_cfg, args.bands)
    print(f"{args.crop}x{args.crop} crops, {args.preset}, lambda {args.lmbda}, {args.dec_cfg}: "
          f"{args.bands} bands with --max-memory {mib}M", flush=True)
    pairs = [(im, int(s)) for im in args.images.split(",") for s in args.seeds.split(",")]
    jobs = [(im, s, 1, 0) for im, s in pairs] + [(im, s, 1, mib) for im, s in pairs]
    if args.noise:
        jobs += [(im, s, 2, 0) for im, s in pairs]
    # Pairs first, so that an interrupted run has whole pairs; each result is
    # printed as it lands (a run takes hours on two cores).
    jobs.sort(key=lambda j: (pairs.index((j[0], j[1])), j[3], j[2]))
    res = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, args, *job): job for job in jobs}
        for f in as_completed(futures):
            job = futures[f]
            res[job] = r = f.result()
            kind = "whole" if not job[3] else "bands"
            print(f"  {job[0]} seed {job[1]} {kind} on {job[2]} thread(s): {r['bytes']} B {r['psnr']:.3f} dB "
                  f"({r['seconds']:.0f} s)", flush=True)

    d_rate, d_psnr, n_rate, n_psnr = [], [], [], []
    for im, s in pairs:
        whole, bands = res[(im, s, 1, 0)], res[(im, s, 1, mib)]
        d_rate.append(100 * (bands["bytes"] / whole["bytes"] - 1))
        d_psnr.append(bands["psnr"] - whole["psnr"])
        line = (f"{im} seed {s}: whole {whole['bytes']} B {whole['psnr']:.3f} dB ({whole['seconds']:.0f} s), "
                f"bands {bands['bytes']} B {bands['psnr']:.3f} dB ({bands['seconds']:.0f} s): "
                f"{d_rate[-1]:+.2f} % {d_psnr[-1]:+.3f} dB")
        if args.noise:
            two = res[(im, s, 2, 0)]
            n_rate.append(100 * (two["bytes"] / whole["bytes"] - 1))
            n_psnr.append(two["psnr"] - whole["psnr"])
            line += f"; whole on 2 threads {two['bytes']} B {two['psnr']:.3f} dB: {n_rate[-1]:+.2f} % {n_psnr[-1]:+.3f} dB"
        print(line, flush=True)

    def summary(name, r, p):
        sd = statistics.stdev(r) if len(r) > 1 else 0.0
        print(f"{name}: rate {statistics.mean(r):+.2f} % (sd {sd:.2f}, {min(r):+.2f} to {max(r):+.2f}), "
              f"PSNR {statistics.mean(p):+.3f} dB ({min(p):+.3f} to {max(p):+.3f})")

    summary("bands vs whole", d_rate, d_psnr)
    if args.noise:
        summary("whole 2 threads vs 1", n_rate, n_psnr)
    print(f"band_rate_diff_mean={statistics.mean(d_rate):+.2f} %")


if __name__ == "__main__":
    main()
