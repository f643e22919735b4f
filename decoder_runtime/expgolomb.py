"""Exp-Golomb coding of the network parameters (reading side, and bit counts).

Each module (arm, ifce, upsampling, synthesis) sends its weights and its
biases as integers ``q = round(w / 2^-s)``.  Per module and kind the section
holds the shift ``s`` (5 bits), the Exp-Golomb order ``k`` (4 bits), then
every value of that kind in ``arch.param_layout()`` order: ``EG_k(|q|)``
followed by a sign bit when ``q != 0``.  Bits are packed MSB first; the
section is padded with zeros to a whole byte.  The writer lives in
export/bitstream_writer.py; ``exp_golomb_nbits`` is the rate the encoder's
quantize_model minimises.

The reader never reads past the section, refuses prefixes longer than
``_MAX_PREFIX`` zeros, and its work is bounded by the section's length. Up to
``PY_READER_MAX_VALUES`` (16 384) values it is plain Python (a microsecond a value, no
kernel to compile on a cold cache); beyond, a numba kernel working on the
packed bytes (a crafted section of a megabyte costs milliseconds). Both give
the same outcome on any section. Every failure is a :class:`BitstreamError`.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from .arch import DecoderArch, modules_to_send, param_layout
from .errors import BitstreamError
from .jit import njit

SHIFT_BITS = 5
COUNT_BITS = 4
MAX_SHIFT = 16
MAX_COUNT = 12
MAX_ABS_VALUE = (1 << 15) - 1
_MAX_PREFIX = 20


def exp_golomb_nbits(values: np.ndarray, count: int) -> int:
    """Bits of signed Exp-Golomb codes of order ``count``: ``2*floor(log2(|v|+2^k)) - k + 1`` (+1 sign if v != 0)."""
    a = np.abs(np.asarray(values, dtype=np.int64)).ravel()
    # frexp's exponent is exactly floor(log2(n)) + 1 for integers n >= 1.
    lengths = np.frexp((a + (1 << count)).astype(np.float64))[1] - 1
    return int(np.sum(2 * lengths - count + 1) + np.count_nonzero(a))


def module_bits(arch: DecoderArch, q_params, expgol) -> Dict[str, int]:
    """Bits of each sent module in the parameter section (its per-kind shift and
    order fields included, the final byte padding not): where a file's network rate goes."""
    out = {}
    for module in modules_to_send(arch):
        bits = 0
        for kind in module_kinds(arch, module):
            values = [q_params[p.name] for p in param_layout(arch) if p.module == module and p.kind == kind]
            bits += SHIFT_BITS + COUNT_BITS + exp_golomb_nbits(np.concatenate([np.ravel(v) for v in values]),
                                                              expgol[(module, kind)])
        out[module] = bits
    return out


def module_kinds(arch: DecoderArch, module: str) -> Tuple[str, ...]:
    kinds = {p.kind for p in param_layout(arch) if p.module == module}
    return tuple(k for k in ("weight", "bias") if k in kinds)


# Outcomes of _read_fields.
_OK, _TRUNCATED, _BAD_CODE, _BAD_HEADER, _TOO_BIG = 0, 1, 2, 3, 4


@njit(inline="always")
def _bits(buf, pos, n):
    """The ``n`` bits from bit ``pos`` (MSB first) as an integer; the caller checks the bounds."""
    v = np.int64(0)
    for p in range(pos, pos + n):
        v = (v << 1) | ((np.int64(buf[p >> 3]) >> (7 - (p & 7))) & 1)
    return v


@njit
def _read_fields(buf, field_sizes, out, headers, info):
    """Decode every (module, kind) field of a parameter section.

    ``buf``: the section's bytes (uint8); ``field_sizes[f]``: the number of
    values of field ``f``; ``out`` (int32) receives the values of all fields
    one after the other and ``headers[f]`` (int64) their shift and order.
    Returns an outcome code; ``info`` receives [bit position, field, value
    index]. No bit at or past ``8 * buf.size`` is read, and every read
    consumes a bit: the work is bounded by the section's length.
    """
    n_bits = np.int64(buf.size) * 8
    pos = np.int64(0)
    o = 0
    for f in range(field_sizes.size):
        info[1] = f
        if pos + SHIFT_BITS + COUNT_BITS > n_bits:
            return _TRUNCATED
        s = _bits(buf, pos, SHIFT_BITS)
        k = _bits(buf, pos + SHIFT_BITS, COUNT_BITS)
        pos += SHIFT_BITS + COUNT_BITS
        headers[f, 0] = s
        headers[f, 1] = k
        if s > MAX_SHIFT or k > MAX_COUNT:
            return _BAD_HEADER
        for _ in range(field_sizes[f]):
            z = 0
            while pos < n_bits and ((np.int64(buf[pos >> 3]) >> (7 - (pos & 7))) & 1) == 0:
                z += 1
                pos += 1
                if z > _MAX_PREFIX:
                    return _BAD_CODE
            n = z + k + 1
            if pos + n > n_bits:
                return _TRUNCATED
            v = _bits(buf, pos, n) - (np.int64(1) << k)
            pos += n
            if v > MAX_ABS_VALUE:
                info[2] = o
                return _TOO_BIG
            if v != 0:
                if pos >= n_bits:
                    return _TRUNCATED
                if (np.int64(buf[pos >> 3]) >> (7 - (pos & 7))) & 1:
                    v = -v
                pos += 1
            out[o] = v
            o += 1
    info[0] = pos
    return _OK


