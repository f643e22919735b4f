"""The integer entropy model tracks the float model the encoder trains with.

On a trained model, the integer ARM's (mu, scale index) stay within the
quantization grid of the float ARM's (mu, ln b), and the coded size of the
latents stays close to the training-side (float Laplace) rate.
"""

import numpy as np
import pytest
import torch

from coolchic.decoder_runtime.arm_int import build_int_arm
from coolchic.decoder_runtime.latent_codec import context_arrays, grid_features
from coolchic.encoder import arm_float_outputs, encode_frame, export_state, float_rate_per_grid, load_encoder_preset
from coolchic.encoder.presets import decoder_config_to_param, load_decoder_config
from coolchic.export.bitstream_writer import write_bitstream
from coolchic.export.latent_encoder import _grid_arm

from test_encoder_training import image


@pytest.fixture(scope="module", params=[{"ifce_stack": "false", "hyper_latent_resolution": "none"},
                                        {"ifce_stack": "true", "hyper_latent_resolution": "2-3"}],
                ids=["ifce", "stacked_ifce_hyper"])
def trained(request):
    torch.set_num_threads(1)
    raw = image(48, 64, seed=3)
    param = decoder_config_to_param(load_decoder_config("mop"), {"n_ft_per_res": "1,1,1,1", **request.param},
                                    (48, 64))
    res = encode_frame(raw, param, load_encoder_preset("debug"), 1e-3, num_threads=1)
    return res.frame_encoder


def test_integer_arm_follows_float_arm(trained):
    st = export_state(trained)
    arm = build_int_arm(st.arch, st.q_params, st.shifts)
    ctx = context_arrays(st.arch)
    decoded = []
    for g, y, (mu_f, lnb_f) in zip(st.arch.coded_grids(), st.latents, arm_float_outputs(trained)):
        n = g.h * g.w
        mu, frac, k = (np.empty(n, dtype=np.int64) for _ in range(3))
        _grid_arm(y, np.array([[0, g.h]]), grid_features(st.arch, arm, g, decoded), ctx, arm.net64, mu, frac, k)
        decoded.append(y)
        mu_int = mu + frac / 16
        # 1/32 from rounding mu to 1/16, plus the fixed-point activations' error.
        assert np.max(np.abs(mu_int - mu_f.ravel())) < 1 / 32 + 0.02
        lnb = np.clip(lnb_f.ravel(), -4.5, 4.0)
        assert np.max(np.abs((-4.5 + k / 8) - lnb)) < 1 / 16 + 0.02


def test_coded_size_close_to_float_rate(trained):
    st = export_state(trained)
    wb = write_bitstream(st.arch, st.q_params, st.shifts, st.expgol, st.latents, n_substreams=1)
    float_bits = sum(float_rate_per_grid(trained))
    assert wb.ideal_latent_bits == pytest.approx(float_bits, rel=0.03)
    # The range coder adds a few bytes of termination at most, on top of the integer model.
    assert wb.latent_bytes * 8 <= wb.ideal_latent_bits * 1.005 + 16
