"""Golden vectors: a committed bitstream whose decoded latents hash to a committed value.

A failure here means the format or the integer model changed: old files would
no longer decode to the same image.  That needs a new IMAGE_VERSION (or
SEQUENCE_VERSION, for the sequence files) and new golden files, never a silent
update. The files of earlier versions stay: they must still decode.
"""

import hashlib
import zlib
from pathlib import Path

import numpy as np
import pytest

from coolchic.decoder_runtime import decode_video
from coolchic.decoder_runtime.bitstream import read_bitstream
from coolchic.decoder_runtime.latent_codec import decode_latents
from coolchic.export.bitstream_writer import write_bitstream

from conftest import make_arch, random_int_model

GOLDEN_V1 = Path(__file__).parent / "data" / "golden_v1.cool"
LATENTS_SHA256 = "11fe27b143e1a8dc4faeb982888b3baca2c899d442795b5293e29fb49f6f3afc"
PARAMS_SHA256 = "7bd060ed314e45ff6b4bcb907b8a79838d803890456f57eb6720a3be2a1fd800"
# Version 3: the same model with the stacked IFCE (arch.ifce_stack).
GOLDEN = Path(__file__).parent / "data" / "golden_v3.cool"
LATENTS_V3_SHA256 = "2020a954a36b851044e5548bd6c20899a5a6b0d245a3e77fd07b5048c490cd5a"
PARAMS_V3_SHA256 = "381b9a4fa2f5491fdfdc2729ed8a2ee2c60aa47d23638caf553b0efc9dcbffaa"


def golden_model(ifce_stack: bool = True):
    arch = make_arch(
        size=(20, 36),
        spatial_context_arm=16,
        n_hidden_layers_arm=2,
        ifce_resolution=(0, 1),
        output_feature_ifce=2,
        ifce_stack=ifce_stack,
        linear_stabiliser_arm=True,
        hyper_latent_resolution=(3, 3),
        flag_common_randomness=True,
        common_randomness_seed=2024,
    )
    return arch, random_int_model(arch, seed=11)


def _as_version(data: bytes, version: int) -> bytes:
    """``data`` with another version byte, and its CRC made right."""
    body = data[:2] + bytes([version]) + data[3:-4]
    return body + zlib.crc32(body).to_bytes(4, "little")


def _hash(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype="<i4").tobytes())
    return h.hexdigest()


def test_golden_bitstream_decodes_to_pinned_latents():
    bs = read_bitstream(GOLDEN.read_bytes())
    assert bs.version == 3 and bs.arch.ifce_stack
    assert _hash(decode_latents(bs)) == LATENTS_V3_SHA256
    assert _hash(bs.q_params[k] for k in sorted(bs.q_params)) == PARAMS_V3_SHA256


def test_encoder_reproduces_golden_bytes():
    arch, (q, shifts, expgol, latents) = golden_model()
    wb = write_bitstream(arch, q, shifts, expgol, latents, n_substreams=2)
    assert wb.data == GOLDEN.read_bytes()


def test_version_1_golden_still_decodes_to_its_pinned_latents():
    bs = read_bitstream(GOLDEN_V1.read_bytes())
    assert bs.version == 1 and not bs.arch.ifce_stack
    assert _hash(decode_latents(bs)) == LATENTS_SHA256
    assert _hash(bs.q_params[k] for k in sorted(bs.q_params)) == PARAMS_SHA256


def test_version_3_without_the_stacked_ifce_is_version_1_relabelled():
    """Version 3 changed one thing: flag bit 6. A model without the stacked IFCE
    writes version 1's bytes but for the version byte (and so the CRC)."""
    arch, (q, shifts, expgol, latents) = golden_model(ifce_stack=False)
    wb = write_bitstream(arch, q, shifts, expgol, latents, n_substreams=2)
    assert wb.data[2] == 3 and _as_version(wb.data, 1) == GOLDEN_V1.read_bytes()


