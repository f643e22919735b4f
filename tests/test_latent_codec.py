"""Latent coding: exact round trips through the integer ARM and the range coder."""

import numpy as np
import pytest

from coolchic.decoder_runtime.arch import arm_context_offsets, wavefront_slope
from coolchic.decoder_runtime.arm_int import ACT_MAX, FRAC, align_bias, build_int_arm, ifce_forward
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


@pytest.mark.parametrize("n_sub,threads", [(4, 2), (5, 2), (5, 3)])
def test_parallel_decoding_matches_serial(small_arch, n_sub, threads):
    """Groups of stripes decoded in lockstep, one group per thread: the same latents as the
    serial decode (one group of every stripe), escapes and a latent past the int32 bound included."""
    q, shifts, _, latents = random_int_model(small_arch, seed=9)
    latents = [y.copy() for y in latents]
    latents[-1][-1, 0] = MAX_LATENT  # in the last stripe: its group goes again on the int64 ARM
    _roundtrip(small_arch, latents, q, shifts, n_sub, threads=threads)


def test_stripe_groups():
    from coolchic.decoder_runtime.latent_codec import stripe_groups

    assert stripe_groups(5, 1) == [range(0, 5)]
    assert stripe_groups(5, 2) == [range(0, 2), range(2, 5)]
    assert stripe_groups(4, 2) == [range(0, 2), range(2, 4)]
    assert stripe_groups(2, 8) == [range(0, 1), range(1, 2)]  # never an empty group


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


def _arm_outputs(net, x):
    from coolchic.decoder_runtime.arm_int import arm_forward_py, arm_scratch

    n = x.shape[1]
    out = [np.zeros(n, dtype=np.int64) for _ in range(3)]
    arm_forward_py(x.astype(net.wh.dtype), n, net, arm_scratch(net, n), *out)  # x of the net's type
    return np.stack(out)


def test_int32_arm_agrees_with_int64_up_to_its_bound(small_arch):
    """The int32 ARM gives the int64 ARM's integers for every input that
    int32_safe_latent_bound admits, here at the bound itself."""
    from coolchic.decoder_runtime.arm_int import FRAC, int32_safe_latent_bound

    q, shifts, _, _ = random_int_model(small_arch, seed=11)
    arm = build_int_arm(small_arch, q, shifts)
    feat_bound = 3000
    bound = int32_safe_latent_bound(arm.net64, feat_bound)
    assert 0 < bound < MAX_LATENT
    rng = np.random.default_rng(0)
    n, c = 257, arm.n_context
    x = np.zeros((arm.net64.dim, n), dtype=np.int32)
    x[:c] = rng.choice([-bound, bound, 0, 1, -1], size=(c, n)) << FRAC
    x[c:arm.dim_in] = rng.integers(0, feat_bound + 1, size=(arm.dim_in - c, n))
    x[:, 0] = 0
    x[:c, 1] = bound << FRAC
    ref = _arm_outputs(arm.net64, x)
    np.testing.assert_array_equal(_arm_outputs(arm.net32, x), ref)
    assert len(np.unique(ref[0])) > 10  # the inputs do exercise the network
    # Weights at the format's limit leave no room for int32: the int64 ARM decodes alone.
    big = {k: (np.full_like(v, 2 ** 15 - 1) if k.startswith("arm.") else v) for k, v in q.items()}
    assert int32_safe_latent_bound(build_int_arm(small_arch, big, shifts).net64, feat_bound) == -1


def _nets_used(monkeypatch):
    """Record the integer type of the ARM of every _decode_stripes call made from Python."""
    from coolchic.decoder_runtime import latent_codec

    kernel, used = latent_codec._decode_stripes, []

    def spy(*args):
        used.append((args[9].wh.dtype, int(args[10])))  # net, l_safe
        return kernel(*args)

    monkeypatch.setattr(latent_codec, "_decode_stripes", spy)
    return used


