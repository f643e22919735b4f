"""Sequence files (format version 5, and 4 and 2 before it): reading the frames of a video.

Layout (docs/bitstream.md, "Sequence files"): magic ``Cc``, version 5 (or 4 or
2), the sequence header (size, format, frame count, frame rate) and its CRC-32,
then one section per frame in decoding order, each ``varint length`` + body. A
body holds the frame's display index, type and references, then an image
header, parameters and latent substreams exactly as an image file's, and ends
with the CRC-32 of the body. A direct B frame's body (type 3, version 5) holds
its blend weight and motion source instead of an image; a B frame with derived
motion (type 4, version 5) its motion source before its image (``direct.py``).
Lengths let a reader index the file without parsing the frames
(:func:`index_sequence`) and seek to any of them; each frame is checked on its
own (:func:`read_sequence_frame`, :func:`read_direct_frame`).

The writer is ``export/sequence_writer.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

from .arch import FRAME_DATA_TYPES, FRAME_TYPES, MAX_IMAGE_SIDE, N_REFERENCES
from .bitstream import (
    DIRECT_VERSIONS,
    HEADER_PEEK,
    MAGIC,
    SEQUENCE_VERSION,
    SEQUENCE_VERSIONS,
    Bitstream,
    _read_header,
    _Reader,
    check_crc,
    check_magic,
    max_bitstream_bytes,
    read_frame_body,
)
from .coding_structure import FrameSpec, check_structure
from .direct import DIRECT_BETA_STEPS, SOURCE_NAMES, DirectParams
from .errors import BitstreamError, ConfigError, ResourceLimitError

MAX_FRAMES = 1 << 16
# Decoding a sequence reads the whole file: refuse, unread, a file (or pipe)
# beyond this size.
MAX_SEQUENCE_BYTES = 1 << 31
DIRECT_FRAME_TYPE = 3  # the type byte of a direct B frame's section (version 5)
DERIVED_MOTION_FRAME_TYPE = 4  # the type byte of a B frame with derived motion (version 5)


@dataclass(frozen=True)
class SequenceHeader:
    height: int
    width: int
    frame_data_type: str
    bitdepth: int
    n_frames: int
    fps: Optional[Tuple[int, int]]  # numerator, denominator; None when not known
    n_bytes: int  # magic to the header's CRC, included
    version: int = SEQUENCE_VERSION  # format version (bitstream.SEQUENCE_VERSIONS): what the frames' headers may hold


@dataclass(frozen=True)
class FrameEntry:
    """Where a frame section's body lies in the file, and what it says about the frame."""

    spec: FrameSpec
    start: int  # first byte of the body (display index)
    header_start: int  # first byte of its image header (of its CRC for a direct B frame)
    end: int  # one past its CRC
    direct: Optional[DirectParams] = None  # a direct B frame's fields; None for a frame with an image
    motion_source: Optional[int] = None  # a B frame with derived motion: its source (direct.SOURCE_*)


def _read_sequence_header(data: bytes, max_pixels: Optional[int]) -> SequenceHeader:
    version = check_magic(data)
    if version not in SEQUENCE_VERSIONS:
        raise BitstreamError("this file holds one image, not a video sequence: decode it with decode")
    r = _Reader(data, len(data))
    r.pos = len(MAGIC) + 1
    h = r.varint("sequence height", 0, MAX_IMAGE_SIDE - 1) + 1
    w = r.varint("sequence width", 0, MAX_IMAGE_SIDE - 1) + 1
    fmt = r.byte("sequence format")
    if fmt >> 6 or (fmt >> 4) & 3 >= len(FRAME_DATA_TYPES) or (fmt & 0x0F) > 8:
        raise BitstreamError(f"invalid sequence format byte 0x{fmt:02x}")
    n = r.varint("frame count", 1, MAX_FRAMES)
    num = r.varint("frame rate numerator", 0, 1 << 20)
    den = r.varint("frame rate denominator", 1, 1 << 20)
    if r.pos + 4 > len(data):
        raise BitstreamError("the sequence header is truncated")
    check_crc(data, 0, r.pos + 4, "the sequence header")
    if max_pixels is not None and h * w > max_pixels:
        raise ResourceLimitError(
            f"the frames are {h}x{w} = {h * w} pixels, above the limit of {max_pixels} (raise max_pixels to decode them)"
        )
    fdt = FRAME_DATA_TYPES[(fmt >> 4) & 3]
    if fdt == "yuv420" and (h % 2 or w % 2):
        raise BitstreamError(f"a yuv420 sequence needs an even size, the header says {h}x{w}")
    return SequenceHeader(h, w, fdt, (fmt & 0x0F) + 8, n, (num, den) if num else None, r.pos + 4, version)


