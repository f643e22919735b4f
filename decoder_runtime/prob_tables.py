"""Integer probability tables of the latent entropy model.

The ARM's output is reduced to two small integers per latent: ``frac``, the
fractional part of mu in 1/16 (0..15), and ``k``, the index of the Laplace
scale on a grid of ln b from -4.5 to 4.0 in steps of 1/8 (0..68).  For each
pair this module builds a table of cumulative frequencies (total 2^16) over
the residual ``r = y - floor(mu)`` in ``[-R_k, R_k]`` plus an escape symbol.

Every step is integer arithmetic, except four exponentials per table entry
computed with :mod:`decimal`, whose results are correctly rounded by
specification and therefore the same on every platform; the rest (geometric
sequences, CDF, frequency allocation) uses Python / numpy int64.  So the tables,
and with them the decoded latents, do not depend on the CPU, libm or numpy.
"""

from __future__ import annotations

import decimal
import functools
import hashlib
import os
import threading
from dataclasses import dataclass

import numpy as np

TOTAL_BITS = 16
TOTAL = 1 << TOTAL_BITS
N_FRAC = 16  # mu is quantized to 1/16
MU_FRAC_BITS = 4
N_SCALE = 69  # ln b = LN_B_MIN + k / 8, k in [0, 68]
LN_B_MIN = decimal.Decimal("-4.5")
LN_B_STEP = decimal.Decimal(1) / 8
ESCAPE_EG_ORDER = 0  # Exp-Golomb order of the escaped magnitude
_Q = 30  # fixed-point precision of the exponentials
_ONE = 1 << _Q


def scale_of_index(k: int) -> float:
    """Laplace scale b of index ``k`` (for reports and the float model)."""
    return float((LN_B_MIN + k * LN_B_STEP).exp())


def half_width(k: int) -> int:
    """R_k: residuals in [-R_k, R_k] have their own symbol, others are escaped.

    The tail beyond R_k has probability below about 2^-18, so escapes are rare
    and cost little; small scales get short tables, which also keeps the
    escape's minimum frequency from taxing peaked distributions.
    """
    b = _CTX.exp(LN_B_MIN + k * LN_B_STEP)
    return int((b * decimal.Decimal("12.5")).to_integral_value(rounding=decimal.ROUND_CEILING)) + 1


# Decimal is software arithmetic whose exp() is correctly rounded, hence the
# same everywhere; 28 digits are far more than the 2^-30 the tables keep.
_CTX = decimal.Context(prec=28)


def _fixed_exp_neg(x: decimal.Decimal) -> int:
    """floor(exp(-x) * 2^30) for x >= 0, platform independent."""
    return int((_CTX.exp(-x) * _ONE).to_integral_value(rounding=decimal.ROUND_FLOOR))


def _geometric_rows(first: np.ndarray, ratio: np.ndarray, n: int) -> np.ndarray:
    """Row i holds first[i] * ratio[i]^j in Q30, rounded down at every step."""
    out = np.empty((first.size, n), dtype=np.int64)
    v = first.astype(np.int64)
    r = ratio.astype(np.int64)
    for j in range(n):
        out[:, j] = v
        v = (v * r) >> _Q  # < 2^60: no overflow
    return out


def _scale_tables(k: int) -> list:
    """Cumulative frequencies (length n_sym + 1) of the 16 fracs of scale k."""
    b = _CTX.exp(LN_B_MIN + k * LN_B_STEP)
    big_r = half_width(k)
    half = decimal.Decimal("0.5")
    ratio = _fixed_exp_neg(1 / b)
    # Bin r covers [r - 0.5, r + 0.5); edge j is j + 0.5. Edges j >= j0 lie at
    # or above the centre c = frac/16, where the CDF is 1 - exp(-(e - c)/b) / 2,
    # and below it the CDF is exp(-(c - e)/b) / 2.
    j0 = np.array([0 if 2 * f <= N_FRAC else 1 for f in range(N_FRAC)])
    cs = [decimal.Decimal(f) / N_FRAC for f in range(N_FRAC)]
    up_first = np.array([_fixed_exp_neg((int(j0[f]) + half - cs[f]) / b) for f in range(N_FRAC)])
    lo_first = np.array([_fixed_exp_neg((cs[f] - (int(j0[f]) - 1) - half) / b) for f in range(N_FRAC)])
    ratios = np.full(N_FRAC, ratio)
    up = _geometric_rows(up_first, ratios, big_r + 1)  # edges j0 .. j0 + R
    lo = _geometric_rows(lo_first, ratios, big_r + 2)  # edges j0 - 1 down to j0 - R - 2
    rows = []
    n_sym = 2 * big_r + 2
    for f in range(N_FRAC):
        n_up = big_r - int(j0[f]) + 1  # edges j0 .. R
        n_lo = int(j0[f]) + big_r + 1  # edges j0 - 1 .. -R - 1
        # CDF at edges -R-1 .. R in units of 2^-31 (absorbs the 1/2).
        cdf = np.concatenate([lo[f, :n_lo][::-1], 2 * _ONE - up[f, :n_up]])
        mass = np.empty(n_sym, dtype=np.int64)
        mass[:-1] = np.diff(cdf)
        mass[-1] = cdf[0] + (2 * _ONE - cdf[-1])  # escape: both tails
        # Every symbol keeps at least frequency 1 so that any latent stays codable.
        freq = 1 + (mass * (TOTAL - n_sym)) // (2 * _ONE)
        freq[int(np.argmax(freq[:-1]))] += TOTAL - int(freq.sum())
        cum = np.zeros(n_sym + 1, dtype=np.int64)
        np.cumsum(freq, out=cum[1:])
        rows.append(cum)
    return rows


