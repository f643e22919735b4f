"""Range encoder (numba): the writing twin of decoder_runtime/range_coder.py.

LZMA-style carry handling (a cached byte plus a run of 0xFF bytes), 16-bit
frequency totals. Two bytes are saved per stream: the first output byte is
always zero and is not written, and the final value is chosen with as many
trailing zero bits as the interval allows so that the flush ends in zeros,
which are dropped (the decoder reads zeros past the end).
"""

from __future__ import annotations

import numpy as np

from coolchic.decoder_runtime.jit import njit
from coolchic.decoder_runtime.prob_tables import TOTAL_BITS
from coolchic.decoder_runtime.range_coder import MASK32, TOP

# state layout: [low, range, cache, cache_size, out_pos, skip_first, overflow]
E_LOW, E_RANGE, E_CACHE, E_CSIZE, E_POS, E_SKIP, E_OVERFLOW = 0, 1, 2, 3, 4, 5, 6


def new_encoder_state() -> np.ndarray:
    st = np.zeros(7, dtype=np.int64)
    st[E_RANGE] = MASK32
    st[E_CSIZE] = 1
    st[E_SKIP] = 1
    return st


@njit(inline="always")
def _emit(out, st, byte):
    if st[E_SKIP] == 1:
        st[E_SKIP] = 0
        return
    p = st[E_POS]
    if p < out.size:
        out[p] = byte
    else:
        st[E_OVERFLOW] = 1
    st[E_POS] = p + 1


@njit
def _shift_low(out, st):
    low = st[E_LOW]
    if low < 0xFF000000 or low > MASK32:
        carry = low >> 32
        temp = st[E_CACHE]
        while True:
            _emit(out, st, (temp + carry) & 0xFF)
            temp = 0xFF
            st[E_CSIZE] -= 1
            if st[E_CSIZE] == 0:
                break
        st[E_CACHE] = (low >> 24) & 0xFF
    st[E_CSIZE] += 1
    st[E_LOW] = (low & 0x00FFFFFF) << 8


@njit(inline="always")
def _normalize(out, st):
    while st[E_RANGE] < TOP:
        st[E_RANGE] = (st[E_RANGE] << 8) & MASK32
        _shift_low(out, st)


@njit
def encode_symbol(out, st, c0, freq):
    """Encode the symbol whose cumulative frequency is ``c0`` and frequency ``freq``."""
    r = st[E_RANGE] >> TOTAL_BITS
    st[E_LOW] += r * c0
    st[E_RANGE] = r * freq
    _normalize(out, st)


@njit
def encode_bits(out, st, value, nbits):
    """Encode ``nbits`` (<= 16) equiprobable bits."""
    r = st[E_RANGE] >> nbits
    st[E_LOW] += r * value
    st[E_RANGE] = r
    _normalize(out, st)


@njit
def encoder_finish(out, st):
    """Flush; return the number of bytes of ``out`` to keep (-1 on overflow)."""
    low = st[E_LOW]
    high = low + st[E_RANGE]
    # The value with the most trailing zero bits inside [low, high).
    for s in range(32, -1, -1):
        m = (np.int64(1) << s) - 1
        v = (low + m) & ~m
        if v < high:
            st[E_LOW] = v
            break
    for _ in range(5):
        _shift_low(out, st)
    if st[E_OVERFLOW] == 1:
        return -1
    n = st[E_POS]
    while n > 0 and out[n - 1] == 0:
        n -= 1
    return n
