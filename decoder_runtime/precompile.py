"""Compile, ahead of the first decode, every numba kernel a decode may run.

    python -m coolchic.decoder_runtime.precompile

On a cold cache the first decode of a process spends about three seconds in
numba compiling the latent decoder (``bench/cold_start.py``). This module
runs each kernel once, on a tiny made-up grid, with the very argument types a
decode passes, so that numba compiles it and writes it to the kernel cache
(:mod:`decoder_runtime.jit`): the stripe decoder on the int32 and on the
int64 ARM (the int64 one a decode compiles only for a stripe that needs it),
the parameter-section reader of large architectures, the motion
compensation of P and B frames and the warp of a motion field (direct B frames).

The wheel build runs it (``_build/coolchic_build.py``): the cache files land
in the package's ``__pycache__`` and install with it, so a first decode after
``pip install .`` loads them instead of compiling. Compiled code is specific
to the CPU and the numba version: where they differ from the build machine's
(a wheel built elsewhere) numba ignores the shipped files and compiles, as
without them.
"""

from __future__ import annotations

import sys
from typing import List, Tuple

import numpy as np

from .arch import DecoderArch, SynthesisLayer, modules_to_send, param_layout
from .arm_int import build_int_arm, ifce_forward
from .errors import CoolChicError
from .expgolomb import MAX_ABS_VALUE, PY_READER_MAX_VALUES, _read_fields, module_kinds
from .inter import _combine_kernel, _warp_kernel, combine, warp
from .latent_codec import _decode_stripes, decode_latent_grids


def _tiny_arch() -> DecoderArch:
    """One 4x4 latent grid: the kernels' types do not depend on sizes."""
    return DecoderArch(img_size=(4, 4), latent_resolution=(0, 0),
                       layers_synthesis=(SynthesisLayer(3, 1, False, False),))


def _int_arm(arch: DecoderArch, amplitude: int):
    q = {p.name: np.full(p.shape, amplitude, dtype=np.int32) for p in param_layout(arch)}
    shifts = {(m, k): 0 for m in modules_to_send(arch) for k in module_kinds(arch, m)}
    return build_int_arm(arch, q, shifts)


def precompile() -> List[Tuple[str, str]]:
    """Compile (or load from the cache) every kernel a decode may run; returns (kernel, cache path) pairs.

    The stripe decoder runs through :func:`decode_latent_grids`, as a decode
    runs it: with zero weights the int32 ARM is exact, with the largest
    weights of the format it never is and the int64 ARM runs. The made-up
    substream decodes to anything or fails: only the compilation matters.
    """
    arch = _tiny_arch()
    substream = bytes(16)
    for amplitude in (0, MAX_ABS_VALUE):
        try:
            decode_latent_grids(arch, _int_arm(arch, amplitude), [substream])
        except CoolChicError:
            pass
    # The IFCE features (the tiny arch has none), with grid_features's argument types.
    ifce_forward(np.zeros((1, 1), np.int32), np.zeros((0, 1, 1), np.int32), np.zeros((1, 9), np.int64),
                 np.zeros(1, np.int64), 0, 1, np.zeros((1, 1, 1), np.int32))
    # The parameter reader of sections beyond PY_READER_MAX_VALUES values, with
    # read_network_params's argument types (a bytes section, so read-only).
    n = PY_READER_MAX_VALUES + 1
    _read_fields(np.frombuffer(bytes(8), dtype=np.uint8), np.array([n], dtype=np.int64),
                 np.empty(n, dtype=np.int32), np.zeros((1, 2), dtype=np.int64), np.zeros(3, dtype=np.int64))
    # Motion compensation: one specialization serves P and B frames.
    combine(np.zeros((6, 2, 2), np.float32), "P", [np.zeros((3, 2, 2), np.float32)])
    # A direct B frame's (and a B frame with derived motion's) field read on its source.
    warp(np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.float32))
    compiled = []
    for kernel in (_decode_stripes, ifce_forward, _read_fields, _combine_kernel, _warp_kernel):
        path = getattr(kernel, "stats", None) and kernel.stats.cache_path
        compiled.append((kernel.py_func.__qualname__, path or "(not cached)"))
    return compiled


def main() -> int:
    for name, path in precompile():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