@dataclass(frozen=True)
class ProbTables:
    """All tables flattened for numba: row (frac, k) starts at ``offset[frac, k]``.

    ``cum[offset : offset + n_sym[k] + 1]`` are the cumulative frequencies of
    the symbols ``r = -R_k .. R_k`` followed by the escape symbol.
    """

    cum: np.ndarray  # int32, concatenated rows
    offset: np.ndarray  # int64 [N_FRAC, N_SCALE]
    half_width: np.ndarray  # int64 [N_SCALE]


# The tables are part of the format: decoders of every version use these bytes.
TABLES_SHA256 = "34ff9401f1affa91300683fe5d7e4e9d1acfb943128942a97b57ccb7a6fd97ed"


def build_tables() -> ProbTables:
    """Compute the tables of every (frac, k) pair (about 50 ms)."""
    offsets = np.zeros((N_FRAC, N_SCALE), dtype=np.int64)
    by_scale = [_scale_tables(k) for k in range(N_SCALE)]
    rows, pos = [], 0
    for f in range(N_FRAC):
        for k in range(N_SCALE):
            row = by_scale[k][f]
            offsets[f, k] = pos
            pos += row.size
            rows.append(row)
    cum = np.concatenate(rows).astype(np.int32)
    widths = np.array([half_width(k) for k in range(N_SCALE)], dtype=np.int64)
    return _frozen(cum, offsets, widths)


def _frozen(cum, offsets, widths) -> ProbTables:
    for a in (cum, offsets, widths):
        a.setflags(write=False)
    return ProbTables(cum, offsets, widths)


def _cache_file() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "coolchic", f"prob_tables_{TABLES_SHA256[:16]}.npz")


def _load_cached(path: str):
    try:
        with np.load(path) as z:
            cum, offsets, widths = z["cum"], z["offset"], z["half_width"]
    except Exception:  # missing, truncated, not a zip, wrong keys: rebuild
        return None
    # A damaged or foreign cache file is ignored: the bytes must be the pinned ones.
    if (cum.dtype != np.int32 or offsets.shape != (N_FRAC, N_SCALE) or widths.shape != (N_SCALE,)
            or hashlib.sha256(cum.tobytes()).hexdigest() != TABLES_SHA256):
        return None
    if not np.array_equal(widths, [half_width(k) for k in range(N_SCALE)]):
        return None
    return _frozen(cum.copy(), offsets.astype(np.int64), widths.astype(np.int64))


@functools.lru_cache(maxsize=1)
def get_tables() -> ProbTables:
    """The tables, from the user cache when a verified copy is there, else built (and cached)."""
    path = _cache_file()
    tables = _load_cached(path)
    if tables is not None:
        return tables
    tables = build_tables()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"  # threads of one process may race here
        with open(tmp, "wb") as f:
            np.savez(f, cum=tables.cum, offset=tables.offset, half_width=tables.half_width)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the rebuild next time
    return tables


def symbol_bits(tables: ProbTables, frac: int, k: int, r: int) -> float:
    """Ideal cost in bits of residual ``r`` under table (frac, k), escape included."""
    o = int(tables.offset[frac, k])
    big_r = int(tables.half_width[k])
    if -big_r <= r <= big_r:
        s = r + big_r
        return -np.log2((int(tables.cum[o + s + 1]) - int(tables.cum[o + s])) / TOTAL)
    esc = 2 * big_r + 1
    f = int(tables.cum[o + esc + 1]) - int(tables.cum[o + esc])
    m = abs(r) - big_r - 1
    return -np.log2(f / TOTAL) + 1 + 2 * (m + 1).bit_length() - 1
