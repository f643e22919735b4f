"""Golden vectors: a committed bitstream whose decoded latents hash to a committed value.

A failure here means the format or the integer model changed: old files would
no longer decode to the same image.  That needs a new IMAGE_VERSION and new
golden files, never a silent update.
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