def _read_fields_py(buf, field_sizes, out, headers, info):
    """:func:`_read_fields` in plain Python, for the sections of ordinary size.

    Same arguments, outcomes and side effects, bit for bit (the tests run
    both on hostile sections). The bits are a string of '0' and '1': a code's
    prefix is a ``str.find`` and its value an ``int(..., 2)``, a microsecond
    a value, with no kernel to compile on a cold cache.
    """
    data = bytes(buf)
    n_bits = 8 * len(data)
    bits = format(int.from_bytes(data, "big"), f"0{n_bits}b") if n_bits else ""
    pos = 0
    o = 0
    for f in range(len(field_sizes)):
        info[1] = f
        if pos + SHIFT_BITS + COUNT_BITS > n_bits:
            return _TRUNCATED
        s = int(bits[pos:pos + SHIFT_BITS], 2)
        k = int(bits[pos + SHIFT_BITS:pos + SHIFT_BITS + COUNT_BITS], 2)
        pos += SHIFT_BITS + COUNT_BITS
        headers[f, 0] = s
        headers[f, 1] = k
        if s > MAX_SHIFT or k > MAX_COUNT:
            return _BAD_HEADER
        one = 1 << k
        for _ in range(int(field_sizes[f])):
            j = bits.find("1", pos, pos + _MAX_PREFIX + 1)
            if j < 0:
                if pos + _MAX_PREFIX + 1 <= n_bits:
                    return _BAD_CODE  # _MAX_PREFIX + 1 zeros
                return _TRUNCATED  # the zeros run to the end: the code's value bits are missing
            n = j - pos + k + 1
            pos = j
            if pos + n > n_bits:
                return _TRUNCATED
            v = int(bits[pos:pos + n], 2) - one
            pos += n
            if v > MAX_ABS_VALUE:
                info[2] = o
                return _TOO_BIG
            if v != 0:
                if pos >= n_bits:
                    return _TRUNCATED
                if bits[pos] == "1":
                    v = -v
                pos += 1
            out[o] = v
            o += 1
    info[0] = pos
    return _OK


# Sections with more values than this are read by the numba kernel (compiled
# on first use): one to two microseconds a value in Python (at most 30 ms
# here, however the section is crafted), nanoseconds in the kernel. The
# architectures of cfg/dec have 313 (vlop) to 2 458 (vhop).
PY_READER_MAX_VALUES = 1 << 14


def read_network_params(section: bytes, arch: DecoderArch):
    """Decode the parameter section: integer tensors, shifts and EG orders.

    Up to PY_READER_MAX_VALUES values (every architecture of cfg/dec), plain
    Python reads them (a few milliseconds, nothing to compile on a cold
    numba cache); beyond, a numba kernel reads the bits straight from the
    packed bytes: any section, however crafted, costs a few nanoseconds per
    bit it holds.
    """
    specs = param_layout(arch)
    total = sum(p.size for p in specs)
    # Every value costs at least one bit: refuse before allocating anything big.
    if total > 8 * len(section):
        raise BitstreamError(
            f"the architecture has {total} network parameters but their section holds only {len(section)} bytes"
        )
    fields = [(module, kind) for module in modules_to_send(arch) for kind in module_kinds(arch, module)]
    members = [[p for p in specs if (p.module, p.kind) == mk] for mk in fields]
    sizes = np.array([sum(p.size for p in ps) for ps in members], dtype=np.int64)
    values = np.empty(int(sizes.sum()), dtype=np.int32)
    headers = np.zeros((len(fields), 2), dtype=np.int64)
    info = np.zeros(3, dtype=np.int64)
    reader = _read_fields_py if values.size <= PY_READER_MAX_VALUES else _read_fields
    status = reader(np.frombuffer(section, dtype=np.uint8), sizes, values, headers, info)
    if status == _TRUNCATED:
        raise BitstreamError("the network parameter section is truncated")
    if status == _BAD_CODE:
        raise BitstreamError("the network parameter section holds an invalid Exp-Golomb code")
    if status == _BAD_HEADER:
        f = int(info[1])
        module, kind = fields[f]
        raise BitstreamError(
            f"{module} {kind}: quantization shift {int(headers[f, 0])} or Exp-Golomb order {int(headers[f, 1])} "
            f"out of range"
        )
    if status == _TOO_BIG:
        index = int(info[2])
        for p in (p for ps in members for p in ps):
            if index < p.size:
                raise BitstreamError(f"{p.name}: a parameter exceeds the format's bound of {MAX_ABS_VALUE}")
            index -= p.size
    if status != _OK:  # every outcome of the kernel is handled above
        raise BitstreamError(f"the network parameter section could not be read (reader outcome {status})")
    if (len(section) * 8 - int(info[0])) >= 8:
        raise BitstreamError("the network parameter section is longer than its parameters")
    q_params: Dict[str, np.ndarray] = {}
    shifts: Dict[Tuple[str, str], int] = {}
    counts: Dict[Tuple[str, str], int] = {}
    offset = 0
    for f, (mk, ps) in enumerate(zip(fields, members)):
        shifts[mk] = int(headers[f, 0])
        counts[mk] = int(headers[f, 1])
        for p in ps:
            q_params[p.name] = values[offset:offset + p.size].reshape(p.shape)
            offset += p.size
    return q_params, shifts, counts
