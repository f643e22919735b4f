"""Sequence files (format version 5): the writing twin of
``decoder_runtime/sequence.py``, which gives the layout.

A frame section is written by :func:`write_sequence_frame` (a direct B frame's
by :func:`write_direct_frame`) as soon as its frame is coded (its bytes go into
the encoder's resume directory), then read back with the runtime's reader and
latent decoder; :func:`assemble_sequence` puts the header and the sections
together.
"""

from __future__ import annotations

import zlib
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from coolchic.decoder_runtime.arch import FRAME_DATA_TYPES, FRAME_TYPES, DecoderArch
from coolchic.decoder_runtime.bitstream import MAGIC, SEQUENCE_VERSION
from coolchic.decoder_runtime.coding_structure import FrameSpec
from coolchic.decoder_runtime.direct import DirectParams
from coolchic.decoder_runtime.errors import BitstreamError, EncodeError
from coolchic.decoder_runtime.sequence import (
    DERIVED_MOTION_FRAME_TYPE,
    DIRECT_FRAME_TYPE,
    SequenceHeader,
    read_direct_frame,
    read_sequence_frame,
    section_entry,
)

from .bitstream_writer import WrittenBitstream, encode_frame_body, varint, verify_bitstream


def encode_sequence_header(height: int, width: int, frame_data_type: str, bitdepth: int, n_frames: int,
                           fps: Optional[Tuple[int, int]] = None) -> bytes:
    out = bytearray(MAGIC)
    out.append(SEQUENCE_VERSION)
    out += varint(height - 1) + varint(width - 1)
    out.append((bitdepth - 8) | (FRAME_DATA_TYPES.index(frame_data_type) << 4))
    out += varint(n_frames)
    num, den = fps if fps else (0, 1)
    out += varint(num) + varint(den)
    out += zlib.crc32(bytes(out)).to_bytes(4, "little")
    return bytes(out)


def frame_prefix(spec: FrameSpec, direct: bool = False, motion_source: Optional[int] = None) -> bytes:
    """The frame fields at the start of a section's body: display index, type, references
    (then, for a B frame with derived motion, its motion source)."""
    out = bytearray(varint(spec.display_index))
    if direct:
        out.append(DIRECT_FRAME_TYPE)
    elif motion_source is not None:
        out.append(DERIVED_MOTION_FRAME_TYPE)
    else:
        out.append(FRAME_TYPES.index(spec.frame_type))
    for r in spec.refs:
        out += varint(r)
    if motion_source is not None and not direct:
        out.append(motion_source)
    return bytes(out)


def write_direct_frame(spec: FrameSpec, params: DirectParams, n_frames: int) -> bytes:
    """The section of a direct B frame (``varint length`` + body), read back before it is returned."""
    if spec.frame_type != "B":
        raise EncodeError(f"frame {spec.display_index} is {spec.frame_type}: only a B frame may be direct")
    body = frame_prefix(spec, direct=True) + bytes([params.beta_k, params.source])
    body += zlib.crc32(body).to_bytes(4, "little")
    section = varint(len(body)) + body
    try:
        entry = section_entry(section, n_frames)
        if (entry.spec.display_index, entry.spec.refs, read_direct_frame(section, entry)) != (
                spec.display_index, spec.refs, params):
            raise BitstreamError("its fields read back differently")
    except BitstreamError as e:
        raise EncodeError(f"the direct frame section just written does not decode: {e}") from e
    return section


def write_sequence_frame(spec: FrameSpec, arch: DecoderArch, q_params: Mapping[str, np.ndarray],
                         shifts: Mapping[Tuple[str, str], int], expgol: Mapping[Tuple[str, str], int],
                         latents: Sequence[np.ndarray], n_substreams: int, n_frames: int,
                         verify: bool = True, motion_source: Optional[int] = None) -> WrittenBitstream:
    """The section of one frame (``varint length`` + body); ``data`` is the whole section.
    ``motion_source``: a B frame with derived motion (``decoder_runtime/direct.py``)."""
    if arch.frame_type != spec.frame_type:
        raise EncodeError(f"frame {spec.display_index} is {spec.frame_type} but its decoder is {arch.frame_type}")
    if motion_source is not None and spec.frame_type != "B":
        raise EncodeError(f"frame {spec.display_index} is {spec.frame_type}: only a B frame may derive its motion")
    body = encode_frame_body(arch, q_params, shifts, expgol, latents, n_substreams,
                             frame_prefix(spec, motion_source=motion_source))
    head = varint(len(body.data))
    section = head + body.data
    if verify:
        h, w = arch.img_size
        header = SequenceHeader(h, w, arch.frame_data_type, arch.bitdepth, n_frames, None, 0)
        try:
            entry = section_entry(section, n_frames)
            if (entry.spec.display_index, entry.spec.frame_type, entry.spec.refs, entry.motion_source) != (
                    spec.display_index, spec.frame_type, spec.refs, motion_source):
                raise BitstreamError("its frame fields read back differently")
            bs = read_sequence_frame(section, header, entry)
        except BitstreamError as e:
            raise EncodeError(f"the frame section just written does not decode: {e}") from e
        verify_bitstream(bs, arch, q_params, latents)
    return WrittenBitstream(section, body.latent_bytes, body.param_bytes, body.header_bytes + len(head),
                            body.ideal_latent_bits)


def assemble_sequence(header: bytes, sections: Sequence[bytes]) -> bytes:
    """The sequence file: its header then the frame sections in decoding order."""
    return header + b"".join(sections)