def read_sequence_header(data: bytes, max_pixels: Optional[int] = None) -> SequenceHeader:
    """The sequence header at the start of ``data`` (its first few dozen bytes are enough)."""
    return _read_sequence_header(bytes(data), max_pixels)


def index_sequence(data: bytes, max_pixels: Optional[int] = None) -> Tuple[SequenceHeader, Tuple[FrameEntry, ...]]:
    """The header and every frame section's place and fields, in decoding order.

    Checks that the sections fill the file exactly, that there are as many as
    the header says, and that the coding structure is sound
    (``coding_structure.check_structure``: each display index once, each
    reference decoded before it is used). Frame payloads are not parsed.
    """
    header = _read_sequence_header(data, max_pixels)
    r = _Reader(data, len(data))
    r.pos = header.n_bytes
    entries = []
    while r.pos < len(data):
        k = len(entries)
        if k >= header.n_frames:
            raise BitstreamError(f"the file goes on after the {header.n_frames} frames its header announces")
        length = r.varint(f"frame section {k} length", 0, r.end - r.pos)
        entries.append(frame_entry(data, r.pos, r.pos + length, header.n_frames, k, header.version))
        r.pos += length
    return header, _checked(header, entries)


def index_sequence_file(f, max_pixels: Optional[int] = None) -> Tuple[SequenceHeader, Tuple[FrameEntry, ...]]:
    """:func:`index_sequence` on an open binary file, reading only the start of each section.

    Entries hold file offsets. A section longer than its own image header
    allows (``bitstream.max_bitstream_bytes``) is refused before it is read,
    so that no allocation follows a size the file merely claims.
    """
    header = _read_sequence_header(f.read(HEADER_PEEK), max_pixels)
    f.seek(header.n_bytes)
    entries = []
    pos = header.n_bytes
    while True:
        k = len(entries)
        first = f.read(1)
        if not first:
            break
        if k >= header.n_frames:
            raise BitstreamError(f"the file goes on after the {header.n_frames} frames its header announces")
        raw = bytearray(first)
        while raw[-1] & 0x80 and len(raw) < 5:
            b = f.read(1)
            if not b:
                raise BitstreamError(f"the bitstream is truncated (while reading frame section {k} length)")
            raw += b
        length = _Reader(bytes(raw), len(raw)).varint(f"frame section {k} length")
        start = pos + len(raw)
        peek = f.read(min(length, HEADER_PEEK))
        short = BitstreamError(f"frame section {k} claims {length} bytes but the file ends before")
        try:
            e = frame_entry(peek, 0, len(peek), header.n_frames, k, header.version)
            image = None
            if e.direct is None:  # a direct B frame's section is all read: frame_entry checked its length
                r = _Reader(peek, len(peek))
                r.pos = e.header_start
                image = _read_header(r, header.version, max_pixels, inter=True)
        except BitstreamError as err:
            if len(peek) < min(length, HEADER_PEEK):
                raise short from None
            raise BitstreamError(f"frame section {k}: {err}") from None
        bound = e.header_start + max_bitstream_bytes(image) - len(MAGIC) - 1 if image is not None else length
        if length > bound:
            raise BitstreamError(f"frame section {k} claims {length} bytes, more than its header allows ({bound})")
        if len(peek) < min(length, HEADER_PEEK):
            raise short
        if length:
            f.seek(start + length - 1)  # the section's last byte must be there
            if not f.read(1):
                raise short
        entries.append(dataclasses.replace(e, start=start, header_start=start + e.header_start, end=start + length))
        pos = start + length
        f.seek(pos)
    return header, _checked(header, entries)


def _checked(header: SequenceHeader, entries) -> Tuple[FrameEntry, ...]:
    if len(entries) != header.n_frames:
        raise BitstreamError(
            f"the header announces {header.n_frames} frames but the file holds {len(entries)} frame sections "
            f"(it is truncated or corrupted)"
        )
    try:
        check_structure([_with_depth(e.spec) for e in entries], header.n_frames)
    except ConfigError as e:
        raise BitstreamError(f"the coding structure of the sequence is invalid: {e}") from None
    return tuple(entries)


