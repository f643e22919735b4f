"""rdoq_model: a greedy pass that never raises the cost it measures."""

import dataclasses

import pytest
import torch

from coolchic.encoder import encode_frame, load_encoder_preset
from coolchic.encoder.frame_encoder import as_frame_data
from coolchic.encoder.presets import decoder_config_to_param, load_decoder_config
from coolchic.encoder.rdoq import rdoq_model
from coolchic.encoder.train import evaluate

from test_encoder_training import image

LMBDA = 0.02  # low rate: the network bits weigh, so moves pay off


@pytest.fixture(scope="module")
def quantized():
    torch.set_num_threads(1)
    raw = image(48, 64, seed=5)
    param = decoder_config_to_param(load_decoder_config("lop"), {"n_ft_per_res": "1,1,1,1"}, (48, 64))
    preset = load_encoder_preset("debug")
    main, final = preset.training_phases
    preset = dataclasses.replace(preset, training_phases=(main, dataclasses.replace(final, rdoq=False)))
    res = encode_frame(raw, param, preset, LMBDA, num_threads=1)
    return res.frame_encoder, as_frame_data(raw, "cpu")


def test_rdoq_lowers_the_cost_and_measures_it_as_evaluate_does(quantized):
    fe, frame = quantized
    before = evaluate(fe, frame, LMBDA)
    nn_before = fe.coolchic_encoder.get_network_rate()[1]
    zeros_before = _zero_parameters(fe.coolchic_encoder)
    res = rdoq_model(fe, frame, LMBDA, seed=1)
    # Parameters at zero are not visited: they stay at zero.
    assert zeros_before and _zero_parameters(fe.coolchic_encoder) >= zeros_before
    after = evaluate(fe, frame, LMBDA)
    assert res["cost_before"] == pytest.approx(float(before.loss), rel=1e-6)
    assert res["cost_after"] == pytest.approx(float(after.loss), rel=1e-6)
    assert float(after.loss) <= float(before.loss)
    assert res["moves"] > 0 and float(after.loss) < float(before.loss)
    assert fe.coolchic_encoder.get_network_rate()[1] != nn_before
    # Every transmitted value is still an integer multiple of its step.
    cc = fe.coolchic_encoder
    for m, kinds in cc.nn_q_step.items():
        for kind, s in kinds.items():
            for name, p in cc.named_transmitted_params(m).items():
                if name.endswith("." + kind):
                    scaled = p.detach().double() * 2.0**s
                    assert torch.equal(scaled, torch.round(scaled))


def _zero_parameters(cc) -> set:
    """(name, flat index) of every transmitted parameter whose integer is 0."""
    return {(name, i) for name, p in cc.named_transmitted_params().items()
            for i, v in enumerate(p.detach().reshape(-1).tolist()) if v == 0.0}


def test_rdoq_needs_a_quantized_model():
    from coolchic.encoder import FrameEncoder
    from coolchic.encoder.presets import decoder_config_to_param as d2p

    fe = FrameEncoder(d2p(load_decoder_config("lop"), None, (16, 16)), "I", "rgb", 8)
    with pytest.raises(ValueError, match="quantize_model"):
        rdoq_model(fe, image(16, 16), LMBDA)


def test_rdoq_stops_at_its_evaluation_cap(quantized):
    from coolchic.encoder.rdoq import MAX_PIXEL_EVALUATIONS, evaluation_cap

    fe, frame = quantized
    state = fe.get_param()
    before = evaluate(fe, frame, LMBDA)
    res = rdoq_model(fe, frame, LMBDA, seed=1, max_evaluations=7)
    assert res["evaluations"] == 7
    assert res["cost_after"] <= res["cost_before"] == pytest.approx(float(before.loss), rel=1e-6)
    fe.set_param(state)
    # The default cap shrinks with the frame: 6 000 evaluations at 512x768, 196 at 12 Mpixel.
    assert evaluation_cap(512 * 768) == 6000 == MAX_PIXEL_EVALUATIONS // (512 * 768)
    assert evaluation_cap(4000 * 3000) == 196