def test_version_1_refuses_the_stacked_ifce_flag():
    from coolchic.decoder_runtime.errors import BitstreamError

    with pytest.raises(BitstreamError, match=r"invalid flags byte 0x6[0-9a-f] \(format version 1\)"):
        read_bitstream(_as_version(GOLDEN.read_bytes(), 1))


# ---- sequence files (format version 5; versions 4 and 2 still decode) ------------
GOLDEN_SEQUENCE = Path(__file__).parent / "data" / "golden_v5_ipbd.cool"
GOLDEN_SEQUENCE_V4 = Path(__file__).parent / "data" / "golden_v4_ipb.cool"
GOLDEN_SEQUENCE_V2 = Path(__file__).parent / "data" / "golden_v2_ipb.cool"
SEQUENCE_STRUCTURE = ((0, "I", ()), (2, "P", (0,)), (1, "B", (0, 2)))  # decoding order (versions 2 and 4)
# Per frame, in decoding order: sha256 of the decoded latents, then of the parameters.
SEQUENCE_SHA256 = {
    0: ("8f2799482c1f5e3a80c22be04da67f371bbc2316e5b8c28edc566c7e95d94db7",
        "ce15ea9c8dc7f7a1e07d6c135b7d300eb75e66095926d92e70654645e5d788b7"),
    2: ("96e016b35f1bb11e13e380307a7cce89d6a4752b36e65097e9395a04008839d5",
        "479d657160a6aee5edb85865eca6d0f9ce4833241ef47b0fa075eef64cba19af"),
    1: ("e2c818b3406ca0e3169353bcdcca886235386c512ec9b6131ce12144706b41cb",
        "93cc209965eb0e7452eef5112b3ca5f5dfc6bc409682ebec02710faa1515df2c"),
}
# Version 5: the same three frames with frame 2 moved to 4 (and so on), frame 2 a B frame
# with its motion derived from frame 4's towards 0 (future source), then two direct B
# frames, one from each motion source: frame 3 from frame 2's motion towards 4 (past
# source), frame 1 from frame 2's motion towards 0 (future source).
SEQUENCE_STRUCTURE_V5 = ((0, "I", ()), (4, "P", (0,)), (2, "B", (0, 4)), (3, "B", (2, 4)), (1, "B", (0, 2)))
DIRECT_V5 = {3: (5, 1), 1: (2, 0)}  # display index: (blend k of 8, motion source)
DERIVED_V5 = {2: 0}  # display index: motion source


def _golden_sections(structure, n_frames, direct=None, derived=None):
    from coolchic.decoder_runtime.coding_structure import FrameSpec
    from coolchic.decoder_runtime.direct import DirectParams
    from coolchic.export.sequence_writer import write_direct_frame, write_sequence_frame

    n_out = {"I": 3, "P": 6, "B": 9}  # residue, then alpha and one motion field per reference, then beta
    sections = []
    for k, (display, ftype, refs) in enumerate(structure):
        spec = FrameSpec(display, ftype, refs, 1 if ftype == "B" else 0)
        if direct and display in direct:
            sections.append(write_direct_frame(spec, DirectParams(*direct[display]), n_frames))
            continue
        arch = make_arch(size=(16, 32), layers="8-1-linear-relu,X-3-linear-none", n_out=n_out[ftype],
                         frame_type=ftype, frame_data_type="yuv420", latent_resolution=(0, 2),
                         spatial_context_arm=8, n_hidden_layers_arm=1)
        q, shifts, expgol, latents = random_int_model(arch, seed=20 + k, amp=60, shift=6,
                                                      latent_scale=(3.0, 6.0, 9.0))
        sections.append(write_sequence_frame(spec, arch, q, shifts, expgol, latents, 2, n_frames,
                                             motion_source=(derived or {}).get(display)).data)
    return sections


