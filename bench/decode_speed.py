"""Benchmark: whole decode of a 512x768 Kodak image (mop by default).

    python bench/decode_speed.py [--bitstream bench/data/kodim01_mop.cool] [--threads 1] [--repeat 10]
                                 [--other bench/data/kodim02_mop_debug.cool]

1. In process, after a warm-up decode (numba JIT loaded, tables built):
   * new file, first of its shape: a bitstream whose architecture and size
     the process has not decoded before. Its graph has no onnxruntime session
     yet, so the decode pays the session creation and the session's slower
     first run. Emulated by emptying the session cache
     (``ort_session.clear_session_cache``) before each decode.
   * new file, shape seen: the session cache is emptied, then ``--other``
     (another bitstream of the same architecture and size) is decoded,
     untimed, before each timed decode.
     The graph takes the weights as inputs, so the timed file runs in the
     session the other one made; every other cache of the runtime (the
     latent decoder's work arrays) is keyed by shapes too, so this is what
     an application decoding a stream of same-sized images pays.
   * repeat: the same bitstream again.
   Each: median, min and max over ``--repeat`` decodes, and the median split
   (parse, latents, graph build, session, upsampling + synthesis, output).
2. Process wall time of ``coolchic-decode`` (warm numba cache on disk):
   median, min and max of 5 runs, and the peak resident memory of those
   processes.
Last line: ``decode_new_file_ms=<median> ms``, the first-of-its-shape case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from coolchic import decoder_runtime  # noqa: E402
from coolchic.decoder_runtime.bitstream import read_bitstream  # noqa: E402
from coolchic.decoder_runtime.ort_session import clear_session_cache  # noqa: E402

DEFAULT_BITSTREAM = HERE / "data" / "kodim01_mop.cool"
STAGES = ("parse", "latents", "graph_build", "session", "upsampling_synthesis", "output")


def spread(values, scale=1e3, fmt="{:.1f}"):
    """``median (min-max)`` of ``values`` times ``scale``."""
    v = [scale * x for x in values]
    return f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}-{fmt.format(max(v))})"


def in_process(data: bytes, threads: int, repeat: int, new_file: bool, other: bytes = b""):
    runs = []
    for _ in range(repeat):
        if new_file or other:
            clear_session_cache()
        if other:  # its sessions are the only ones cached
            decoder_runtime.decode(other, threads=threads)
        runs.append(decoder_runtime.decode(data, threads=threads, timings=True).timings)
    split = ", ".join(f"{k} {1e3 * statistics.median(r.get(k, 0) for r in runs):.1f}" for k in STAGES)
    return [r["total"] for r in runs], split


def child_wall_and_rss(cmd, runs: int):
    """Wall seconds and peak RSS (MB) of each run, the RSS from that child's own rusage
    (RUSAGE_CHILDREN would give the largest child so far, the warm-up's compile included)."""
    walls, peaks = [], []
    for _ in range(runs):
        with tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(p.pid, 0)
            walls.append(time.perf_counter() - t0)
            p.returncode = os.waitstatus_to_exitcode(status)
            if p.returncode != 0:
                err.seek(0)
                sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err.read().decode(errors='replace')}")
        peaks.append(usage.ru_maxrss / 1024)  # KiB on Linux
    return walls, peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bitstream", type=Path, default=DEFAULT_BITSTREAM)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--other", type=Path, default=None,
                    help="a bitstream of the same architecture and size, for the shape-seen case "
                         "(default: bench/data/kodim02_mop_debug.cool for the default bitstream; none otherwise)")
    args = ap.parse_args()
    if not args.bitstream.exists():
        sys.exit(f"{args.bitstream} is missing: run python bench/make_bench_bitstreams.py first")
    data = args.bitstream.read_bytes()
    img = decoder_runtime.decode(data, threads=args.threads).image  # warm-up: JIT, tables
    print(f"{args.bitstream.name}: {len(data)} bytes, {img.width}x{img.height}, "
          f"{8 * len(data) / (img.width * img.height):.4f} bpp, threads={args.threads}")
    repeat, repeat_split = in_process(data, args.threads, args.repeat, new_file=False)
    if args.other is None and args.bitstream == DEFAULT_BITSTREAM:
        args.other = HERE / "data" / "kodim02_mop_debug.cool"
    seen = None
    if args.other is not None:
        other = args.other.read_bytes()
        if read_bitstream(other).arch != read_bitstream(data).arch:
            sys.exit(f"{args.other} does not have the architecture and size of {args.bitstream}")
        seen, seen_split = in_process(data, args.threads, args.repeat, new_file=False, other=other)
    new, new_split = in_process(data, args.threads, args.repeat, new_file=True)
    print(f"repeat decode   (ms): {spread(repeat)} median (min-max) of {args.repeat}; median split: {repeat_split}")
    if seen is not None:
        print(f"new file, shape seen (ms): {spread(seen)} median (min-max) of {args.repeat}; "
              f"median split: {seen_split}")
    print(f"new file, first of its shape (ms): {spread(new)} median (min-max) of {args.repeat}; "
          f"median split: {new_split}")

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.png")
        exe = [sys.executable, "-m", "coolchic.decoder_runtime", "-i", str(args.bitstream), "-o", out,
               "--threads", str(args.threads)]
        subprocess.run(exe, check=True, capture_output=True)  # warm numba cache on disk
        walls, rss = child_wall_and_rss(exe, 5)
    print(f"coolchic-decode process: wall {spread(walls, 1, '{:.3f}')} s median (min-max) of 5, "
          f"peak RSS {spread(rss, 1, '{:.0f}')} MB")
    print(f"decode_new_file_ms={1e3 * statistics.median(new):.1f} ms")


if __name__ == "__main__":
    main()
