"""Exp-Golomb coding of the network parameters (reading side, and bit counts).

Each module (arm, ifce, upsampling, synthesis) sends its weights and its
biases as integers ``q = round(w / 2^-s)``.  Per module and kind the section
holds the shift ``s`` (5 bits), the Exp-Golomb order ``k`` (4 bits), then
every value of that kind in ``arch.param_layout()`` order: ``EG_k(|q|)``
followed by a sign bit when ``q != 0``.  Bits are packed MSB first; the
section is padded with zeros to a whole byte.  The writer lives in
export/bitstream_writer.py; ``exp_golomb_nbits`` is the rate the encoder's
quantize_model minimises.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from .arch import DecoderArch, modules_to_send, param_layout
from .errors import BitstreamError

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


def module_kinds(arch: DecoderArch, module: str) -> Tuple[str, ...]:
    kinds = {p.kind for p in param_layout(arch) if p.module == module}
    return tuple(k for k in ("weight", "bias") if k in kinds)


class _BitReader:
    def __init__(self, data: bytes):
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > self.bits.size:
            raise BitstreamError("the network parameter section is truncated")
        v = 0
        for b in self.bits[self.pos:self.pos + n]:
            v = (v << 1) | int(b)
        self.pos += n
        return v

    def read_eg(self, k: int) -> int:
        bits, pos, n = self.bits, self.pos, self.bits.size
        z = 0
        while pos < n and bits[pos] == 0:
            z += 1
            pos += 1
            if z > _MAX_PREFIX:
                raise BitstreamError("the network parameter section holds an invalid Exp-Golomb code")
        self.pos = pos
        return self.read(z + k + 1) - (1 << k)


def read_network_params(section: bytes, arch: DecoderArch):
    """Decode the parameter section: integer tensors, shifts and EG orders."""
    specs = param_layout(arch)
    total = sum(p.size for p in specs)
    # Every value costs at least one bit: refuse before allocating anything big.
    if total > 8 * len(section):
        raise BitstreamError(
            f"the architecture has {total} network parameters but their section holds only {len(section)} bytes"
        )
    reader = _BitReader(section)
    q_params: Dict[str, np.ndarray] = {}
    shifts: Dict[Tuple[str, str], int] = {}
    counts: Dict[Tuple[str, str], int] = {}
    for module in modules_to_send(arch):
        for kind in module_kinds(arch, module):
            s = reader.read(SHIFT_BITS)
            k = reader.read(COUNT_BITS)
            if s > MAX_SHIFT or k > MAX_COUNT:
                raise BitstreamError(f"{module} {kind}: quantization shift {s} or Exp-Golomb order {k} out of range")
            shifts[(module, kind)] = s
            counts[(module, kind)] = k
            for p in specs:
                if p.module != module or p.kind != kind:
                    continue
                vals = np.empty(p.size, dtype=np.int32)
                for i in range(p.size):
                    v = reader.read_eg(k)
                    if v > MAX_ABS_VALUE:
                        raise BitstreamError(f"{p.name}: a parameter exceeds the format's bound of {MAX_ABS_VALUE}")
                    if v and reader.read(1):
                        v = -v
                    vals[i] = v
                q_params[p.name] = vals.reshape(p.shape)
    if (len(section) * 8 - reader.pos) >= 8:
        raise BitstreamError("the network parameter section is longer than its parameters")
    return q_params, shifts, counts
