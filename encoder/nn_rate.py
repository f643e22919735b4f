"""Rate of the transmitted network parameters: signed Exp-Golomb codes of the
integers ``round(w / 2^-s)``, with one (shift, count) pair per module and
weight/bias kind.
"""

from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np

POSSIBLE_SHIFTS = tuple(range(17))  # quantization step 2^-s
POSSIBLE_EXPGOL_COUNTS = tuple(range(13))
MAX_PARAM_INT = (1 << 15) - 1  # largest |integer| the bitstream can carry


def exp_golomb_nbits(values: np.ndarray, count: int) -> int:
    """Bits of the signed Exp-Golomb codes of ``values`` with parameter ``count``.

    Each value v costs ``2 * floor(log2(|v| + 2^k)) - k + 1`` bits, plus one sign
    bit when v != 0.
    """
    a = np.abs(np.asarray(values, dtype=np.int64)).reshape(-1)
    if a.size == 0:
        return 0
    # frexp gives floor(log2(n)) + 1 exactly for integers n >= 1.
    e = np.frexp((a + (1 << count)).astype(np.float64))[1] - 1
    return int(np.sum(2 * e - count + 1) + np.count_nonzero(a))


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
