"""Bitstream writing: architecture + integer parameters + latents -> bytes.

The writing twin of decoder_runtime/bitstream.py, following docs/bitstream.md.
``write_bitstream`` range codes the latents with the decoder's own kernels,
then reads the result back with the runtime's reader and latent decoder and
refuses (EncodeError) to return bytes it cannot decode to the same values.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping, Sequence, Tuple

import numpy as np

from coolchic.decoder_runtime.arch import (
    FINAL_UPSAMPLING_TYPES,
    FRAME_DATA_TYPES,
    FRAME_TYPES,
    DecoderArch,
    modules_to_send,
    param_layout,
)
from coolchic.decoder_runtime.arm_int import build_int_arm
from coolchic.decoder_runtime.bitstream import FLAG_IFCE_STACK, IMAGE_VERSION, MAGIC, MAX_SUBSTREAMS, read_bitstream
from coolchic.decoder_runtime.errors import BitstreamError, EncodeError
from coolchic.decoder_runtime.expgolomb import COUNT_BITS, MAX_ABS_VALUE, MAX_COUNT, MAX_SHIFT, SHIFT_BITS, module_kinds
from coolchic.decoder_runtime.latent_codec import decode_latent_grids
from coolchic.decoder_runtime.onnx_proto import leb128

from .latent_encoder import encode_latent_grids


def varint(v: int) -> bytes:
    if v < 0:
        raise EncodeError(f"cannot write negative value {v} as a varint")
    return leb128(v)


class _BitWriter:
    def __init__(self):
        self.chunks = []  # (value, nbits)
        self.n = 0

    def write(self, value: int, nbits: int) -> None:
        self.chunks.append((value, nbits))
        self.n += nbits

    def write_eg(self, v: int, k: int) -> None:
        x = v + (1 << k)
        length = x.bit_length()
        self.write(0, length - k - 1)
        self.write(x, length)

    def getvalue(self) -> bytes:
        acc = 0
        for value, nbits in self.chunks:
            acc = (acc << nbits) | (value & ((1 << nbits) - 1))
        pad = (-self.n) % 8
        return (acc << pad).to_bytes((self.n + pad) // 8, "big")


def encode_network_params(arch: DecoderArch, q_params: Mapping[str, np.ndarray],
                          shifts: Mapping[Tuple[str, str], int], expgol: Mapping[Tuple[str, str], int]) -> bytes:
    """The parameter section (see decoder_runtime/expgolomb.py for its layout)."""
    specs = param_layout(arch)
    w = _BitWriter()
    for module in modules_to_send(arch):
        for kind in module_kinds(arch, module):
            s, k = int(shifts[(module, kind)]), int(expgol[(module, kind)])
            if not (0 <= s <= MAX_SHIFT and 0 <= k <= MAX_COUNT):
                raise EncodeError(f"{module} {kind}: shift {s} or Exp-Golomb order {k} out of range")
            w.write(s, SHIFT_BITS)
            w.write(k, COUNT_BITS)
            for p in specs:
                if p.module != module or p.kind != kind:
                    continue
                q = np.asarray(q_params[p.name])
                if q.shape != p.shape:
                    raise EncodeError(f"{p.name}: shape {q.shape}, expected {p.shape}")
                for v in q.astype(np.int64).ravel().tolist():
                    if abs(v) > MAX_ABS_VALUE:
                        raise EncodeError(f"{p.name}: value {v} exceeds the format's bound {MAX_ABS_VALUE}")
                    w.write_eg(abs(v), k)
                    if v:
                        w.write(1 if v < 0 else 0, 1)
    return w.getvalue()


def encode_header(arch: DecoderArch, n_substreams: int) -> bytes:
    """An image file's start: magic, version and :func:`encode_arch_header`."""
    return MAGIC + bytes([IMAGE_VERSION]) + encode_arch_header(arch, n_substreams)


