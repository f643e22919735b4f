"""Benchmark: the first decode after a fresh install, numba compiling from an empty cache.

    python bench/cold_start.py [--bitstream bench/data/kodim01_mop.cool] [--repeat 3] [--threads 1]

Each repeat makes a fresh empty ``NUMBA_CACHE_DIR`` and runs, as subprocesses,
``coolchic-decode -i <bitstream> -o <tmp>.png`` twice: the first run compiles
every kernel the decode needs and writes them to the cache (cold), the second
loads them from it (warm). Wall times are of the whole process, as a user sees
them, with their CPU time (user + system: less sensitive to other work on
the machine). Last line: ``cold_first_decode_s=<median wall time> s``.
The default bitstream is made by ``bench/make_bench_bitstreams.py``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def decode_cmd(bitstream: Path, out: Path, threads: int):
    exe = Path(sys.executable).with_name("coolchic-decode")
    if exe.exists():
        cmd = [str(exe)]
    else:  # not installed with its console script: the module does the same
        cmd = [sys.executable, "-m", "coolchic.decoder_runtime"]
    return cmd + ["-i", str(bitstream), "-o", str(out), "--threads", str(threads)]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_run(cmd, env):
    """(wall, CPU) seconds of one run of ``cmd``; CPU time is less sensitive to other work on the machine."""
    c0 = _children_cpu()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return dt, _children_cpu() - c0


def spread(xs) -> str:
    return f"median {statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bitstream", type=Path, default=HERE / "data" / "kodim01_mop.cool")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="--threads of coolchic-decode (default 1)")
    args = ap.parse_args()
    if not args.bitstream.exists():
        sys.exit(f"{args.bitstream} is missing: run python bench/make_bench_bitstreams.py first")
    cold, warm, cold_cpu, warm_cpu = [], [], [], []
    for i in range(args.repeat):
        tmp = tempfile.mkdtemp(prefix="coolchic-cold-")
        try:
            env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "numba"))
            cmd = decode_cmd(args.bitstream, Path(tmp) / "x.png", args.threads)
            c, cc = timed_run(cmd, env)
            w, wc = timed_run(cmd, env)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        cold.append(c)
        warm.append(w)
        cold_cpu.append(cc)
        warm_cpu.append(wc)
        print(f"run {i + 1}: cold {c:.2f} s (CPU {cc:.2f} s), warm {w:.2f} s (CPU {wc:.2f} s)", flush=True)
    print(f"bitstream {args.bitstream.name}, --threads {args.threads}")
    print(f"warm process (cache filled by the cold run): {spread(warm)}; CPU {spread(warm_cpu)}")
    print(f"cold first decode (empty NUMBA_CACHE_DIR): {spread(cold)}; CPU {spread(cold_cpu)}")
    print(f"cold_first_decode_s={statistics.median(cold):.2f} s")


if __name__ == "__main__":
    main()
