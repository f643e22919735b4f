"""Latent quantizers and noises: forward values and gradients."""

import pytest
import torch

from coolchic.decoder_runtime.errors import ConfigError
from coolchic.encoder.coolchic import CoolChicEncoder, CoolChicEncoderParameter
from coolchic.encoder.quantizer import LATENT_LIMIT, kumaraswamy_noise, quantize, softround

X = torch.tensor([-2.7, -1.5, -0.2, 0.0, 0.3, 0.5, 1.49, 3.9])


def grad_of(fn, x):
    x = x.clone().requires_grad_()
    fn(x).sum().backward()
    return x.grad


def test_softround_limits_and_integers():
    away = X[(X - torch.floor(X) - 0.5).abs() > 0.01]  # x.5 stays x.5, by symmetry
    torch.testing.assert_close(softround(away, 1e-4), torch.round(away), atol=1e-3, rtol=0)
    assert softround(torch.tensor(1.5), 1e-4).item() == pytest.approx(1.5)
    ints = torch.tensor([-3.0, 0.0, 2.0])
    torch.testing.assert_close(softround(ints, 0.3), ints)  # integers are fixed points
    assert torch.allclose(softround(X, 100.0), X, atol=1e-3)  # identity for large t
    # floor(x) + 1/2 + tanh(d/t) / (2 tanh(1/(2t))), d = x - floor(x) - 1/2
    x, t = torch.tensor(0.8), torch.tensor(0.3)
    assert softround(x, t).item() == pytest.approx(0.5 + 0.5 * torch.tanh(0.3 / t).item() / torch.tanh(0.5 / t).item())


def test_hardround_forward_and_zero_gradient():
    assert torch.equal(quantize(X, "none", "hardround"), torch.round(X))
    assert torch.all(grad_of(lambda x: quantize(x, "none", "hardround"), X) == 0)


def test_ste_rounds_forward_and_uses_softround_gradient():
    t = 0.3
    assert torch.equal(quantize(X, "none", "ste", t), torch.round(X))
    g = grad_of(lambda x: quantize(x, "none", "ste", t), X)
    torch.testing.assert_close(g, grad_of(lambda x: softround(x, t), X))
    assert torch.all(g > 0)


def test_softround_alone_is_deterministic():
    a = quantize(X, "none", "softround_alone", 0.3)
    torch.testing.assert_close(a, softround(X, 0.3))
    torch.testing.assert_close(grad_of(lambda x: quantize(x, "none", "softround_alone", 0.3), X),
                               grad_of(lambda x: softround(x, 0.3), X))


def test_softround_with_noise_is_softround_of_noisy_softround():
    torch.manual_seed(3)
    out = quantize(X, "gaussian", "softround", 0.3, 0.2)
    torch.manual_seed(3)
    noise = torch.randn_like(X) * 0.2
    torch.testing.assert_close(out, softround(softround(X, 0.3) + noise, 0.3))
    assert torch.all(grad_of(lambda x: quantize(x, "kumaraswamy", "softround", 0.3, 2.0), X) > 0)


def test_none_adds_noise_with_unit_gradient():
    torch.manual_seed(0)
    y = quantize(X, "kumaraswamy", "none", noise_parameter=1.0)
    assert torch.all((y - X).abs() <= 0.5)
    assert torch.equal(quantize(X, "none", "none"), X)
    assert torch.all(grad_of(lambda x: quantize(x, "gaussian", "none", noise_parameter=0.1), X) == 1)


def test_noise_distributions():
    torch.manual_seed(0)
    u = torch.rand(200000)
    uni = kumaraswamy_noise(u, 1.0)
    torch.testing.assert_close(uni, u - 0.5)  # a = 1: uniform
    peaked = kumaraswamy_noise(u, 3.0)
    assert peaked.min() >= -0.5 and peaked.max() <= 0.5
    assert peaked.abs().mean() < uni.abs().mean() * 0.8  # concentrated around 0
    assert peaked.mean().abs() < 0.02
    g = quantize(torch.zeros(200000), "gaussian", "none", noise_parameter=0.25)
    assert g.std().item() == pytest.approx(0.25, rel=0.02)


def test_unknown_types_raise_config_error():
    with pytest.raises(ConfigError, match="quantizer_type"):
        quantize(X, "none", "floor")
    with pytest.raises(ConfigError, match="quantizer_noise_type"):
        quantize(X, "uniform", "softround")


def test_latents_clamped_to_bitstream_limit_and_ac_max_val():
    cc = CoolChicEncoder(CoolChicEncoderParameter(img_size=(4, 4), latent_resolution=(0, 1)))
    with torch.no_grad():
        cc.latent_grids[0].fill_(1e6)
        cc.latent_grids[1].fill_(-1e6)
    flat = cc.quantized_flat_latents()
    assert flat.max().item() == LATENT_LIMIT and flat.min().item() == -LATENT_LIMIT
    clamped = cc.quantized_flat_latents(AC_MAX_VAL=10)
    assert clamped.max().item() == 11 and clamped.min().item() == -10
    with torch.no_grad():
        cc.latent_grids[0].fill_(0.5 / 16 + 1e-3)
    assert cc.quantized_flat_latents()[-16:].eq(1).all()  # gain 16 then round
