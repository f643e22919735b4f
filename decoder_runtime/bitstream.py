"""Bitstream reading: bytes -> architecture, network parameters, latent substreams.

The format is specified in docs/bitstream.md (keep the two in step).  Reading
is defensive: the CRC-32 is checked before anything is parsed, every field is
bounds-checked, every architecture goes through the rules of ``arch.py``, and
nothing is allocated in proportion to a size the file claims before that size
has been checked against the bytes actually present and the decode's memory
bound against the caller's limit (``budget.py``).  Every failure is a
:class:`BitstreamError` naming the problem (:class:`ResourceLimitError` for a
limit the caller can raise).

A file is vetted from its first bytes before it is read
(:func:`check_file_start`): magic, version, header, and its size against the
most a bitstream of that header can hold.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from .arch import (
    ARM_CONTEXT_STEP,
    DEFAULT_MAX_PIXELS,
    FINAL_UPSAMPLING_TYPES,
    FRAME_DATA_TYPES,
    FRAME_TYPES,
    MAX_ARM_CONTEXT,
    MAX_ARM_HIDDEN_LAYERS,
    MAX_IFCE_FEATURES,
    MAX_IMAGE_SIDE,
    MAX_LATENT_LEVEL,
    MAX_SYNTH_CHANNELS,
    MAX_SYNTH_LAYERS,
    DecoderArch,
    SynthesisLayer,
    param_layout,
)
from .budget import check_memory
from .errors import BitstreamError, ConfigError, ResourceLimitError
from .expgolomb import read_network_params

MAGIC = b"Cc"
# Versions written: an image file (one intra frame), a sequence file (frames
# I, P and B; decoder_runtime/sequence.py). Versions 1 and 2 are the same two
# kinds before the stacked IFCE (``arch.ifce_stack``, header flag bit 6); they
# still decode.
# Version 5 adds the direct B frames (decoder_runtime/direct.py) to version 4's sequences.
IMAGE_VERSION = 3
SEQUENCE_VERSION = 5
IMAGE_VERSIONS = (1, IMAGE_VERSION)
SEQUENCE_VERSIONS = (2, 4, SEQUENCE_VERSION)
READABLE_VERSIONS = IMAGE_VERSIONS + SEQUENCE_VERSIONS
IFCE_STACK_VERSIONS = (IMAGE_VERSION, 4, SEQUENCE_VERSION)  # headers that may set flag bit 6
DIRECT_VERSIONS = (SEQUENCE_VERSION,)  # sequences that may hold direct B frames
FLAG_IFCE_STACK = 0x40
MAX_SUBSTREAMS = 64
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


HEADER_PEEK = 4096  # bytes read to parse a header: at most ~230, every varint padded to 5 bytes
# A file with an unreadable header is read whole up to this size (so that
# its error is the reader's own, e.g. a CRC mismatch), refused unread beyond.
SMALL_FILE = 1 << 20
MIN_BYTES = len(MAGIC) + 1 + 4


@dataclass(frozen=True)
class Header:
    """The fields before the parameter section: enough to bound the whole decode."""

    version: int
    frame_type: str
    arch: DecoderArch
    n_substreams: int
    n_bytes: int  # bytes from the magic to the substream count


def check_magic(data: bytes, n_bytes: Optional[int] = None) -> int:
    """Check length, magic and version at the start of a file of ``n_bytes``; return the version."""
    n = len(data) if n_bytes is None else n_bytes
    if n < MIN_BYTES or len(data) < len(MAGIC) + 1:
        raise BitstreamError(f"the file is too short to be a coolchic bitstream ({n} bytes)")
    if data[: len(MAGIC)] != MAGIC:
        # The reference format opens with a big-endian 16-bit header size.
        hint = _REFERENCE_HINT if data[0] == 0 and 0 < data[1] < 128 else ""
        raise BitstreamError(f"not a coolchic bitstream: bad magic {bytes(data[:4])!r}{hint}")
    version = data[len(MAGIC)]
    if version not in READABLE_VERSIONS:
        raise BitstreamError(
            f"unsupported bitstream version {version} (this decoder reads versions "
            f"{', '.join(map(str, sorted(READABLE_VERSIONS)))}: a newer coolchic wrote it)"
        )
    return version


def check_image_magic(data: bytes, n_bytes: Optional[int] = None) -> int:
    """:func:`check_magic` for an image file; a sequence file is refused by name."""
    version = check_magic(data, n_bytes)
    if version in SEQUENCE_VERSIONS:
        raise BitstreamError(f"this file holds a video sequence (format version {version}): decode it with decode_video "
                             "(coolchic-decode writes all its frames)")
    return version


def _read_header(r: _Reader, version: int, max_pixels: Optional[int], inter: bool = False) -> Header:
    """The image header from ``r.pos``; ``inter``: inside a sequence, where P and B frames may occur."""
    start = r.pos
    h = r.varint("image height", 0, MAX_IMAGE_SIDE - 1) + 1
    w = r.varint("image width", 0, MAX_IMAGE_SIDE - 1) + 1
    if max_pixels is not None and h * w > max_pixels:
        raise ResourceLimitError(
            f"the image is {h}x{w} = {h * w} pixels, above the limit of {max_pixels} (raise max_pixels to decode it)"
        )
    fmt = r.byte("frame format")
    bitdepth = (fmt & 0x0F) + 8
    fdt = (fmt >> 4) & 0x03
    ftype = fmt >> 6
    if ftype >= (len(FRAME_TYPES) if inter else 1):
        raise BitstreamError(f"frame type {ftype} is not valid here ({'0 to 2' if inter else 'an image file holds an intra frame, 0'})")
    lo = r.varint("latent resolution low", 0, MAX_LATENT_LEVEL)
    hi = r.varint("latent resolution high", 0, MAX_LATENT_LEVEL)
    hyper = None
    v = r.varint("hyper-latent resolution", 0, MAX_LATENT_LEVEL + 1)
    if v:
        hyper = (v - 1, r.varint("hyper-latent resolution high", 0, MAX_LATENT_LEVEL))
    c = r.varint("ARM context size", 1, MAX_ARM_CONTEXT // ARM_CONTEXT_STEP) * ARM_CONTEXT_STEP
    nl = r.varint("ARM hidden layers", 0, MAX_ARM_HIDDEN_LAYERS)
    ifce, nf = None, 0
    v = r.varint("IFCE resolution", 0, MAX_LATENT_LEVEL + 1)
    if v:
        ifce = (v - 1, r.varint("IFCE resolution high", 0, MAX_LATENT_LEVEL))
        nf = r.varint("IFCE features", 1, MAX_IFCE_FEATURES)
    ups_k = r.varint("upsampling kernel size", 0, 64)
    pre_k = r.varint("pre-concatenation kernel size", 0, 64)
    flags = r.byte("flags")
    fin = (flags >> 4) & 0x03
    reserved = 0x80 if version in IFCE_STACK_VERSIONS else 0xC0
    if fin >= len(FINAL_UPSAMPLING_TYPES) or flags & reserved:
        raise BitstreamError(f"invalid flags byte 0x{flags:02x} (format version {version})")
    seed = r.varint("common randomness seed") if flags & 4 else 0
    n_layers = r.varint("number of synthesis layers", 1, MAX_SYNTH_LAYERS)
    fields = []
    for i in range(n_layers):
        out = r.varint(f"synthesis layer {i} width", 1, MAX_SYNTH_CHANNELS)
        packed = r.varint(f"synthesis layer {i} kernel", 0, 255)
        fields.append((i, out, packed))
    n_sub = r.varint("number of substreams", 1, MAX_SUBSTREAMS)
    # Every architectural rule (arch.py) applies to a header as to a
    # configuration: a header the reader accepts builds a valid graph.
    try:
        layers = []
        for i, out, packed in fields:
            try:
                layers.append(SynthesisLayer(out, packed >> 2, bool(packed & 1), bool(packed & 2)))
            except ConfigError as e:
                raise ConfigError(f"synthesis layer {i}: {e}") from None
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
            ifce_stack=bool(flags & FLAG_IFCE_STACK),
            ups_k_size=ups_k,
            ups_preconcat_k_size=pre_k,
            static_upsampling_kernel=bool(flags & 8),
            layers_synthesis=tuple(layers),
            linear_stabiliser_synth=bool(flags & 2),
            flag_common_randomness=bool(flags & 4),
            common_randomness_seed=seed,
            final_upsampling_type=FINAL_UPSAMPLING_TYPES[fin],
            frame_type=FRAME_TYPES[ftype],
        )
    except ConfigError as e:
        raise BitstreamError(f"the header describes an impossible decoder: {e}") from None
    # Counted as in an image file, from its magic: the bounds below are stated for files.
    return Header(version, FRAME_TYPES[ftype], arch, n_sub, r.pos - start + len(MAGIC) + 1)


def read_header(data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, n_bytes: Optional[int] = None) -> Header:
    """Parse the header at the start of ``data``; the first :data:`HEADER_PEEK` bytes of a file are enough.

    No CRC check (that needs the whole file): :func:`read_bitstream` does it.
    ``n_bytes``: the whole file's size, when ``data`` is only its start.
    """
    version = check_image_magic(data, n_bytes)
    r = _Reader(data, len(data))
    r.pos = len(MAGIC) + 1
    return _read_header(r, version, max_pixels)


# Upper bounds of a well-formed bitstream's parts (docs/bitstream.md):
# a parameter is at most 31 bits of Exp-Golomb code and a sign bit; a latent,
# at most 16 bits of symbol (frequencies are at least 1/2^16) and 34 bits of
# escape (sign, 17 prefix bits, 16 tail bits), with the range coder's
# truncation loss; a substream adds its final flush.
_MAX_PARAM_BITS = 32
_MAX_LATENT_BITS = 64
_SUBSTREAM_SLACK = 16


def max_bitstream_bytes(header: Header) -> int:
    """The most bytes a bitstream with this header can hold: anything longer is not one."""
    arch = header.arch
    specs = param_layout(arch)
    n_params = sum(p.size for p in specs)
    n_fields = len({(p.module, p.kind) for p in specs})
    params = -(-(n_params * _MAX_PARAM_BITS + n_fields * 9) // 8)
    latents = -(-(arch.n_latent_values() * _MAX_LATENT_BITS) // 8)
    framing = header.n_bytes + 5 + 5 * (header.n_substreams - 1) + 4
    return framing + params + latents + _SUBSTREAM_SLACK * header.n_substreams


def check_file_start(data: bytes, n_bytes: int, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                     max_memory: Optional[int] = None) -> int:
    """Vet a file from its first bytes and its size, before reading the rest; return how many bytes to read.

    Refuses another format, a file longer than its header allows
    (:func:`max_bitstream_bytes`) and a decode above ``max_memory``
    (:class:`ResourceLimitError`). A file whose header does not parse is read
    whole only when small (its error is then the reader's own, a CRC
    mismatch for a corrupted file), refused unread otherwise.
    """
    if check_magic(data, n_bytes) in SEQUENCE_VERSIONS:
        from .sequence import check_sequence_start

        return check_sequence_start(data, n_bytes, max_pixels, max_memory)
    try:
        header = read_header(data, max_pixels, n_bytes)
    except ResourceLimitError:
        raise
    except BitstreamError as e:
        if n_bytes <= SMALL_FILE:
            return SMALL_FILE
        raise BitstreamError(f"{e} (the file is {n_bytes} bytes; it is corrupted or not a coolchic bitstream)") from None
    limit = max_bitstream_bytes(header)
    if n_bytes > limit:
        raise BitstreamError(
            f"the file is {n_bytes} bytes, more than a bitstream of this header can hold ({limit} bytes): "
            f"it is corrupted or padded"
        )
    check_memory(header.arch, n_bytes, max_memory, header.n_substreams)
    return limit


def read_bitstream(data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                   max_memory: Optional[int] = None) -> Bitstream:
    """Parse and check a whole bitstream; raise :class:`BitstreamError` if it is not sound.

    ``max_pixels`` and ``max_memory`` (bytes, see :mod:`decoder_runtime.budget`;
    None: no limit) are checked on the header, before the parameter section
    is read: above either, :class:`ResourceLimitError`.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    version = check_image_magic(data)
    check_crc(data, 0, len(data), "the bitstream")
    r = _Reader(data, len(data) - 4)
    r.pos = len(MAGIC) + 1
    return read_frame_body(r, version, max_pixels, max_memory)


