"""The networks' rate: the differentiable proxy that training minimises
against the Exp-Golomb bits that the bitstream spends."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from coolchic.decoder_runtime.expgolomb import exp_golomb_nbits
from coolchic.encoder import encode_frame, load_encoder_preset
from coolchic.encoder.nn_rate import NOMINAL_SHIFT, NetworkRateProxy
from coolchic.encoder.presets import decoder_config_to_param, load_decoder_config

from test_encoder_training import image


def test_proxy_value_by_hand():
    w = torch.tensor([0.0, 0.25, -1.0])
    proxy = NetworkRateProxy({"arm.mlp.0.weight": w}, shifts={("arm", "weight"): 2})
    # q = 0, 1, -4: 2 log2(1) + 2 log2(2) + 2 log2(5)
    assert float(proxy()) == pytest.approx(2.0 + 2.0 * math.log2(5.0), rel=1e-6)


def test_proxy_is_exp_golomb_without_its_constant_bits():
    # On |q| = 2^m - 1 the order-0 code spends 2m data bits, 1 stop bit and a sign bit.
    q = np.array([1, -3, 7, 15, -31, 255], dtype=np.int64)
    s = NOMINAL_SHIFT[("synthesis", "weight")]
    w = torch.tensor(q / float(1 << s), dtype=torch.float64)
    proxy = float(NetworkRateProxy({"synthesis.layers.0.weight": w})())
    assert proxy == pytest.approx(exp_golomb_nbits(q, 0) - 2 * q.size, abs=1e-9)


def test_proxy_follows_the_parameters_it_was_given():
    p = torch.nn.Parameter(torch.full((4,), 0.5))
    proxy = NetworkRateProxy({"synthesis.layers.0.bias": p})
    before = float(proxy().detach())
    p.grad = None
    proxy().backward()
    # d/dw 2 log2(1 + w 2^s) = 2^(s+1) / (ln 2 (1 + w 2^s))
    s = NOMINAL_SHIFT[("synthesis", "bias")]
    expected = 2.0 ** (s + 1) / (math.log(2) * (1 + 0.5 * 2**s))
    assert torch.allclose(p.grad, torch.full((4,), expected))
    with torch.no_grad():
        p.mul_(0.5)
    assert float(proxy().detach()) < before


def test_training_with_the_network_rate_spends_fewer_network_bits():
    torch.set_num_threads(1)
    raw = image(48, 64, seed=5)
    param = decoder_config_to_param(load_decoder_config("lop"), {"n_ft_per_res": "1,1,1,1"}, (48, 64))
    preset = load_encoder_preset("debug")
    bits = {}
    for weight in (0.0, 1.0):
        main, final = (dataclasses.replace(p, network_rate_weight=weight, rdoq=False)
                       for p in preset.training_phases)
        # Long enough for the pull on the weights to show through quantization.
        phases = (dataclasses.replace(main, max_itr=150), final)
        res = encode_frame(raw, param, dataclasses.replace(preset, training_phases=phases), 0.02, num_threads=1)
        bits[weight] = res.frame_encoder.coolchic_encoder.get_network_rate()[1]
    assert bits[1.0] < 0.9 * bits[0.0]
