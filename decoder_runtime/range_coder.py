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
def rc_target(code, rng, nbits):
    """(unit, target) of a decoding step: ``unit = range >> B``, ``target =
    min(code // unit, 2^B - 1)`` with B = TOTAL_BITS for a symbol (``nbits <
    0``), else ``nbits`` (0 to 16) equiprobable bits, whose value the target
    is. Both operands are below 2^32: an unsigned division, which LLVM
    narrows to 32 bits. The target exceeds 2^B - 1 in a corrupted stream only.
    """
    b = TOTAL_BITS if nbits < 0 else nbits
    unit = rng >> b
    target = np.int64(np.uint64(code) // np.uint64(unit))
    top = (np.int64(1) << b) - 1
    return unit, (target if target < top else top)


@njit(inline="always")
def bisect_symbol(cum, off, lo, hi, target):
    """The symbol s in [lo, hi) with ``cum[off + s] <= target < cum[off + s + 1]``
    (``cum[off + lo] <= target`` and ``target < cum[off + hi]``)."""
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if cum[off + mid] <= target:
            lo = mid
        else:
            hi = mid
    return lo


@njit(inline="always")
def rc_narrow(code, unit, c0, width):
    """(code, range) once the symbol ``[c0, c0 + width)`` (in units of ``unit``) is read."""
    return code - unit * c0, unit * width


@njit(inline="always")
def rc_shift_in(code, rng, byte):
    """(code, range) after one byte of renormalisation (while ``range < TOP``)."""
    return ((code << 8) | byte) & MASK32, (rng << 8) & MASK32


@njit(inline="always")
def rc_step(buf, pos, code, rng, cum, off, n_sym, nbits):
    """One decoding step: (value, pos, code, range).

    ``nbits < 0``: one symbol of ``cum[off : off + n_sym + 1]`` (16-bit
    frequency totals), its index; else ``nbits`` (0 to 16) equiprobable bits,
    their value. The state is passed in scalars so that it stays in registers
    in hot loops. The latent kernel (``latent_codec._decode_stripes``) runs
    the same helpers (:func:`rc_target`, :func:`bisect_symbol`,
    :func:`rc_narrow`, :func:`rc_shift_in`, scalars but for the search) in its
    own loop instead of calling this function: inlined there, its array
    arguments would cost four atomic reference-count operations per symbol,
    as much as the step itself.
    """
    unit, t = rc_target(code, rng, nbits)
    if nbits < 0:
        s = bisect_symbol(cum, off, 0, n_sym, t)
        c0 = np.int64(cum[off + s])
        width = np.int64(cum[off + s + 1]) - c0
    else:
        s, c0, width = t, t, np.int64(1)
    code, rng = rc_narrow(code, unit, c0, width)
    while rng < TOP:
        code, rng = rc_shift_in(code, rng, np.int64(buf[pos]) if pos < buf.size else np.int64(0))
        pos += 1
    return s, pos, code, rng


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