def check_crc(data: bytes, start: int, end: int, what: str) -> None:
    """The CRC-32 in ``data[end-4:end]`` against the bytes ``data[start:end-4]``."""
    crc_stored = int.from_bytes(data[end - 4:end], "little")
    if end - start < 4 or zlib.crc32(memoryview(data)[start:end - 4]) != crc_stored:  # a view: no copy
        raise BitstreamError(f"{what} is corrupted or truncated: CRC-32 mismatch")


def read_frame_body(r: _Reader, version: int, max_pixels: Optional[int], max_memory: Optional[int],
                    inter: bool = False, held: int = 0) -> Bitstream:
    """Header, parameters and substreams from ``r.pos`` to ``r.end`` (the CRC already checked);
    ``held``: bytes a sequence decoder keeps beside this frame (:func:`budget.check_memory`)."""
    start = r.pos
    header = _read_header(r, version, max_pixels, inter)
    arch, n_sub = header.arch, header.n_substreams
    n_bytes = r.end + 4 - start + len(MAGIC) + 1  # as an image file: magic, version, ..., CRC
    limit = max_bitstream_bytes(header)
    if n_bytes > limit:
        raise BitstreamError(
            f"the bitstream is {n_bytes} bytes, more than one with this header can hold ({limit} bytes)"
        )
    check_memory(arch, n_bytes, max_memory, n_sub, held)

    n_param = r.varint("parameter section length", 0, r.end - r.pos)
    section = r.take(n_param, "the parameter section")
    lengths = [r.varint(f"substream {s} length", 0, r.end - r.pos) for s in range(n_sub - 1)]
    header_bytes = r.pos - n_param + 4  # framing without the parameter payload, plus the CRC
    subs = [r.take(n, f"substream {s}") for s, n in enumerate(lengths)]
    subs.append(r.take(r.end - r.pos, f"substream {n_sub - 1}"))
    q_params, shifts, counts = read_network_params(section, arch)
    return Bitstream(
        version=version,
        frame_type=header.frame_type,
        arch=arch,
        q_params=q_params,
        shifts=shifts,
        expgol=counts,
        substreams=tuple(subs),
        n_bytes=n_bytes,
        header_bytes=header_bytes,
    )
