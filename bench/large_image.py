"""Benchmark: decoding a large image in bounded memory.

    python bench/large_image.py [--size 2048x3072] [--runs 3] [--compare]
    python bench/large_image.py --size 4320x7680      # 8K

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2048x3072", help="HxW of the large frame (default: 2048x3072, 6.3 Mpixel)")
    ap.add_argument("--source", type=Path, default=HERE / "data" / "kodim01_mop.cool")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tile-rows", type=int, default=None, help="passed to coolchic-decode (0: whole frame)")
    ap.add_argument("--substreams", type=int, default=8)
    ap.add_argument("--compare", action="store_true", help="count pixels that differ between tiles and whole frame")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))

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
            # Each run in its own grandchild, so that ru_maxrss is this run's own peak.
            probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                     "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
                     "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
                     "r.returncode); print(r.stdout); print(r.stderr, file=sys.stderr)")
            r = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True)
            first, *rest = r.stdout.splitlines()
            wall, rss_kb, rc = first.split()
            if int(rc):
                sys.exit(f"decode failed: {r.stderr}")
            walls.append(float(wall))
            peaks.append(int(rss_kb) / 1024)
            if i == 0:
                print("\n".join(line for line in rest if line.strip()))
            print(f"run {i + 1}: wall {float(wall):.2f} s, peak RSS {int(rss_kb) / 1024:.0f} MB")
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
