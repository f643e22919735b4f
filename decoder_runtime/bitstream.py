"""Bitstream reading: bytes -> architecture, network parameters, latent substreams.

The format is specified in docs/bitstream.md (keep the two in step).  Reading
is defensive: the CRC-32 is checked before anything is parsed, every field is
bounds-checked, and nothing is allocated in proportion to a size the file
claims before that size has been checked against the bytes actually present.
Every failure is a :class:`BitstreamError` naming the problem.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from .arch import (
    FINAL_UPSAMPLING_TYPES,
    FRAME_DATA_TYPES,
    DecoderArch,
    SynthesisLayer,
)
from .errors import BitstreamError, ConfigError
from .expgolomb import read_network_params

MAGIC = b"Cc"
FORMAT_VERSION = 1
MAX_SUBSTREAMS = 64
DEFAULT_MAX_PIXELS = 1 << 24  # 16.7 Mpixel; decode(max_pixels=...) raises it
FRAME_TYPES = ("I",)
_REFERENCE_HINT = (
    " (it may be a bitstream of the reference Cool-chic, a format this decoder does not read)"
)


@dataclass(frozen=True)
class Bitstream:
    """A parsed bitstream; the latents are still entropy coded in ``substreams``."""

    version: int
    frame_type: str
    arch: DecoderArch
    q_params: Mapping[str, np.ndarray]  # int32, names and shapes of arch.param_layout()
    shifts: Mapping[Tuple[str, str], int]  # (module, kind) -> s, the step is 2^-s
    expgol: Mapping[Tuple[str, str], int]  # (module, kind) -> Exp-Golomb order
    substreams: Tuple[bytes, ...]
    n_bytes: int
    header_bytes: int  # everything but the parameter and latent payloads

    def float_params(self) -> Dict[str, np.ndarray]:
        """Dequantized parameters ``q * 2^-s`` as float32 (exact)."""
        return dequantize(self.q_params, self.shifts)


def dequantize(q_params: Mapping[str, np.ndarray], shifts: Mapping[Tuple[str, str], int]) -> Dict[str, np.ndarray]:
    """``q * 2^-s`` as float32, exact for |q| < 2^24; s is looked up by (module, kind) of the name."""
    out = {}
    for name, q in q_params.items():
        module = name.split(".", 1)[0]
        kind = "bias" if name.endswith("bias") else "weight"
        out[name] = np.asarray(q).astype(np.float32) * np.float32(2.0 ** -shifts[(module, kind)])
    return out


class _Reader:
    def __init__(self, data: bytes, end: int):
        self.data = data
        self.pos = 0
        self.end = end

    def byte(self, what: str) -> int:
        if self.pos >= self.end:
            raise BitstreamError(f"the bitstream is truncated (while reading {what})")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def varint(self, what: str, lo: int = 0, hi: int = (1 << 32) - 1) -> int:
        v, shift = 0, 0
        while True:
            b = self.byte(what)
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 35:
                raise BitstreamError(f"invalid variable-length integer in {what}")
        if not lo <= v <= hi:
            raise BitstreamError(f"{what} is {v}, outside [{lo}, {hi}]")
        return v

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise BitstreamError(f"{what} claims {n} bytes but only {self.end - self.pos} remain")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out


def read_bitstream(data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Bitstream:
    """Parse and check a whole bitstream; raise :class:`BitstreamError` if it is not sound."""
    data = bytes(data)
    if len(data) < len(MAGIC) + 1 + 4:
        raise BitstreamError(f"the file is too short to be a coolchic bitstream ({len(data)} bytes)")
    if data[: len(MAGIC)] != MAGIC:
        # The reference format opens with a big-endian 16-bit header size.
        hint = _REFERENCE_HINT if data[0] == 0 and 0 < data[1] < 128 else ""
        raise BitstreamError(f"not a coolchic bitstream: bad magic {data[:4]!r}{hint}")
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise BitstreamError(f"unsupported bitstream version {version} (this decoder reads version {FORMAT_VERSION})")
    crc_stored = int.from_bytes(data[-4:], "little")
    if zlib.crc32(data[:-4]) != crc_stored:
        raise BitstreamError("the bitstream is corrupted or truncated: CRC-32 mismatch")

    r = _Reader(data, len(data) - 4)
    r.pos = len(MAGIC) + 1
    h = r.varint("image height", 0, (1 << 15) - 1) + 1
    w = r.varint("image width", 0, (1 << 15) - 1) + 1
    if max_pixels is not None and h * w > max_pixels:
        raise BitstreamError(
            f"the image is {h}x{w} = {h * w} pixels, above the limit of {max_pixels} (raise max_pixels to decode it)"
        )
    fmt = r.byte("frame format")
    bitdepth = (fmt & 0x0F) + 8
    fdt = (fmt >> 4) & 0x03
    ftype = fmt >> 6
    if ftype >= len(FRAME_TYPES):
        raise BitstreamError(f"frame type {ftype} is not supported (only intra frames)")
    lo = r.varint("latent resolution low", 0, 12)
    hi = r.varint("latent resolution high", 0, 12)
    hyper = None
    v = r.varint("hyper-latent resolution", 0, 13)
    if v:
        hyper = (v - 1, r.varint("hyper-latent resolution high", 0, 12))
    c = r.varint("ARM context size", 1, 5) * 8
    nl = r.varint("ARM hidden layers", 0, 8)
    ifce, nf = None, 0
    v = r.varint("IFCE resolution", 0, 13)
    if v:
        ifce = (v - 1, r.varint("IFCE resolution high", 0, 12))
        nf = r.varint("IFCE features", 1, 16)
    ups_k = r.varint("upsampling kernel size", 0, 64)
    pre_k = r.varint("pre-concatenation kernel size", 0, 64)
    flags = r.byte("flags")
    fin = (flags >> 4) & 0x03
    if fin >= len(FINAL_UPSAMPLING_TYPES) or flags & 0xC0:
        raise BitstreamError(f"invalid flags byte 0x{flags:02x}")
    seed = r.varint("common randomness seed") if flags & 4 else 0
    n_layers = r.varint("number of synthesis layers", 1, 16)
    layers = []
    for i in range(n_layers):
        out = r.varint(f"synthesis layer {i} width", 1, 256)
        packed = r.varint(f"synthesis layer {i} kernel", 0, 255)
        layers.append(SynthesisLayer(out, packed >> 2, bool(packed & 1), bool(packed & 2)))
    n_sub = r.varint("number of substreams", 1, MAX_SUBSTREAMS)
    try:
        arch = DecoderArch(
            img_size=(h, w),
            frame_data_type=FRAME_DATA_TYPES[fdt],
            bitdepth=bitdepth,
            latent_resolution=(lo, hi),
            hyper_latent_resolution=hyper,
            spatial_context_arm=c,
            n_hidden_layers_arm=nl,
            linear_stabiliser_arm=bool(flags & 1),
            ifce_resolution=ifce,
            output_feature_ifce=nf,
            ups_k_size=ups_k,
            ups_preconcat_k_size=pre_k,
            static_upsampling_kernel=bool(flags & 8),
            layers_synthesis=tuple(layers),
            linear_stabiliser_synth=bool(flags & 2),
            flag_common_randomness=bool(flags & 4),
            common_randomness_seed=seed,
            final_upsampling_type=FINAL_UPSAMPLING_TYPES[fin],
        )
    except ConfigError as e:
        raise BitstreamError(f"the header describes an impossible decoder: {e}") from None

    n_param = r.varint("parameter section length", 0, r.end - r.pos)
    section = r.take(n_param, "the parameter section")
    lengths = [r.varint(f"substream {s} length", 0, r.end - r.pos) for s in range(n_sub - 1)]
    header_bytes = r.pos - n_param + 4  # framing without the parameter payload, plus the CRC
    subs = [r.take(n, f"substream {s}") for s, n in enumerate(lengths)]
    subs.append(r.take(r.end - r.pos, f"substream {n_sub - 1}"))
    q_params, shifts, counts = read_network_params(section, arch)
    return Bitstream(
        version=version,
        frame_type=FRAME_TYPES[ftype],
        arch=arch,
        q_params=q_params,
        shifts=shifts,
        expgol=counts,
        substreams=tuple(subs),
        n_bytes=len(data),
        header_bytes=header_bytes,
    )
