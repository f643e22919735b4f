"""Benchmark: the first decode after a fresh install.

    python bench/cold_start.py [--bitstream bench/data/kodim01_mop.cool] [--repeat 3] [--threads 1]
                               [--empty-cache]

Default (``--fresh-install``): copies the repository's files, then
``pip install <copy>`` (the runtime alone, as a user would) into two new
virtual environments: one as built by default, whose wheel carries the
decoder's numba kernels compiled at build time (``_build/coolchic_build.py``),
and one built with ``COOLCHIC_PRECOMPILE=0``, whose first decode compiles
them. Each repeat runs ``coolchic-decode -i <bitstream> -o <tmp>.png`` as a
fresh install's first decode: in the precompiled install nothing is written
by a decode (checked), in the other the kernel files numba wrote are deleted
before each run. Last line: ``first_decode_after_install_s=<median> s`` (the
precompiled install).

``--empty-cache``: the compile itself, in this environment. Each repeat makes
a fresh empty ``NUMBA_CACHE_DIR`` and runs the decode twice: the first run
compiles every kernel the decode needs and writes them to the cache (cold),
the second loads them from it (warm). Last line:
``cold_first_decode_s=<median wall time> s``.

Wall times are of the whole process, as a user sees them, with their CPU time
(user + system: less sensitive to other work on the machine). The default
bitstream is made by ``bench/make_bench_bitstreams.py``.
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
REPO = HERE.parent


def decode_cmd(bitstream: Path, out: Path, threads: int, python: Path = Path(sys.executable)):
    exe = python.with_name("coolchic-decode")
    if exe.exists():
        cmd = [str(exe)]
    else:  # not installed with its console script: the module does the same
        cmd = [str(python), "-m", "coolchic.decoder_runtime"]
    return cmd + ["-i", str(bitstream), "-o", str(out), "--threads", str(threads)]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_run(cmd, env, cwd=None):
    """(wall, CPU) seconds of one run of ``cmd``; CPU time is less sensitive to other work on the machine."""
    c0 = _children_cpu()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return dt, _children_cpu() - c0


def spread(xs) -> str:
    return f"median {statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def _user_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH", "COOLCHIC_PRECOMPILE")}


def fresh_install(root: Path, precompile: bool) -> Path:
    """A new venv with ``pip install <copy of the repository>``; returns its python."""
    src = root / ("src-pre" if precompile else "src-nopre")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    venv = root / ("venv-pre" if precompile else "venv-nopre")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = dict(_user_env(), COOLCHIC_PRECOMPILE="1" if precompile else "0")
    t0 = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(src)], env=env, check=True, cwd=root)
    print(f"pip install ({'kernels precompiled' if precompile else 'COOLCHIC_PRECOMPILE=0'}): "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return python


def kernel_files(python: Path) -> set:
    # Run from the venv's directory: from the repository, "import coolchic" would find the source tree.
    site = subprocess.run([str(python), "-c", "import coolchic, os; print(os.path.dirname(coolchic.__file__))"],
                          check=True, capture_output=True, text=True, env=_user_env(),
                          cwd=python.parent).stdout.strip()
    cache = Path(site) / "decoder_runtime" / "__pycache__"
    return {p for p in cache.glob("*.nb[ic]")} if cache.is_dir() else set()


def bench_fresh_install(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="coolchic-install-"))
    try:
        pre, nopre = fresh_install(root, True), fresh_install(root, False)
        shipped = kernel_files(pre)
        print(f"kernel files installed with the package: {len(shipped)} (precompiled), "
              f"{len(kernel_files(nopre))} (COOLCHIC_PRECOMPILE=0)", flush=True)
        res = {"pre": ([], []), "nopre": ([], [])}
        for i in range(args.repeat):
            for name, python in (("pre", pre), ("nopre", nopre)):  # alternated: same machine state
                if name == "nopre":
                    for f in kernel_files(nopre):
                        f.unlink()
                out = root / f"{name}{i}.png"
                w, c = timed_run(decode_cmd(args.bitstream, out, args.threads, python), _user_env(), cwd=root)
                res[name][0].append(w)
                res[name][1].append(c)
                print(f"run {i + 1} {name}: {w:.2f} s (CPU {c:.2f} s)", flush=True)
            if kernel_files(pre) != shipped:
                sys.exit("the precompiled install compiled and wrote kernels: its shipped ones were not used")
        print(f"bitstream {args.bitstream.name}, --threads {args.threads}")
        print(f"first decode, COOLCHIC_PRECOMPILE=0 (numba compiles): {spread(res['nopre'][0])}; "
              f"CPU {spread(res['nopre'][1])}")
        print(f"first decode, kernels precompiled at install: {spread(res['pre'][0])}; CPU {spread(res['pre'][1])}")
        print(f"first_decode_after_install_s={statistics.median(res['pre'][0]):.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_empty_cache(args) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bitstream", type=Path, default=HERE / "data" / "kodim01_mop.cool")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="--threads of coolchic-decode (default 1)")
    ap.add_argument("--empty-cache", action="store_true",
                    help="time numba's compile in this environment (fresh NUMBA_CACHE_DIR) instead of installs")
    args = ap.parse_args()
    if not args.bitstream.exists():
        sys.exit(f"{args.bitstream} is missing: run python bench/make_bench_bitstreams.py first")
    args.bitstream = args.bitstream.resolve()
    if args.empty_cache:
        bench_empty_cache(args)
    else:
        bench_fresh_install(args)


if __name__ == "__main__":
    main()
