"""Benchmark: encoding and decoding a large image in bounded memory.

    python bench/large_image.py [--size 2048x3072] [--runs 3] [--compare]
    python bench/large_image.py --size 4320x7680      # 8K
    python bench/large_image.py --encode-size 3000x4000 --skip-decode
    python bench/large_image.py --iteration-timing 2048x3072 --skip-decode

Encoder side (``--encode-size``, default 3000x4000, 12 Mpixel; 0 skips it): a
mosaic of the Kodak images (``../shared/data/kodak``, each 512x768 or
768x512, rotated to landscape), encoded by ``coolchic-encode --preset debug``
in a child process with the default memory budget, reporting the wall time,
the peak resident memory and the training bands the encoder chose.
``--iteration-timing HxW`` also times training iterations in this process,
whole frame against bands, on a mosaic of that size (the whole frame needs
about 1.4 GB per Mpixel).

The large bitstream is built without an encode: the latents and networks of
``bench/data/kodim01_mop.cool`` (a 512x768 Kodak image), each latent grid
mirrored to the large frame's grid size (numpy ``symmetric`` padding), then
entropy coded by the project's writer with the same networks. Its statistics
are those of a real photo's latents, and the decoder does all the work of a
real file of that size.

Each run decodes it to PNG in a fresh ``coolchic-decode`` process (warm numba
cache) and reports the wall time and the peak resident memory (``ru_maxrss``
of the child). ``--tile-rows 0`` forces the whole-frame path for comparison.
``--compare`` also decodes in this process with and without tiles and counts
the pixels that differ.
Last line: ``large_decode_peak_rss=<median> MB``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from coolchic.decoder_runtime.bitstream import read_bitstream  # noqa: E402
from coolchic.decoder_runtime.latent_codec import decode_latents  # noqa: E402
from coolchic.export.bitstream_writer import write_bitstream  # noqa: E402


def build_large_bitstream(src: Path, size, n_substreams: int) -> bytes:
    bs = read_bitstream(src.read_bytes())
    grids = decode_latents(bs)
    arch = replace(bs.arch, img_size=size)
    big = []
    for g_old, g in zip(bs.arch.coded_grids(), arch.coded_grids()):
        a = grids[g_old.index]
        while a.shape[0] < g.h or a.shape[1] < g.w:  # mirror until large enough, then crop
            a = np.pad(a, ((0, max(0, min(a.shape[0], g.h - a.shape[0]))), (0, max(0, min(a.shape[1], g.w - a.shape[1])))),
                       mode="symmetric")
        big.append(np.ascontiguousarray(a[: g.h, : g.w], np.int32))
    return write_bitstream(arch, bs.q_params, bs.shifts, bs.expgol, big, n_substreams).data


KODAK = REPO.parent / "shared" / "data" / "kodak"


def kodak_mosaic(h: int, w: int) -> np.ndarray:
    """An h x w x 3 uint8 mosaic of the Kodak images (landscape), row by row."""
    from PIL import Image

    tiles = []
    for p in sorted(KODAK.glob("kodim*.png")):
        a = np.asarray(Image.open(p).convert("RGB"))
        tiles.append(a if a.shape[0] <= a.shape[1] else np.ascontiguousarray(np.rot90(a)))
    th, tw = tiles[0].shape[:2]
    out = np.empty((h, w, 3), np.uint8)
    k = 0
    for y in range(0, h, th):
        for x in range(0, w, tw):
            t = tiles[k % len(tiles)]
            k += 1
            out[y : y + th, x : x + tw] = t[: min(th, h - y), : min(tw, w - x)]
    return out


def _peak_run(cmd):
    """(wall seconds, peak RSS MB, stdout, stderr) of ``cmd``, run in its own grandchild
    so that ``ru_maxrss`` is that run's own peak."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
             "r.returncode); print(r.stdout); print(r.stderr, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True)
    first, *rest = r.stdout.splitlines()
    wall, rss_kb, rc = first.split()
    if int(rc):
        sys.exit(f"{cmd[2] if len(cmd) > 2 else cmd[0]} failed: {r.stderr[-2000:]}")
    return float(wall), int(rss_kb) / 1024, "\n".join(rest), r.stderr


def bench_encode(h: int, w: int, tmp: Path, extra) -> None:
    from PIL import Image

    src = tmp / f"mosaic_{h}x{w}.png"
    Image.fromarray(kodak_mosaic(h, w)).save(src, compress_level=1)
    out = tmp / "mosaic.cool"
    cmd = [sys.executable, "-m", "coolchic.encoder.cli", "-i", str(src), "-o", str(out), "--preset", "debug",
           "--log-every", "1000", *extra]
    wall, peak, stdout, stderr = _peak_run(cmd)
    bands = [line for line in stderr.splitlines() if "bands" in line]
    print(f"encode {h}x{w} ({h * w / 1e6:.1f} Mpixel), preset debug: wall {wall:.1f} s, peak RSS {peak:.0f} MB")
    print("  " + (bands[0].strip() if bands else "whole frame (no bands)"))
    print("  " + stdout.strip().splitlines()[0])