def frame_entry(data: bytes, start: int, end: int, n_frames: int, k: int = 0,
                version: int = SEQUENCE_VERSION) -> FrameEntry:
    """The frame fields of the section body ``data[start:end]`` (the ``k``-th section, for
    messages) in a sequence of format ``version``. A direct B frame's body must end with
    its CRC right after its fields."""
    f = _Reader(data, end)
    f.pos = start
    display = f.varint(f"frame section {k} display index", 0, n_frames - 1)
    t = f.byte(f"frame section {k} type")
    direct = t == DIRECT_FRAME_TYPE and version in DIRECT_VERSIONS
    derived = t == DERIVED_MOTION_FRAME_TYPE and version in DIRECT_VERSIONS
    if t >= len(FRAME_TYPES) and not (direct or derived):
        raise BitstreamError(f"frame section {k}: invalid frame type {t} (format version {version})")
    ftype = "B" if direct or derived else FRAME_TYPES[t]
    refs = tuple(f.varint(f"frame section {k} reference {i}", 0, n_frames - 1) for i in range(N_REFERENCES[ftype]))
    params, source = None, None
    if derived:
        source = f.byte(f"frame section {k} motion source")
        if source >= len(SOURCE_NAMES):
            raise BitstreamError(f"frame section {k}: invalid motion source {source}")
    if direct:
        beta_k = f.byte(f"frame section {k} blend weight")
        d_source = f.byte(f"frame section {k} motion source")
        if beta_k > DIRECT_BETA_STEPS or d_source >= len(SOURCE_NAMES):
            raise BitstreamError(f"frame section {k}: invalid direct B frame fields (blend {beta_k}, source {d_source})")
        if end - f.pos != 4:
            raise BitstreamError(f"frame section {k}: a direct B frame's section holds {end - start} bytes, "
                                 f"expected {f.pos + 4 - start}")
        params = DirectParams(beta_k, d_source)
    return FrameEntry(FrameSpec(display, ftype, refs, 0), start, f.pos, end, params, source)


def section_entry(section: bytes, n_frames: int, version: int = SEQUENCE_VERSION) -> FrameEntry:
    """The entry of one standalone frame section (``varint length`` + body), as the writer makes it."""
    r = _Reader(section, len(section))
    length = r.varint("frame section length", 0, len(section) - r.pos)
    if r.pos + length != len(section):
        raise BitstreamError("the frame section's length does not match its bytes")
    return frame_entry(section, r.pos, r.pos + length, n_frames, version=version)


def _with_depth(spec: FrameSpec) -> FrameSpec:
    # The depth is an encoder choice (lambda), not in the file: 1 passes check_structure's rule for B frames.
    return spec if spec.frame_type != "B" else FrameSpec(spec.display_index, "B", spec.refs, 1)


def read_direct_frame(data: bytes, entry: FrameEntry) -> DirectParams:
    """Check a direct B frame's section (its CRC); its fields, read by :func:`frame_entry`."""
    if entry.direct is None:
        raise BitstreamError(f"frame {entry.spec.display_index} is not a direct B frame")
    check_crc(data, entry.start, entry.end, f"the section of frame {entry.spec.display_index}")
    return entry.direct


def read_sequence_frame(data: bytes, header: SequenceHeader, entry: FrameEntry,
                        max_memory: Optional[int] = None, held: int = 0) -> Bitstream:
    """Parse and check one frame section; its image header must agree with the sequence's.
    ``max_memory`` bounds the frame's decode together with the ``held`` bytes the decoder keeps
    of earlier frames."""
    k = f"frame {entry.spec.display_index}"
    if entry.direct is not None:
        raise BitstreamError(f"{k} is a direct B frame: it holds no image (read_direct_frame)")
    check_crc(data, entry.start, entry.end, f"the section of {k}")
    r = _Reader(data, entry.end - 4)
    r.pos = entry.header_start
    try:
        bs = read_frame_body(r, header.version, None, max_memory, inter=True, held=held)
    except ResourceLimitError:
        raise
    except BitstreamError as e:
        raise BitstreamError(f"{k}: {e}") from None
    a = bs.arch
    if a.img_size != (header.height, header.width) or a.frame_data_type != header.frame_data_type \
            or a.bitdepth != header.bitdepth:
        raise BitstreamError(
            f"{k} is a {a.img_size[0]}x{a.img_size[1]} {a.frame_data_type} {a.bitdepth}-bit frame in a "
            f"{header.height}x{header.width} {header.frame_data_type} {header.bitdepth}-bit sequence"
        )
    if a.frame_type != entry.spec.frame_type:
        raise BitstreamError(f"{k}: its section says {entry.spec.frame_type} but its header {a.frame_type}")
    return bs


def check_sequence_start(prefix: bytes, n_bytes: int, max_pixels: Optional[int] = None,
                         max_memory: Optional[int] = None) -> int:
    """Vet a sequence file from its first bytes; return how many bytes to read at most."""
    _read_sequence_header(bytes(prefix), max_pixels)
    if n_bytes > MAX_SEQUENCE_BYTES:
        raise ResourceLimitError(f"the sequence file is {n_bytes} bytes, above the {MAX_SEQUENCE_BYTES} this decoder reads")
    return MAX_SEQUENCE_BYTES