def encode_arch_header(arch: DecoderArch, n_substreams: int) -> bytes:
    """The image header, from the image height to the substream count (no magic nor version)."""
    a = arch
    out = bytearray()
    out += varint(a.img_size[0] - 1) + varint(a.img_size[1] - 1)
    out.append((a.bitdepth - 8) | (FRAME_DATA_TYPES.index(a.frame_data_type) << 4)
               | (FRAME_TYPES.index(a.frame_type) << 6))
    out += varint(a.latent_resolution[0]) + varint(a.latent_resolution[1])
    if a.hyper_latent_resolution is None:
        out += varint(0)
    else:
        out += varint(a.hyper_latent_resolution[0] + 1) + varint(a.hyper_latent_resolution[1])
    out += varint(a.spatial_context_arm // 8) + varint(a.n_hidden_layers_arm)
    if a.ifce_resolution is None:
        out += varint(0)
    else:
        out += varint(a.ifce_resolution[0] + 1) + varint(a.ifce_resolution[1]) + varint(a.output_feature_ifce)
    out += varint(a.ups_k_size) + varint(a.ups_preconcat_k_size)
    flags = (
        int(a.linear_stabiliser_arm)
        | int(a.linear_stabiliser_synth) << 1
        | int(a.flag_common_randomness) << 2
        | int(a.static_upsampling_kernel) << 3
        | FINAL_UPSAMPLING_TYPES.index(a.final_upsampling_type) << 4
        | (FLAG_IFCE_STACK if a.ifce_stack else 0)
    )
    out.append(flags)
    if a.flag_common_randomness:
        out += varint(a.common_randomness_seed)
    out += varint(len(a.layers_synthesis))
    for layer in a.layers_synthesis:
        out += varint(layer.out_channels)
        out += varint(layer.kernel_size << 2 | int(layer.residual) | int(layer.relu) << 1)
    out += varint(n_substreams)
    return bytes(out)


@dataclass(frozen=True)
class WrittenBitstream:
    data: bytes
    latent_bytes: int
    param_bytes: int
    header_bytes: int  # magic, header, lengths and CRC
    ideal_latent_bits: float  # sum of -log2 p of the integer model


def encode_frame_body(arch: DecoderArch, q_params: Mapping[str, np.ndarray],
                      shifts: Mapping[Tuple[str, str], int], expgol: Mapping[Tuple[str, str], int],
                      latents: Sequence[np.ndarray], n_substreams: int, prefix: bytes = b"") -> WrittenBitstream:
    """``prefix`` + image header + parameters + substreams + CRC-32 of all that:
    an image file with ``prefix`` = magic and version, a sequence's frame section
    with its frame fields (``decoder_runtime/sequence.py``). Not verified."""
    if not 1 <= n_substreams <= MAX_SUBSTREAMS:
        raise EncodeError(f"n_substreams must be in [1, {MAX_SUBSTREAMS}], got {n_substreams}")
    arm = build_int_arm(arch, q_params, shifts)
    enc = encode_latent_grids(arch, arm, latents, n_substreams)
    params = encode_network_params(arch, q_params, shifts, expgol)
    body = bytearray(prefix)
    body += encode_arch_header(arch, n_substreams)
    body += varint(len(params)) + params
    for s in enc.substreams[:-1]:
        body += varint(len(s))
    for s in enc.substreams:
        body += s
    body += zlib.crc32(bytes(body)).to_bytes(4, "little")
    data = bytes(body)
    latent_bytes = sum(len(s) for s in enc.substreams)
    return WrittenBitstream(data, latent_bytes, len(params), len(data) - latent_bytes - len(params), enc.ideal_bits)


def write_bitstream(arch: DecoderArch, q_params: Mapping[str, np.ndarray], shifts: Mapping[Tuple[str, str], int],
                    expgol: Mapping[Tuple[str, str], int], latents: Sequence[np.ndarray],
                    n_substreams: int = 2, verify: bool = True) -> WrittenBitstream:
    """Serialise a quantized intra frame as an image file; with ``verify`` read it back and compare."""
    if arch.frame_type != "I":
        raise EncodeError(f"an image file holds an intra frame, not a {arch.frame_type} frame (write a sequence)")
    written = encode_frame_body(arch, q_params, shifts, expgol, latents, n_substreams,
                                MAGIC + bytes([IMAGE_VERSION]))
    if verify:
        verify_bitstream(written.data, arch, q_params, latents)
    return written


def verify_bitstream(data, arch: DecoderArch, q_params: Mapping[str, np.ndarray],
                     latents: Sequence[np.ndarray]) -> None:
    """Decode ``data`` (an image file's bytes, or a parsed Bitstream) with the runtime and fail loudly unless it matches."""
    try:
        bs = read_bitstream(data, max_pixels=None) if isinstance(data, (bytes, bytearray)) else data
        decoded = decode_latent_grids(bs.arch, build_int_arm(bs.arch, bs.q_params, bs.shifts), bs.substreams)
    except BitstreamError as e:
        raise EncodeError(f"the bitstream just written does not decode: {e}") from e
    if bs.arch != arch:
        raise EncodeError("the bitstream just written decodes to another architecture")
    for name, q in q_params.items():
        if not np.array_equal(np.asarray(q), bs.q_params[name]):
            raise EncodeError(f"the bitstream just written decodes {name} differently")
    for i, (a, b) in enumerate(zip(latents, decoded)):
        if not np.array_equal(np.asarray(a), b):
            raise EncodeError(f"the bitstream just written decodes latent grid {i} differently")