def golden_sequence(structure=SEQUENCE_STRUCTURE_V5, direct=DIRECT_V5, derived=DERIVED_V5):
    """16x32 yuv420 frames from random integer models (the first three: 6 KB), and direct B frames."""
    from coolchic.export.sequence_writer import assemble_sequence, encode_sequence_header

    n = len(structure)
    return assemble_sequence(encode_sequence_header(16, 32, "yuv420", 8, n, (25, 1)),
                             _golden_sections(structure, n, direct, derived))


def _sequence_hashes(data):
    from coolchic.decoder_runtime.sequence import index_sequence, read_sequence_frame

    header, entries = index_sequence(data)
    assert (header.height, header.width, header.frame_data_type, header.bitdepth) == (16, 32, "yuv420", 8)
    assert header.fps == (25, 1)
    got = {}
    for e in entries:
        if e.direct is None:
            bs = read_sequence_frame(data, header, e)
            got[e.spec.display_index] = (_hash(decode_latents(bs)), _hash(bs.q_params[k] for k in sorted(bs.q_params)))
            if e.motion_source is not None:
                got[e.spec.display_index] += (e.motion_source,)
        else:
            got[e.spec.display_index] = (e.direct.beta_k, e.direct.source)
    return tuple((e.spec.display_index, e.spec.frame_type, e.spec.refs) for e in entries), got


@pytest.mark.parametrize("path", [GOLDEN_SEQUENCE_V4, GOLDEN_SEQUENCE_V2], ids=["v4", "v2"])
def test_earlier_golden_sequences_decode_to_pinned_latents(path):
    """Version 4 holds the same frames as version 2 (no stacked IFCE in them):
    both decode to the same pinned latents."""
    structure, got = _sequence_hashes(path.read_bytes())
    assert structure == SEQUENCE_STRUCTURE and got == SEQUENCE_SHA256


def test_golden_sequence_decodes_to_pinned_latents_and_direct_frames():
    """Version 5: its three coded frames are version 4's (the same random models), one of
    them with derived motion, and its direct B frames hold what they were written with."""
    structure, got = _sequence_hashes(GOLDEN_SEQUENCE.read_bytes())
    assert structure == SEQUENCE_STRUCTURE_V5
    assert got == {0: SEQUENCE_SHA256[0], 4: SEQUENCE_SHA256[2], 2: SEQUENCE_SHA256[1] + (DERIVED_V5[2],), **DIRECT_V5}
    frames = list(decode_video(GOLDEN_SEQUENCE.read_bytes()))
    assert [f.image.height for f in frames] == [16] * 5


def test_encoder_reproduces_golden_sequence_bytes():
    assert golden_sequence() == GOLDEN_SEQUENCE.read_bytes()


def test_version_5_without_direct_frames_is_version_4_relabelled():
    """Version 5 added frame types 3 and 4. A sequence with neither writes version 4's bytes
    but for the version byte (and so the header's CRC)."""
    data = golden_sequence(SEQUENCE_STRUCTURE, None, None)
    assert data[2] == 5 and _as_version_header(data, 4) == GOLDEN_SEQUENCE_V4.read_bytes()


def test_version_4_refuses_the_frame_types_of_version_5():
    from coolchic.decoder_runtime.errors import BitstreamError
    from coolchic.decoder_runtime.sequence import index_sequence

    with pytest.raises(BitstreamError, match=r"invalid frame type 4 \(format version 4\)"):
        index_sequence(_as_version_header(GOLDEN_SEQUENCE.read_bytes(), 4))
    direct_only = golden_sequence(derived=None)
    with pytest.raises(BitstreamError, match=r"invalid frame type 3 \(format version 4\)"):
        index_sequence(_as_version_header(direct_only, 4))


def _as_version_header(data: bytes, version: int) -> bytes:
    """A sequence file with another version byte, and its header's CRC made right."""
    from coolchic.decoder_runtime.sequence import read_sequence_header

    n = read_sequence_header(data).n_bytes
    head = data[:2] + bytes([version]) + data[3:n - 4]
    return head + zlib.crc32(head).to_bytes(4, "little") + data[n:]
