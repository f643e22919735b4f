"""Rate of the transmitted network parameters: signed Exp-Golomb codes of the
integers ``round(w / 2^-s)``, with one (shift, count) pair per module and
weight/bias kind.
"""

from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np

from decoder_runtime.expgolomb import MAX_ABS_VALUE, MAX_COUNT, MAX_SHIFT, exp_golomb_nbits

POSSIBLE_SHIFTS = tuple(range(MAX_SHIFT + 1))  # quantization step 2^-s
POSSIBLE_EXPGOL_COUNTS = tuple(range(MAX_COUNT + 1))
MAX_PARAM_INT = MAX_ABS_VALUE  # largest |integer| the bitstream can carry


def best_expgol_count(values: np.ndarray, counts: Iterable[int] = POSSIBLE_EXPGOL_COUNTS) -> Tuple[int, int]:
    """(count, bits) with the fewest bits; the smallest count wins a tie."""
    best = None
    for k in counts:
        bits = exp_golomb_nbits(values, k)
        if best is None or bits < best[1]:
            best = (k, bits)
    return best


def quantize_to_int(values: np.ndarray, shift: int) -> np.ndarray:
    """``round(values * 2^shift)`` as int64 (round half to even, as torch.round)."""
    return np.rint(np.asarray(values, dtype=np.float64) * float(1 << shift)).astype(np.int64)
