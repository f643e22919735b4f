"""Benchmark: the network parameter reader on worst-case (hostile) sections.

    python bench/param_section_speed.py [--layers 256-9-linear-relu,256-9-linear-relu,X-1-linear-none] [--repeat 3]

The architecture (one latent grid, so one synthesis input channel) sets the
parameter count P; the sections, built bit by bit with numpy:

* ``unit codes``: every field header says shift 0, order 0 and every value is
  the 1-bit code of 0, cut 2 bytes before the end: the reader decodes nearly
  every bit, then finds the section truncated (the most codes per byte);
* ``all 0x00`` and ``all 0xFF`` of the same length;
* ``long codes``: about as many bytes of +32767 at order 0 (31 bits + sign
  each), valid.

Min time over ``--repeat`` runs after a warm-up call (JIT). Last line:
``hostile_param_section_ms=<unit codes> ms``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from coolchic.decoder_runtime.arch import DecoderArch, modules_to_send, param_layout, parse_synthesis_layer  # noqa: E402
from coolchic.decoder_runtime.errors import BitstreamError  # noqa: E402
from coolchic.decoder_runtime.expgolomb import module_kinds, read_network_params  # noqa: E402


def arch_of(layers: str) -> DecoderArch:
    return DecoderArch(img_size=(8, 8), latent_resolution=(0, 0),
                       layers_synthesis=tuple(parse_synthesis_layer(s, 3) for s in layers.split(",")))


def section(arch: DecoderArch, code_bits) -> bytes:
    parts = []
    for m in modules_to_send(arch):
        for k in module_kinds(arch, m):
            n = sum(p.size for p in param_layout(arch) if (p.module, p.kind) == (m, k))
            parts.append(np.zeros(9, np.uint8))  # shift 0, order 0
            parts.append(np.tile(np.asarray(code_bits, np.uint8), n))
    return np.packbits(np.concatenate(parts)).tobytes()


def timed(sec: bytes, arch: DecoderArch, repeat: int):
    best, outcome = float("inf"), "decoded"
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            read_network_params(sec, arch)
        except BitstreamError as e:
            outcome = str(e)
        best = min(best, time.perf_counter() - t0)
    return best, outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="256-9-linear-relu,256-9-linear-relu,X-1-linear-none")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    arch = arch_of(args.layers)
    n_params = sum(p.size for p in param_layout(arch))
    unit = section(arch, [1])
    size = len(unit) - 2
    c = min(256, max(1, size // 4 // 2304))
    long_arch = arch_of(f"256-9-linear-relu,{c}-3-linear-relu,X-1-linear-none")
    long_sec = section(long_arch, [0] * 15 + [1] + [0] * 16)
    small = arch_of("X-1-linear-none")
    read_network_params(section(small, [1]), small)  # warm-up: JIT compilation or cache load
    print(f"{n_params} parameters, sections of {size} bytes")
    cases = [("unit codes, truncated", unit[:size], arch), ("all 0x00", bytes(size), arch),
             ("all 0xFF", b"\xff" * size, arch), (f"long codes ({len(long_sec)} bytes)", long_sec, long_arch)]
    results = {}
    for name, sec, a in cases:
        t, outcome = timed(sec, a, args.repeat)
        results[name] = t
        print(f"{name:32s} {t * 1e3:10.2f} ms  ({outcome})")
    print(f"hostile_param_section_ms={results['unit codes, truncated'] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
