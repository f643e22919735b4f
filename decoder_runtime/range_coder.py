"""Range decoder (numba): turns substream bytes back into symbols.

A 32-bit multi-symbol range coder in the Subbotin / LZMA family: 16-bit
frequency totals, byte-wise renormalisation, carries resolved by the encoder
(export/range_encoder.py). The encoder drops the first byte, which is always
zero, and trailing zero bytes, which the decoder reads back as padding.
All state is integer; a decoder's state lives in a small int64 array so that
it survives between grids and threads.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .prob_tables import TOTAL_BITS

TOP = 1 << 24
MASK32 = 0xFFFFFFFF
# Reading this many bytes past the end means the stream is not what the
# encoder wrote (an honest stream needs at most 4 bytes of zero padding).
MAX_OVERREAD = 8

# state layout: [position, code, range, status]
ST_POS, ST_CODE, ST_RANGE, ST_STATUS = 0, 1, 2, 3
STATUS_OK, STATUS_OVERREAD, STATUS_BAD_ESCAPE, STATUS_RANGE = 0, 1, 2, 3


def new_state() -> np.ndarray:
    return np.zeros(4, dtype=np.int64)


@nb.njit(cache=True, inline="always")
def _next_byte(buf, st):
    p = st[ST_POS]
    st[ST_POS] = p + 1
    if p < buf.size:
        return np.int64(buf[p])
    if p >= buf.size + MAX_OVERREAD:
        st[ST_STATUS] = STATUS_OVERREAD
    return np.int64(0)


@nb.njit(cache=True)
def decoder_init(buf, st):
    st[ST_POS] = 0
    st[ST_STATUS] = STATUS_OK
    st[ST_RANGE] = MASK32
    code = np.int64(0)
    for _ in range(4):
        code = (code << 8) | _next_byte(buf, st)
    st[ST_CODE] = code


@nb.njit(cache=True, inline="always")
def _normalize(buf, st):
    while st[ST_RANGE] < TOP:
        st[ST_CODE] = ((st[ST_CODE] << 8) | _next_byte(buf, st)) & MASK32
        st[ST_RANGE] = (st[ST_RANGE] << 8) & MASK32


@nb.njit(cache=True)
def decode_symbol(buf, st, cum, off, n_sym):
    """Decode one symbol of the table ``cum[off : off + n_sym + 1]``; return its index."""
    r = st[ST_RANGE] >> TOTAL_BITS
    t = st[ST_CODE] // r
    if t >= (1 << TOTAL_BITS):  # only a corrupted stream gets here
        t = (1 << TOTAL_BITS) - 1
    lo = 0
    hi = n_sym
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if cum[off + mid] <= t:
            lo = mid
        else:
            hi = mid
    c0 = np.int64(cum[off + lo])
    st[ST_CODE] -= r * c0
    st[ST_RANGE] = r * (np.int64(cum[off + lo + 1]) - c0)
    _normalize(buf, st)
    return lo


@nb.njit(cache=True)
def decode_bits(buf, st, nbits):
    """Decode ``nbits`` (<= 16) equiprobable bits."""
    r = st[ST_RANGE] >> nbits
    t = st[ST_CODE] // r
    if t >= (1 << nbits):
        t = (1 << nbits) - 1
    st[ST_CODE] -= r * t
    st[ST_RANGE] = r
    _normalize(buf, st)
    return t
