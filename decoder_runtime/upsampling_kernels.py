"""Upsampling kernels: from the transmitted halves to the full symmetric 1-D
kernels, and the initial (static) kernels.

The encoder initialises its learnable kernels with
:func:`default_upsampling_kernels`, and a decoder of a bitstream with
``static_upsampling_kernel`` uses the same values without receiving them, so
this plain-numpy function is the single definition both sides call.
See ``docs/architecture.md`` section 3.
"""

from __future__ import annotations

from typing import List, Mapping, Tuple

import numpy as np

from .arch import DecoderArch
from .errors import ConfigError

BICUBIC_A = -0.75


def _cubic(x: np.ndarray, a: float = BICUBIC_A) -> np.ndarray:
    """Keys' cubic convolution kernel (the one of torch and ONNX bicubic)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def default_upsampling_kernels(k_size: int, preconcat_k_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Initial full kernels ``(t, p)``: float32, of sizes ``k_size`` and ``preconcat_k_size``.

    ``t`` interpolates at half-pixel centres: bilinear for ``k_size`` 4 and 6,
    bicubic (a = -0.75) from 8 up, zero padded and centred, scaled so that
    ``sum(t) = 2`` (a constant stays constant). ``p`` is a unit impulse.
    """
    if not (k_size >= 4 and k_size % 2 == 0):
        raise ConfigError(f"upsampling kernel size must be even and >= 4, got {k_size}")
    if not (preconcat_k_size >= 1 and preconcat_k_size % 2 == 1):
        raise ConfigError(f"pre-concatenation kernel size must be odd and >= 1, got {preconcat_k_size}")
    taps = 4 if k_size < 8 else 8
    # Output samples of a 2x upsampling sit at +-0.25, +-0.75, ... input pixels
    # from the input samples that feed them.
    offsets = (np.arange(taps) - (taps - 1) / 2) / 2
    core = np.maximum(1 - np.abs(offsets), 0.0) if taps == 4 else _cubic(offsets)
    core = core * (2.0 / core.sum())
    pad = (k_size - taps) // 2
    t = np.pad(core, (pad, pad)).astype(np.float32)
    p = np.zeros(preconcat_k_size, np.float32)
    p[preconcat_k_size // 2] = 1.0
    return t, p


def tconv_half(t: np.ndarray) -> np.ndarray:
    """The transmitted half ``t[K/2:]`` of a symmetric even-size kernel."""
    return np.asarray(t, np.float32)[len(t) // 2:]


def preconcat_half(p: np.ndarray) -> np.ndarray:
    """The transmitted half ``p[Kp//2:]`` (centre tap included) of an odd-size kernel."""
    return np.asarray(p, np.float32)[len(p) // 2:]


def tconv_full(half: np.ndarray) -> np.ndarray:
    """``t = concat(reverse(half), half)``: even size, symmetric."""
    half = np.asarray(half, np.float32).reshape(-1)
    return np.concatenate([half[::-1], half])


def preconcat_full(half: np.ndarray) -> np.ndarray:
    """``p = concat(reverse(half[1:]), half)``: odd size, symmetric around ``half[0]``."""
    half = np.asarray(half, np.float32).reshape(-1)
    return np.concatenate([half[:0:-1], half])


def arch_upsampling_kernels(arch: DecoderArch, params: Mapping[str, np.ndarray]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Full ``(t_l, p_l)`` for each transition ``l = 0 .. N-2`` (grid ``l+1`` to grid ``l``).

    The kernels come from ``params`` unless the architecture has static
    kernels (or a single grid), in which case the defaults are used.
    """
    n = arch.n_latent_grids - 1
    if arch.static_upsampling_kernel:
        t, p = default_upsampling_kernels(arch.ups_k_size, arch.ups_preconcat_k_size)
        return [(t, p)] * n
    out = []
    for lv in range(n):
        out.append(
            (
                tconv_full(params[f"upsampling.tconv.{lv}.weight"]),
                preconcat_full(params[f"upsampling.preconcat.{lv}.weight"]),
            )
        )
    return out
