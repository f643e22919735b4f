"""Rate of the transmitted network parameters: signed Exp-Golomb codes of the
integers ``round(w / 2^-s)``, with one (shift, count) pair per module and
weight/bias kind.
"""

from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np

from coolchic.decoder_runtime.expgolomb import MAX_ABS_VALUE, MAX_COUNT, MAX_SHIFT, exp_golomb_nbits

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


# ---- a differentiable stand-in for training ------------------------------------
# Steps 2^-s that quantize_model typically picks (kodim01 crop, lambda 0.02 to
# 0.0002); the proxy only needs the order of magnitude: it sets where the pull
# towards zero turns from L1-like into log-like.
NOMINAL_SHIFT = {
    ("arm", "weight"): 4,
    ("arm", "bias"): 6,
    ("ifce", "weight"): 3,
    ("ifce", "bias"): 5,
    ("upsampling", "weight"): 7,
    ("upsampling", "bias"): 7,
    ("synthesis", "weight"): 6,
    ("synthesis", "bias"): 8,
}


class NetworkRateProxy:
    """Differentiable estimate of the networks' Exp-Golomb bits.

    An order-0 signed Exp-Golomb code spends ``2 floor(log2(|q| + 1)) + 1`` bits
    (plus a sign bit) on the integer ``q = w 2^s``; the proxy is its smooth
    version ``sum 2 log2(1 + |w| 2^s)``, without the constant. Its gradient
    pulls small weights to zero like an L1 penalty of slope ``2^(s+1) / ln 2``
    and large ones like ``2 / (|w| ln 2)``, whatever s.

    ``named_params`` maps ``module.name...weight|bias`` to the tensors (kept by
    reference, so the proxy follows training); ``shifts`` maps (module, kind)
    to s, falling back to :data:`NOMINAL_SHIFT`. One concatenation per call: a
    few tens of microseconds for a mop decoder.
    """

    def __init__(self, named_params, shifts=None):
        import torch

        self.params = list(named_params.values())
        scales = []
        for name, p in named_params.items():
            module, kind = name.split(".", 1)[0], name.rsplit(".", 1)[-1]
            s = (shifts or {}).get((module, kind)) or NOMINAL_SHIFT.get((module, kind), 6)
            scales.append(torch.full((p.numel(),), float(1 << s), dtype=p.dtype, device=p.device))
        self.scale = torch.cat(scales) if scales else None

    def __call__(self):
        import torch

        if self.scale is None:
            return 0.0
        flat = torch.cat([p.reshape(-1) for p in self.params])
        return 2.0 * torch.log2(1.0 + flat.abs() * self.scale).sum()
