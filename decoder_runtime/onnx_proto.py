"""Serialised ONNX models without the ``onnx`` package.

The decoder builds one small graph per bitstream. Importing ``onnx`` (and
protobuf) only to call ``onnx.helper`` costs about 40-60 ms of a decoder
process that must start in well under a second, so this module writes the
few protobuf messages a graph needs directly, in the wire format of
``onnx.proto`` (proto2; field numbers below are those of onnx.proto).
The tests parse its output with ``onnx`` and run ``onnx.checker`` on it.
"""

from __future__ import annotations

import struct
from typing import Iterable, Mapping, Sequence

import numpy as np

_VARINT, _FIXED32, _LEN = 0, 5, 2
_TENSOR_TYPES = {np.dtype(np.float32): 1, np.dtype(np.int64): 7}
# AttributeProto.AttributeType
_ATTR_FLOAT, _ATTR_INT, _ATTR_STRING, _ATTR_INTS = 1, 2, 3, 7


def leb128(v: int) -> bytes:
    """Unsigned LEB128 (protobuf's varint, and the coolchic header's), ``v >= 0``."""
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _varint(v: int) -> bytes:
    return leb128(v & ((1 << 64) - 1))  # negative int64 values are sent as their two's complement


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, v: int) -> bytes:
    return _key(field, _VARINT) + _varint(v)


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(data)) + data


def _str(field: int, s: str) -> bytes:
    return _bytes(field, s.encode())


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto with little-endian ``raw_data``."""
    a = np.asarray(array)
    if a.dtype not in _TENSOR_TYPES:
        raise TypeError(f"initializer {name}: unsupported dtype {a.dtype}")
    out = b"".join(_int(1, d) for d in a.shape)
    out += _int(2, _TENSOR_TYPES[a.dtype]) + _str(8, name)
    return out + _bytes(9, a.astype(a.dtype.newbyteorder("<"), order="C", copy=False).tobytes())


def attribute(name: str, value) -> bytes:
    out = _str(1, name)
    if isinstance(value, float):
        return out + _key(2, _FIXED32) + struct.pack("<f", value) + _int(20, _ATTR_FLOAT)
    if isinstance(value, bool) or not isinstance(value, (int, str, list, tuple)):
        raise TypeError(f"attribute {name}: unsupported value {value!r}")
    if isinstance(value, int):
        return out + _int(3, value) + _int(20, _ATTR_INT)
    if isinstance(value, str):
        return out + _str(4, value) + _int(20, _ATTR_STRING)
    return out + b"".join(_int(8, int(v)) for v in value) + _int(20, _ATTR_INTS)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str, attrs: Mapping) -> bytes:
    out = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    out += _str(3, name) + _str(4, op_type)
    return out + b"".join(_bytes(5, attribute(k, v)) for k, v in sorted(attrs.items()))


def value_info(name: str, shape: Sequence[int], elem_type: int = 1) -> bytes:
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)
    tensor_type = _int(1, elem_type) + _bytes(2, dims)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(
    nodes: Iterable[bytes],
    initializers: Iterable[bytes],
    inputs: Iterable[bytes],
    outputs: Iterable[bytes],
    graph_name: str,
    opset: int,
    ir_version: int,
    producer: str,
) -> bytes:
    """ModelProto bytes from already serialised NodeProto, TensorProto and ValueInfoProto messages."""
    graph = b"".join(_bytes(1, n) for n in nodes) + _str(2, graph_name)
    graph += b"".join(_bytes(5, t) for t in initializers)
    graph += b"".join(_bytes(11, v) for v in inputs) + b"".join(_bytes(12, v) for v in outputs)
    opset_id = _str(1, "") + _int(2, opset)
    return _int(1, ir_version) + _str(2, producer) + _bytes(7, graph) + _bytes(8, opset_id)

