"""The training recipe's optimizer and schedules: hand-computed values."""

import math

import pytest
import torch

from coolchic.encoder import load_encoder_preset
from coolchic.encoder.optim import (
    GRAD_CLIP_NORM,
    LR_MIN,
    NETWORK_WEIGHT_DECAY,
    cosine_lr,
    linear_schedule,
    make_optimizer,
    warmup_noise_level,
)
from coolchic.encoder.quantizer import encoder_gain_for_lambda

LR = 0.1
B2 = 0.95


def _sign_like(x: torch.Tensor) -> torch.Tensor:
    """What one bias-corrected Adam step of gradient x moves (before the lr)."""
    s = math.sqrt(1 - B2)
    return s * x / (s * x.abs() + 1e-8)


def test_soap_step_is_adam_in_the_preconditioner_eigenbasis():
    # First gradient G1 = R diag(2, 1) R^T: its preconditioners L = G1 G1^T and
    # R = G1^T G1 both have the eigenbasis R (45 degree rotation).
    c = math.sqrt(0.5)
    rot = torch.tensor([[c, -c], [c, c]], dtype=torch.float64)
    g1 = rot @ torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)) @ rot.T
    core = torch.tensor([[1.0, 0.5], [0.0, -2.0]], dtype=torch.float64)
    g2 = rot @ core @ rot.T

    w = torch.nn.Parameter(torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64))
    lat = torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))
    opt = make_optimizer([w], [lat], LR)

    w.grad, lat.grad = g1.clone(), torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt.step()  # builds the preconditioners only
    assert torch.equal(w.detach(), torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64))
    assert torch.equal(lat.detach(), torch.tensor([0.5, -1.0], dtype=torch.float64))

    w0 = w.detach().clone()
    w.grad, lat.grad = g2.clone(), torch.tensor([0.2, -3.0], dtype=torch.float64)
    opt.step()
    # Adam in the rotated basis: the update is R sign(core) R^T, not sign(G2).
    expected_w = (w0 - LR * rot @ _sign_like(core) @ rot.T) * (1 - LR * NETWORK_WEIGHT_DECAY)
    # (the eigenbasis is computed in float32)
    torch.testing.assert_close(w.detach(), expected_w, rtol=0, atol=1e-7)
    assert not torch.allclose(w.detach(), (w0 - LR * _sign_like(g2)) * (1 - LR * NETWORK_WEIGHT_DECAY))
    # Latents: plain Adam (betas 0.9, 0.999), no weight decay.
    s = math.sqrt(1 - 0.999)
    g = torch.tensor([0.2, -3.0], dtype=torch.float64)
    expected_lat = torch.tensor([0.5, -1.0], dtype=torch.float64) - LR * s * g / (s * g.abs() + 1e-8)
    torch.testing.assert_close(lat.detach(), expected_lat, rtol=0, atol=1e-12)


def test_fast_soap_steps_exactly_as_pytorch_optimizers_soap():
    """The foreach path for tensors without a preconditioner changes no bit."""
    from pytorch_optimizer import SOAP

    from coolchic.encoder.optim import _soap_class

    def run(cls):
        gen = torch.Generator().manual_seed(3)
        shapes = [(16, 20), (16,), (3, 16, 1, 1), (3, 3, 3, 3), (4,), (4,)]
        net = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
        lat = [torch.nn.Parameter(torch.randn(1, 1, 8, 8, generator=gen)), torch.nn.Parameter(torch.randn(3, 5, generator=gen))]
        groups = [dict(params=net, lr=1e-2, betas=(0.95, 0.95), precondition_frequency=3, max_precondition_dim=256,
                       weight_decay=0.01),
                  dict(params=lat, lr=1e-2, betas=(0.9, 0.999), precondition_frequency=1, max_precondition_dim=0,
                       weight_decay=0.0)]
        opt = cls(groups, lr=1e-2, merge_dims=False, precondition_1d=False)
        start = [p.detach().clone() for p in net + lat]
        for _ in range(12):
            for p in net + lat:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        assert all(not torch.equal(a, p.detach()) for a, p in zip(start, net + lat))  # every tensor moved
        return [p.detach() for p in net + lat], opt

    ref, ref_opt = run(SOAP)
    fast, fast_opt = run(_soap_class())
    assert all(torch.equal(a, b) for a, b in zip(ref, fast))
    assert [g["step"] for g in fast_opt.param_groups] == [g["step"] for g in ref_opt.param_groups] == [12, 12]


def test_cosine_and_linear_schedules_at_phase_boundaries():
    assert cosine_lr(1e-2, 0.0) == 1e-2
    assert cosine_lr(1e-2, 1.0) == pytest.approx(LR_MIN, abs=1e-15)
    assert cosine_lr(1e-2, 0.5) == pytest.approx((1e-2 + LR_MIN) / 2)
    assert cosine_lr(1e-6, 1.0) == 1e-6  # never rises above a tiny start
    assert linear_schedule((0.35, 0.08), 0.0) == 0.35
    assert linear_schedule((0.35, 0.08), 1.0) == pytest.approx(0.08)
    assert linear_schedule((0.22, 0.15), 0.5) == pytest.approx(0.185)


def test_warmup_noise_and_encoder_gain_follow_lambda():
    assert warmup_noise_level(1e-3) == pytest.approx((0.747 + 3 * 0.432) / 10)
    assert warmup_noise_level(1e-2) == pytest.approx((0.747 + 2 * 0.432) / 10)
    assert [encoder_gain_for_lambda(x) for x in (1e-4, 1.99e-4, 2e-4, 4.9e-4, 5e-4, 0.02)] == [24, 24, 20, 20, 16, 16]


def test_gradient_clip_norm_is_the_references():
    assert GRAD_CLIP_NORM == 0.1


@pytest.mark.parametrize("name,total,warm,main,final", [
    ("fast", 1600, ((5, 50), (2, 50)), 1150, 100),  # final phase: docs/compression.md
    ("medium", 10000, ((5, 200), (2, 200)), 8100, 500),
    ("slow", 30000, ((5, 400), (2, 400)), 26700, 500),
])
def test_presets_have_the_reference_layout(name, total, warm, main, final):
    p = load_encoder_preset(name)
    assert p.total_iterations == total
    assert tuple((w.candidates, w.training_phase.max_itr) for w in p.warmup) == warm
    for w in p.warmup:
        ph = w.training_phase
        assert ph.noise_parameter is None  # lambda-dependent
        assert ph.quantizer_noise_type == "gaussian" and ph.softround_temperature == (0.35, 0.35)
        assert ph.betas_latent == (0.725, 0.97) and ph.precondition_frequency_model == 1
    m, f = p.training_phases
    assert (m.max_itr, m.softround_temperature, m.noise_parameter, m.schedule_lr) == (main, (0.35, 0.08),
                                                                                     (0.22, 0.15), True)
    assert (f.max_itr, f.lr, f.quantizer_type, f.quantize_model) == (final, 1e-4, "hardround", True)
    # The networks' estimated rate is in the loss after the warm-up, at its true weight.
    assert (m.network_rate_weight, f.network_rate_weight) == (1.0, 1.0)
    assert all(w.training_phase.network_rate_weight == 0.0 for w in p.warmup)