def bench_iterations(h: int, w: int, threads: Optional[int], n: int = 3) -> None:
    """Seconds per training iteration, whole frame and in bands, same frame and seed."""
    import torch

    from coolchic.encoder import cpu
    from coolchic.encoder.api import decoder_config_to_param, load_decoder_config
    from coolchic.encoder.frame_encoder import FrameData, FrameEncoder
    from coolchic.encoder.tiling import plan_tiles
    from coolchic.encoder.optim import make_optimizer
    from coolchic.encoder.train import loss_backward

    cpu.configure_cpu(threads)
    img = kodak_mosaic(h, w).astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    frame = FrameData((torch.from_numpy(img),), "rgb", 8)
    param = replace(decoder_config_to_param(load_decoder_config("mop"), None, (h, w)), encoder_gain=16)
    quant = dict(quantizer_noise_type="gaussian", quantizer_type="softround", soft_round_temperature=0.3,
                 noise_parameter=0.2)
    times = {}
    for mode in ("bands", "whole", "bands", "whole"):
        torch.manual_seed(0)
        fe = FrameEncoder(param, "I", "rgb", 8)
        cc = fe.coolchic_encoder
        cc.set_tile_plan(plan_tiles(fe.arch, 0, force=True) if mode == "bands" else None)
        latents = list(cc.latent_grids) + list(cc.hyper_latent_grids)
        ids = {id(p) for p in latents}
        opt = make_optimizer([p for p in cc.parameters() if id(p) not in ids and p.requires_grad], latents,
                             1e-2, (0.95, 0.95), (0.9, 0.999), 10)
        fe.set_to_train()
        for i in range(n + 1):  # the first one warms up: allocations, index patterns
            if i == 1:
                t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_backward(fe, frame, 1e-3, quant)
            opt.step()
        times.setdefault(mode, []).append((time.perf_counter() - t) / n)
        del fe, cc, opt, latents
    for mode, ts in times.items():
        print(f"training iteration, {mode}: {' '.join(f'{t:.2f}' for t in ts)} s "
              f"({1e9 * min(ts) / (h * w):.0f} ns/pixel at best)")
    print(f"bands / whole: {min(times['bands']) / min(times['whole']):.3f} (best of each)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2048x3072", help="HxW of the large frame (default: 2048x3072, 6.3 Mpixel)")
    ap.add_argument("--source", type=Path, default=HERE / "data" / "kodim01_mop.cool")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tile-rows", type=int, default=None, help="passed to coolchic-decode (0: whole frame)")
    ap.add_argument("--substreams", type=int, default=8)
    ap.add_argument("--compare", action="store_true", help="count pixels that differ between tiles and whole frame")
    ap.add_argument("--encode-size", default="3000x4000", help="HxW of the encoded mosaic (default 3000x4000; 0: skip)")
    ap.add_argument("--encode-args", default="", help="more coolchic-encode options, e.g. '--max-memory 4G'")
    ap.add_argument("--iteration-timing", metavar="HxW", help="time training iterations, whole frame and bands")
    ap.add_argument("--train-threads", type=int, default=None, help="torch threads of --iteration-timing (default: all)")
    ap.add_argument("--skip-decode", action="store_true", help="only the encoder side")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    if args.iteration_timing:
        bench_iterations(*(int(v) for v in args.iteration_timing.lower().split("x")), args.train_threads)
    if args.encode_size != "0":
        with tempfile.TemporaryDirectory() as tmp:
            bench_encode(*(int(v) for v in args.encode_size.lower().split("x")), Path(tmp), args.encode_args.split())
    if args.skip_decode:
        return

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = build_large_bitstream(args.source, (h, w), args.substreams)
        src = Path(tmp) / "large.cool"
        src.write_bytes(data)
        print(f"{h}x{w} ({h * w / 1e6:.1f} Mpixel) bitstream: {len(data)} bytes, "
              f"{8 * len(data) / (h * w):.3f} bpp, built in {time.perf_counter() - t0:.1f} s")
        out = str(Path(tmp) / "large.png")
        cmd = [sys.executable, "-m", "coolchic.decoder_runtime", "-i", str(src), "-o", out, "--verbose",
               "--threads", str(args.threads), "--max-pixels", str(max(h * w, 1 << 24)), "--max-memory", "64G"]
        if args.tile_rows is not None:
            cmd += ["--tile-rows", str(args.tile_rows)]
        subprocess.run(cmd, check=True, capture_output=True)  # warm the numba cache
        walls, peaks = [], []
        for i in range(args.runs):
            wall, peak, stdout, _ = _peak_run(cmd)
            rest = stdout.splitlines()
            walls.append(wall)
            peaks.append(peak)
            if i == 0:
                print("\n".join(line for line in rest if line.strip()))
            print(f"run {i + 1}: wall {wall:.2f} s, peak RSS {peak:.0f} MB")
        print(f"decode wall: median {statistics.median(walls):.2f} s (range {min(walls):.2f}-{max(walls):.2f}); "
              f"peak RSS median {statistics.median(peaks):.0f} MB (range {min(peaks):.0f}-{max(peaks):.0f})")
        if args.compare:
            from coolchic import decoder_runtime

            opts = dict(max_pixels=max(h * w, 1 << 24), max_memory=None)
            tiled = decoder_runtime.decode(data, **opts).image
            whole = decoder_runtime.decode(data, tile_rows=0, **opts).image
            diff = [np.abs(a.astype(np.int32) - b.astype(np.int32)) for a, b in zip(tiled.planes, whole.planes)]
            print(f"tiles against the whole frame: {sum(int((d > 0).sum()) for d in diff)} of "
                  f"{sum(d.size for d in diff)} samples differ, by at most {max(int(d.max()) for d in diff)}")
    print(f"large_decode_peak_rss={statistics.median(peaks):.0f} MB")


if __name__ == "__main__":
    main()