@pytest.mark.parametrize("threads", [1, 2])
def test_roundtrip_latents_beyond_the_int32_bound(small_arch, monkeypatch, threads):
    """A latent above int32_safe_latent_bound stops its stripe on the int32 ARM; the stripe is
    decoded again on the int64 ARM (serially after the parallel kernel with 2 threads), same latents."""
    from coolchic.decoder_runtime.arm_int import int32_safe_latent_bound
    from coolchic.decoder_runtime.latent_codec import grid_features

    q, shifts, _, latents = random_int_model(small_arch, seed=5)
    arm = build_int_arm(small_arch, q, shifts)
    grids = small_arch.coded_grids()
    bound = int32_safe_latent_bound(arm.net64, grid_features(small_arch, arm, grids[-1], latents).bound)
    assert 0 <= bound < MAX_LATENT
    latents = [y.copy() for y in latents]
    fine = latents[-1]
    fine[fine.shape[0] // 2, 3] = bound + 1
    fine[-1, -1] = -MAX_LATENT
    used = _nets_used(monkeypatch)
    _roundtrip(small_arch, latents, q, shifts, 2, threads=threads)
    assert (np.dtype(np.int64), MAX_LATENT) in used  # the int64 kernel did run
    if threads == 1:
        assert (np.dtype(np.int32), bound) in used and used[-1][0] == np.int64


def test_roundtrip_without_an_int32_bound(small_arch, monkeypatch):
    """Weights at the format's limit leave the int32 ARM no room (bound -1): every stripe decodes on int64."""
    from coolchic.decoder_runtime.arm_int import int32_safe_latent_bound

    q, shifts, _, latents = random_int_model(small_arch, seed=6)
    q = {k: (np.full_like(v, 2 ** 15 - 1) if k.startswith("arm.") else v) for k, v in q.items()}
    arm = build_int_arm(small_arch, q, shifts)
    assert int32_safe_latent_bound(arm.net64, 0) == -1
    used = _nets_used(monkeypatch)
    _roundtrip(small_arch, latents, q, shifts, 2)
    assert used and {u[0] for u in used} == {np.dtype(np.int64)}


def test_ifce_forward_matches_its_definition():
    """The IFCE kernel against its formula in plain int64 numpy: 3x3 taps on the
    edge-replicated source then the E extra planes (the stacked IFCE; E = 0 is
    the version 1 form), ``clamp((b + (S << FRAC) + half) >> shift, 0, ACT_MAX)``."""
    rng = np.random.default_rng(7)
    for case in range(200):
        h, w = (int(v) for v in rng.integers(1, 10, 2))
        amp = int(rng.choice([2, 300, MAX_LATENT]))
        src = rng.integers(-amp, amp + 1, (h, w)).astype(np.int32)
        n_extra = int(rng.choice([0, 1, 5, 25]))
        extra = rng.integers(-amp, amp + 1, (n_extra, h, w)).astype(np.int32)
        f = int(rng.integers(1, 5))
        wq = rng.integers(-(2 ** 15) + 1, 2 ** 15, (f, 9 + n_extra)).astype(np.int64) >> int(rng.integers(0, 15))
        bq = rng.integers(-(2 ** 40), 2 ** 40, f).astype(np.int64)
        shift = int(rng.integers(0, 17))
        pad = np.pad(src.astype(np.int64), 1, mode="edge")
        taps = np.stack([pad[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
                        + list(extra.astype(np.int64)))  # [9 + E, h, w]
        s = np.einsum("ft,thw->fhw", wq, taps)
        half = (1 << (shift - 1)) if shift else 0
        want = np.clip((bq[:, None, None] + (s << FRAC) + half) >> shift, 0, ACT_MAX)
        out = np.full((f + 1, h, w), -5, np.int32)  # the row past F stays as it was
        top = ifce_forward(src, extra, wq, bq, shift, f, out)
        np.testing.assert_array_equal(out[:f], want, err_msg=f"case {case}")
        assert (out[f] == -5).all() and top == want.max()


def test_ifce_extra_planes_read_the_coarser_grids_at_the_source_position():
    """Stacked IFCE: for each grid decoded before the source, its value at
    ``(y >> d, x >> d)``, d the level difference (hand-written for a 5x7 source)."""
    from coolchic.decoder_runtime.latent_codec import ifce_extra_planes

    arch = make_arch(size=(20, 28), latent_resolution=(0, 4), ifce_resolution=(0, 2), output_feature_ifce=2,
                     ifce_stack=True)
    grids = arch.coded_grids()
    g = next(g for g in grids if g.level == 1)  # source: level 2, 5x7; stack: levels 4, 3
    src = grids[g.ifce_source]
    assert (src.level, src.h, src.w) == (2, 5, 7) and [grids[j].level for j in g.ifce_stack] == [4, 3]
    decoded = [np.arange(q.h * q.w, dtype=np.int32).reshape(q.h, q.w) * 10 + q.index for q in grids]
    extra = ifce_extra_planes(grids, src, g.ifce_stack, decoded)
    lv4, lv3 = decoded[0], decoded[1]  # 2x2 and 3x4
    assert lv4.shape == (2, 2) and lv3.shape == (3, 4)
    np.testing.assert_array_equal(extra[0][:, 0], [lv4[0, 0]] * 4 + [lv4[1, 0]])
    np.testing.assert_array_equal(extra[0][4], [lv4[1, 0]] * 4 + [lv4[1, 1]] * 3)
    np.testing.assert_array_equal(extra[1][2], [lv3[1, 0], lv3[1, 0], lv3[1, 1], lv3[1, 1], lv3[1, 2], lv3[1, 2], lv3[1, 3]])


def test_work_arrays_are_reused_only_when_small(small_arch, monkeypatch):
    """Two decodes of the same shapes on one thread share their work arrays, and both
    decode exactly; with a keep limit of 0 nothing is kept."""
    from coolchic.decoder_runtime import latent_codec

    for seed in (11, 12):
        q, shifts, _, latents = random_int_model(small_arch, seed=seed)
        _roundtrip(small_arch, latents, q, shifts, 3)
        kept = latent_codec._kept.work
        assert kept is not None
        if seed == 11:
            first = kept[1]
    assert kept[1] is first
    monkeypatch.setattr(latent_codec, "WORKSPACE_KEEP_BYTES", 0)
    _roundtrip(small_arch, latents, q, shifts, 2)
    assert latent_codec._kept.work is None
