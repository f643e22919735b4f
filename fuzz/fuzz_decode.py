"""Long fuzz campaign: structure-aware mutants through ``decoder_runtime.decode``.

    pip install -e ".[fuzz]"
    python fuzz/fuzz_decode.py [-n 100000] [--seed 0] [--out fuzz/findings]

Hypothesis drives the mutation operators of :mod:`fuzz.mutator` (header
fields, architectures with a matching parameter section, parameter sections,
substreams, framing; CRC recomputed) on seed bitstreams that cover the
format's options (and ``tests/data/golden_v1.cool``, ``golden_v3.cool``). Every mutant goes
through ``decode()`` with small limits (``--max-pixels``, ``--max-memory``) so
that each decode stays short; the expected outcomes are a decoded image or a
:class:`~decoder_runtime.errors.CoolChicError` subclass.

Prints the count of outcomes by exception type, the operators used, the
slowest decode, the decode that raised the process's peak memory most (saved
as ``largest_peak.cool``) and the rate. Any other exception, and any decode
that raises the peak past ``--max-memory`` and 256 MB of slack, is an
unexpected failure: its input is saved to ``--out`` as ``unexpected_<n>_<type>.cool`` with the
traceback beside it. A crash of the process itself (a signal, or a decode
stuck past ``--timeout``) leaves the input it was decoding in
``<out>/last_input.cool``. The process's address space is capped
(``--rlimit-gb``) so that a runaway allocation is a MemoryError here, not the
machine's out-of-memory killer.

Last line: ``fuzz_unexpected=<count> inputs``.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import resource
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from fuzz.mutator import interesting, mutate, seed_bitstreams  # noqa: E402

# Inputs per hypothesis test (see main: hypothesis's memory grows with each input).
CHUNK = 10_000
# What a decode may raise the peak memory by beyond --max-memory: loading a
# kernel or a session for the first time, which the budget leaves out on purpose
# (the int64 latent kernel alone is about 100 MB of compiled code).
RISE_SLACK = 256 << 20


class HypothesisDraw:
    """The mutators' ``draw(kind, *args)`` on a hypothesis ``data`` object."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def __call__(self, kind: str, *args):
        st, draw = self.st, self.data.draw
        if kind == "int":
            return draw(st.integers(args[0], args[1]))
        if kind == "chance":
            return draw(st.integers(0, 999)) < int(args[0] * 1000)
        if kind == "choice":
            return draw(st.sampled_from(args[0]))
        if kind == "bytes":
            return draw(st.binary(min_size=args[0], max_size=args[0]))
        if kind == "interesting":
            return interesting(self, args[0])
        raise ValueError(kind)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--inputs", type=int, default=100_000, help="mutants to decode (default 100000)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed (default 0) of the hypothesis tests, one per 10 000 inputs: a run is reproducible")
    ap.add_argument("--out", type=Path, default=HERE / "findings", help="where reproducers go (default fuzz/findings)")
    ap.add_argument("--max-pixels", type=int, default=1 << 16, help="decode(max_pixels=) for mutants (default 65536)")
    ap.add_argument("--max-memory", default="256M", help="decode(max_memory=) for mutants (default 256M)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds one decode may take before the run aborts")
    ap.add_argument("--rlimit-gb", type=float, default=8.0, help="address-space cap of this process (default 8)")
    ap.add_argument("--report-every", type=int, default=10_000, help="progress line every N inputs")
    args = ap.parse_args()

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hyp_seed
    from hypothesis import strategies as st

    from coolchic import decoder_runtime
    from coolchic.decoder_runtime.errors import CoolChicError

    cap = int(args.rlimit_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = seed_bitstreams()
    for name in ("golden_v1", "golden_v3"):  # the v3 file has the stacked IFCE
        golden = REPO / "tests" / "data" / f"{name}.cool"
        if golden.exists():
            seeds[name] = golden.read_bytes()
    names = sorted(seeds)
    for name in names:  # every seed decodes: the mutants start from sound files
        decoder_runtime.decode(seeds[name], max_pixels=args.max_pixels, max_memory=args.max_memory)

    outcomes: Counter = Counter()
    ops_used: Counter = Counter()
    stages: Counter = Counter()
    unexpected = []
    slowest = [0.0, b"", ()]
    # The largest rise of the process's peak resident memory during one decode
    # (ru_maxrss, KiB on Linux): what a hostile file made the decoder allocate.
    largest = [0, b"", ()]
    # A decode that raises the peak by more than its budget allows: the bound did not bound.
    from coolchic.decoder_runtime.budget import parse_size

    rise_limit_kib = (parse_size(args.max_memory) + RISE_SLACK) >> 10
    last = open(args.out / "last_input.cool", "wb")
    t_start = time.perf_counter()
    done = [0]

    def record_unexpected(e: BaseException, mutant: bytes, name: str, ops) -> None:
        outcomes[f"UNEXPECTED {type(e).__name__}"] += 1
        stem = args.out / f"unexpected_{len(unexpected)}_{type(e).__name__}"
        stem.with_suffix(".cool").write_bytes(mutant)
        stem.with_suffix(".txt").write_text(f"seed {name}, operators {ops}\n{traceback.format_exc()}")
        unexpected.append(stem)

    def one(data):
        name = data.draw(st.sampled_from(names))
        mutant, ops = mutate(seeds[name], HypothesisDraw(data))
        ops_used.update(ops)
        last.seek(0)
        last.write(mutant)
        last.truncate()
        last.flush()
        faulthandler.dump_traceback_later(args.timeout, exit=True)
        t0 = time.perf_counter()
        peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decoder_runtime.decode(mutant, max_pixels=args.max_pixels, max_memory=args.max_memory)
            outcomes["decoded"] += 1
        except CoolChicError as e:
            if "ran out of memory" in str(e):  # decode() wraps a MemoryError: a bound that did not bound
                record_unexpected(e, mutant, name, ops)
            else:
                outcomes[type(e).__name__] += 1
                stages[str(e).split(":")[0][:48]] += 1
        except Exception as e:  # the failures this campaign looks for
            record_unexpected(e, mutant, name, ops)
        finally:
            faulthandler.cancel_dump_traceback_later()
        dt = time.perf_counter() - t0
        if dt > slowest[0]:
            slowest[:] = [dt, mutant, ops]
        rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0
        if rise > largest[0]:
            largest[:] = [rise, mutant, ops]
        if rise > rise_limit_kib:
            try:
                raise MemoryError(f"the decode raised the peak resident memory by {rise >> 10} MB, "
                                  f"past --max-memory {args.max_memory} and {RISE_SLACK >> 20} MB of slack")
            except MemoryError as e:
                record_unexpected(e, mutant, name, ops)
        done[0] += 1
        if args.report_every and done[0] % args.report_every == 0:
            rate = done[0] / (time.perf_counter() - t_start)
            print(f"{done[0]} inputs, {rate:.0f}/s, {dict(outcomes)}", flush=True)

    # Hypothesis keeps a record of every input a test generates (76 KB an
    # input here: 7.6 GB after 100 000, with the decoder itself flat at
    # 220-260 MB over 12 000 mutants), so the campaign runs as tests of at most
    # CHUNK inputs, each with its own seed drawn from --seed.
    chunk_seeds = np.random.default_rng(args.seed).integers(0, 1 << 62, size=-(-args.inputs // CHUNK))
    for c, chunk_seed in enumerate(chunk_seeds):
        n = min(CHUNK, args.inputs - c * CHUNK)
        test = settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False)(
            given(st.data())(hyp_seed(int(chunk_seed))(one)))
        test()
    elapsed = time.perf_counter() - t_start
    last.close()
    n = done[0]
    (args.out / "slowest.cool").write_bytes(slowest[1])
    (args.out / "largest_peak.cool").write_bytes(largest[1])
    print(f"\nseeds: {', '.join(names)}")
    print(f"inputs: {n} in {elapsed:.0f} s ({n / elapsed:.0f} inputs/s), hypothesis seed {args.seed}")
    print("operators: " + ", ".join(f"{k} {v}" for k, v in sorted(ops_used.items())))
    print("outcomes:")
    for k, v in outcomes.most_common():
        print(f"  {k:<28} {v:>8}  ({100 * v / max(n, 1):.1f} %)")
    print("most frequent error messages (up to the first colon):")
    for k, v in stages.most_common(12):
        print(f"  {v:>8}  {k}")
    print(f"slowest decode: {1e3 * slowest[0]:.1f} ms (operators {slowest[2]}; saved as {args.out / 'slowest.cool'})")
    print(f"largest rise of the peak resident memory in one decode: {largest[0] / 1024:.1f} MB "
          f"(operators {largest[2]}; saved as {args.out / 'largest_peak.cool'})")
    print(f"peak resident memory of the campaign: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    for stem in unexpected[:20]:
        print(f"unexpected: {stem}.cool ({stem}.txt)")
    print(f"fuzz_unexpected={len(unexpected)} inputs")
    return 1 if unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
