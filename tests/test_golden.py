"""Golden vectors: a committed bitstream whose decoded latents hash to a committed value.

A failure here means the format or the integer model changed: old files would
no longer decode to the same image.  That needs a new IMAGE_VERSION (or
SEQUENCE_VERSION, for golden_v2_ipb.cool) and new golden files, never a silent
update.
"""

import hashlib
from pathlib import Path

import numpy as np

from coolchic.decoder_runtime.bitstream import read_bitstream
from coolchic.decoder_runtime.latent_codec import decode_latents
from coolchic.export.bitstream_writer import write_bitstream

from conftest import make_arch, random_int_model

GOLDEN = Path(__file__).parent / "data" / "golden_v1.cool"
LATENTS_SHA256 = "11fe27b143e1a8dc4faeb982888b3baca2c899d442795b5293e29fb49f6f3afc"
PARAMS_SHA256 = "7bd060ed314e45ff6b4bcb907b8a79838d803890456f57eb6720a3be2a1fd800"


def golden_model():
    arch = make_arch(
        size=(20, 36),
        spatial_context_arm=16,
        n_hidden_layers_arm=2,
        ifce_resolution=(0, 1),
        output_feature_ifce=2,
        linear_stabiliser_arm=True,
        hyper_latent_resolution=(3, 3),
        flag_common_randomness=True,
        common_randomness_seed=2024,
    )
    return arch, random_int_model(arch, seed=11)


def _hash(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype="<i4").tobytes())
    return h.hexdigest()


def test_golden_bitstream_decodes_to_pinned_latents():
    bs = read_bitstream(GOLDEN.read_bytes())
    assert _hash(decode_latents(bs)) == LATENTS_SHA256
    assert _hash(bs.q_params[k] for k in sorted(bs.q_params)) == PARAMS_SHA256


def test_encoder_reproduces_golden_bytes():
    arch, (q, shifts, expgol, latents) = golden_model()
    wb = write_bitstream(arch, q, shifts, expgol, latents, n_substreams=2)
    assert wb.data == GOLDEN.read_bytes()


# ---- sequence files (format version 2) ------------------------------------------
GOLDEN_SEQUENCE = Path(__file__).parent / "data" / "golden_v2_ipb.cool"
SEQUENCE_STRUCTURE = ((0, "I", ()), (2, "P", (0,)), (1, "B", (0, 2)))  # decoding order
# Per frame, in decoding order: sha256 of the decoded latents, then of the parameters.
SEQUENCE_SHA256 = {
    0: ("8f2799482c1f5e3a80c22be04da67f371bbc2316e5b8c28edc566c7e95d94db7",
        "ce15ea9c8dc7f7a1e07d6c135b7d300eb75e66095926d92e70654645e5d788b7"),
    2: ("96e016b35f1bb11e13e380307a7cce89d6a4752b36e65097e9395a04008839d5",
        "479d657160a6aee5edb85865eca6d0f9ce4833241ef47b0fa075eef64cba19af"),
    1: ("e2c818b3406ca0e3169353bcdcca886235386c512ec9b6131ce12144706b41cb",
        "93cc209965eb0e7452eef5112b3ca5f5dfc6bc409682ebec02710faa1515df2c"),
}


def golden_sequence():
    """Three 16x32 yuv420 frames, I0 P2 B1, from random integer models (6 KB)."""
    from coolchic.decoder_runtime.coding_structure import FrameSpec
    from coolchic.export.sequence_writer import assemble_sequence, encode_sequence_header, write_sequence_frame

    n_out = {"I": 3, "P": 6, "B": 9}  # residue, then alpha and one motion field per reference, then beta
    sections = []
    for k, (display, ftype, refs) in enumerate(SEQUENCE_STRUCTURE):
        arch = make_arch(size=(16, 32), layers="8-1-linear-relu,X-3-linear-none", n_out=n_out[ftype],
                         frame_type=ftype, frame_data_type="yuv420", latent_resolution=(0, 2),
                         spatial_context_arm=8, n_hidden_layers_arm=1)
        q, shifts, expgol, latents = random_int_model(arch, seed=20 + k, amp=60, shift=6,
                                                      latent_scale=(3.0, 6.0, 9.0))
        spec = FrameSpec(display, ftype, refs, 1 if ftype == "B" else 0)
        sections.append(write_sequence_frame(spec, arch, q, shifts, expgol, latents, 2, 3).data)
    return assemble_sequence(encode_sequence_header(16, 32, "yuv420", 8, 3, (25, 1)), sections)


def test_golden_sequence_decodes_to_pinned_latents():
    from coolchic.decoder_runtime.sequence import index_sequence, read_sequence_frame

    data = GOLDEN_SEQUENCE.read_bytes()
    header, entries = index_sequence(data)
    assert (header.height, header.width, header.frame_data_type, header.bitdepth) == (16, 32, "yuv420", 8)
    assert header.n_frames == 3 and header.fps == (25, 1)
    assert tuple((e.spec.display_index, e.spec.frame_type, e.spec.refs) for e in entries) == SEQUENCE_STRUCTURE
    got = {}
    for e in entries:
        bs = read_sequence_frame(data, header, e)
        got[e.spec.display_index] = (_hash(decode_latents(bs)), _hash(bs.q_params[k] for k in sorted(bs.q_params)))
    assert got == SEQUENCE_SHA256


def test_encoder_reproduces_golden_sequence_bytes():
    assert golden_sequence() == GOLDEN_SEQUENCE.read_bytes()
