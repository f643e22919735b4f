"""Latent coding: exact round trips through the integer ARM and the range coder."""

import numpy as np
import pytest

from coolchic.decoder_runtime.arch import arm_context_offsets, wavefront_slope
from coolchic.decoder_runtime.arm_int import align_bias, build_int_arm
from coolchic.decoder_runtime.latent_codec import MAX_LATENT, decode_latent_grids
from coolchic.export.latent_encoder import encode_latent_grids

from conftest import make_arch, random_int_model


def _roundtrip(arch, latents, q, shifts, n_sub, threads=1):
    arm = build_int_arm(arch, q, shifts)
    enc = encode_latent_grids(arch, arm, latents, n_sub)
    dec = decode_latent_grids(arch, arm, enc.substreams, threads=threads)
    for g, a, b in zip(arch.coded_grids(), latents, dec):
        assert b.shape == (g.h, g.w)
        np.testing.assert_array_equal(a, b)
    return enc


@pytest.mark.parametrize("n_sub", [1, 2, 5])
def test_roundtrip_full_featured(small_arch, n_sub):
    q, shifts, _, latents = random_int_model(small_arch, seed=n_sub)
    enc = _roundtrip(small_arch, latents, q, shifts, n_sub)
    assert len(enc.substreams) == n_sub
    # The range coder stays within 0.5 % (+ a few flush bytes) of the integer model.
    assert sum(len(s) for s in enc.substreams) * 8 <= enc.ideal_bits * 1.005 + 24 * n_sub


@pytest.mark.parametrize("ctx,layers", [(8, 0), (8, 1), (24, 1), (32, 3), (40, 2)])
def test_roundtrip_arm_shapes(ctx, layers):
    arch = make_arch(size=(13, 29), spatial_context_arm=ctx, n_hidden_layers_arm=layers, latent_resolution=(0, 2))
    q, shifts, _, latents = random_int_model(arch, seed=ctx + layers)
    _roundtrip(arch, latents, q, shifts, 2)


def test_roundtrip_extreme_latents(small_arch):
    q, shifts, _, latents = random_int_model(small_arch, seed=3)
    latents[-1][0, 0] = MAX_LATENT
    latents[-1][-1, -1] = -MAX_LATENT
    latents[0][:] = MAX_LATENT  # a whole grid of escapes
    _roundtrip(small_arch, latents, q, shifts, 2)


def test_roundtrip_many_scales_and_means():
    # Large weights push mu and the log-scale across their whole range.
    arch = make_arch(size=(16, 16), spatial_context_arm=8, n_hidden_layers_arm=1, latent_resolution=(0, 1))
    for seed in range(4):
        q, shifts, _, latents = random_int_model(arch, seed=seed, amp=400, latent_scale=(0.1, 30.0))
        _roundtrip(arch, latents, q, shifts, 1)


def test_parallel_decoding_matches_serial(small_arch):
    q, shifts, _, latents = random_int_model(small_arch, seed=9)
    _roundtrip(small_arch, latents, q, shifts, 4, threads=2)


def test_zero_latents_cost_little():
    arch = make_arch(size=(64, 64), spatial_context_arm=8, n_hidden_layers_arm=0, latent_resolution=(0, 2))
    q, shifts, _, latents = random_int_model(arch, amp=0)
    q["arm.mlp.0.bias"][:] = [0, -1200]  # mu = 0, ln b far below the grid: the most peaked table
    latents = [np.zeros_like(y) for y in latents]
    enc = _roundtrip(arch, latents, q, shifts, 1)
    n = sum(y.size for y in latents)
    assert enc.ideal_bits == pytest.approx(n * -np.log2(65531 / 65536))
    assert sum(len(s) for s in enc.substreams) <= 4


def test_wavefront_slope_covers_every_context_offset():
    for c in (8, 16, 24, 32, 40):
        k = wavefront_slope(c)
        for dy, dx in arm_context_offsets(c):
            assert dx + k * dy < 0  # the neighbour is coded at an earlier step
    assert [wavefront_slope(c) for c in (8, 16, 24, 32, 40)] == [2, 3, 4, 5, 5]


def test_align_bias():
    assert align_bias(3, 4, 8) == 3 << 4
    assert align_bias(5, 0, 10) == (5 + 2) >> 2
    assert align_bias(-5, 0, 10) == (-5 + 2) >> 2
