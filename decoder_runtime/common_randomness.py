"""Common randomness: noise grids that encoder and decoder generate alike.

When an architecture sets ``flag_common_randomness``, the synthesis also sees
one noise grid per latent resolution.  Nothing of the noise is transmitted but
its 32-bit seed: both sides regenerate it bit for bit with the counter-based
generator below (SplitMix64 on unsigned 64-bit integers, then an exact
conversion of 24 bits to float32), so the platform does not matter.
"""

from __future__ import annotations

from typing import List

import numpy as np

from .arch import DecoderArch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def noise_grid(seed: int, grid_index: int, h: int, w: int) -> np.ndarray:
    """Uniform noise in [-0.5, 0.5) of shape (h, w), float32, exactly reproducible.

    Sample ``n`` (raster order) of grid ``g`` is ``top24 / 2^24 - 0.5`` where
    ``top24`` is the high 24 bits of ``splitmix64((seed << 32) + (g << 27) + n)``.
    """
    return noise_rows(seed, grid_index, w, 0, h)


def noise_rows(seed: int, grid_index: int, w: int, r0: int, r1: int) -> np.ndarray:
    """Rows ``[r0, r1)`` of :func:`noise_grid` for a grid ``w`` wide, without the others."""
    base = (np.uint64(seed) << np.uint64(32)) + (np.uint64(grid_index) << np.uint64(27))
    counters = base + np.arange(r0 * w, r1 * w, dtype=np.uint64)
    top24 = (_splitmix64(counters) >> np.uint64(40)).astype(np.int64)
    # int -> float32 is exact below 2^24, and so is the scaling by a power of two.
    return ((top24 - (1 << 23)).astype(np.float32) * np.float32(2.0**-24)).reshape(r1 - r0, w)


def common_randomness_grids(arch: DecoderArch) -> List[np.ndarray]:
    """One noise grid per latent grid (finest first), empty when the flag is off."""
    if not arch.flag_common_randomness:
        return []
    return [
        noise_grid(arch.common_randomness_seed, i, h, w)
        for i, (h, w) in enumerate(arch.latent_grid_sizes())
    ]
