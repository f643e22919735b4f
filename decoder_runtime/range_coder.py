"""Range decoder (numba): turns substream bytes back into symbols.

A 32-bit multi-symbol range coder in the Subbotin / LZMA family: 16-bit
frequency totals, byte-wise renormalisation, carries resolved by the encoder
(export/range_encoder.py). The encoder drops the first byte, which is always
zero, and trailing zero bytes, which the decoder reads back as padding.
All state is integer; a decoder's state lives in a small int64 array so that
it survives between grids and threads.
"""

from __future__ import annotations

import numpy as np

from .jit import njit
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


@njit(inline="always")
def rc_step(buf, pos, code, rng, cum, off, n_sym, nbits):
    """One decoding step: (value, pos, code, range).

    ``nbits < 0``: one symbol of ``cum[off : off + n_sym + 1]`` (16-bit
    frequency totals), its index; else ``nbits`` (0 to 16) equiprobable bits,
    their value. One function for both, so that a kernel that reads symbols
    and bits holds one copy of the renormalisation (each inlined copy costs
    compile time). The state is passed in scalars so that it stays in
    registers in hot loops. The latent kernel (``latent_codec._decode_stripes``)
    holds this step written out, the same arithmetic (its search tries the
    residual's mode first, then bisects: the same symbol): inlined there, this
    function's array arguments cost four atomic reference-count operations per
    symbol, as much as the step itself.
    """
    if nbits < 0:
        r = rng >> TOTAL_BITS
        t = np.int64(np.uint64(code) // np.uint64(r))  # both below 2^32: a 32-bit division
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
        width = np.int64(cum[off + lo + 1]) - c0
    else:
        r = rng >> nbits
        t = code // r
        if t >= (1 << nbits):
            t = (1 << nbits) - 1
        lo = t
        c0 = t
        width = np.int64(1)
    code -= r * c0
    rng = r * width
    while rng < TOP:
        b = np.int64(buf[pos]) if pos < buf.size else np.int64(0)
        pos += 1
        code = ((code << 8) | b) & MASK32
        rng = (rng << 8) & MASK32
    return lo, pos, code, rng


@njit
def decoder_init(buf, st):
    st[ST_STATUS] = STATUS_OK
    code = np.int64(0)
    for p in range(4):
        code = (code << 8) | (np.int64(buf[p]) if p < buf.size else np.int64(0))
    st[ST_POS] = 4
    st[ST_CODE] = code
    st[ST_RANGE] = MASK32


@njit(inline="always")
def check_overread(buf, st):
    if st[ST_POS] > buf.size + MAX_OVERREAD and st[ST_STATUS] == STATUS_OK:
        st[ST_STATUS] = STATUS_OVERREAD


@njit
def decode_symbol(buf, st, cum, off, n_sym):
    """Array-state form of :func:`rc_step` on a symbol (the state persists in ``st``)."""
    s, st[ST_POS], st[ST_CODE], st[ST_RANGE] = rc_step(buf, st[ST_POS], st[ST_CODE], st[ST_RANGE], cum, off, n_sym, -1)
    check_overread(buf, st)
    return s


@njit
def decode_bits(buf, st, nbits):
    """Array-state form of :func:`rc_step` on ``nbits`` (<= 16) equiprobable bits."""
    v, st[ST_POS], st[ST_CODE], st[ST_RANGE] = rc_step(buf, st[ST_POS], st[ST_CODE], st[ST_RANGE], buf, 0, 0, nbits)
    check_overread(buf, st)
    return v
