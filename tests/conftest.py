"""Shared fixtures: small architectures and deterministic integer models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coolchic.decoder_runtime.arch import DecoderArch, modules_to_send, param_layout, parse_synthesis_layer
from coolchic.decoder_runtime.expgolomb import module_kinds

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MOP_LAYERS = "32-1-linear-relu,X-1-linear-none,X-3-residual-relu,X-3-residual-none"


def make_arch(size=(24, 40), layers=MOP_LAYERS, n_out=3, **kw) -> DecoderArch:
    kw.setdefault("latent_resolution", (0, 3))
    return DecoderArch(
        img_size=size,
        layers_synthesis=tuple(parse_synthesis_layer(s, n_out) for s in layers.split(",")),
        **kw,
    )


def random_int_model(arch: DecoderArch, seed: int = 0, amp: int = 40, shift: int = 8, latent_scale=(0.3, 1.0, 3.0)):
    """Integer parameters, shifts, EG orders and Laplace-distributed latents."""
    rng = np.random.default_rng(seed)
    q = {p.name: rng.integers(-amp, amp + 1, p.shape).astype(np.int32) for p in param_layout(arch)}
    kinds = [(m, k) for m in modules_to_send(arch) for k in module_kinds(arch, m)]
    shifts = {mk: shift for mk in kinds}
    expgol = {mk: 3 for mk in kinds}
    latents = [
        np.round(rng.laplace(0.0, latent_scale[g.index % len(latent_scale)], (g.h, g.w))).astype(np.int32)
        for g in arch.coded_grids()
    ]
    return q, shifts, expgol, latents


@pytest.fixture
def small_arch() -> DecoderArch:
    return make_arch(
        spatial_context_arm=16,
        n_hidden_layers_arm=2,
        ifce_resolution=(0, 1),
        output_feature_ifce=3,
        linear_stabiliser_arm=True,
        hyper_latent_resolution=(3, 4),
    )
