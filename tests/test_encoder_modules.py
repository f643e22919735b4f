"""Encoder stages against the maths of docs/architecture.md: shapes on odd
sizes, ARM context/IFCE/MLP against a per-pixel reference, Laplace rate,
upsampling, synthesis, MAC counts, parameter layout."""

import math

import numpy as np
import pytest
import torch

from coolchic.decoder_runtime.arch import arm_context_offsets, param_layout, stripe_bounds
from coolchic.decoder_runtime.common_randomness import common_randomness_grids
from coolchic.encoder.arm import laplace_rate, split_flat
from coolchic.encoder.coolchic import CoolChicEncoder, CoolChicEncoderParameter
from coolchic.encoder.complexity import module_macs, total_mac_per_pixel
from coolchic.encoder.upsampling import initial_tconv_kernel, separable_filter, up2

torch.set_num_threads(1)


def make(h=33, w=47, **kw):
    torch.manual_seed(0)
    base = dict(latent_resolution=(0, 4), spatial_context_arm=8, n_hidden_layers_arm=2)
    base.update(kw)
    return CoolChicEncoder(CoolChicEncoderParameter(img_size=(h, w), **base))


def randomize(cc, scale=0.3):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in cc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for p in list(cc.latent_grids) + list(cc.hyper_latent_grids):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("h,w", [(33, 47), (32, 48), (1, 1), (5, 3)])
def test_shapes_of_every_stage(h, w):
    cc = make(h, w, hyper_latent_resolution=(2, 3), ifce_resolution=(0, 2), output_feature_ifce=3,
              flag_common_randomness=True, linear_stabiliser_arm=True, linear_stabiliser_synth=True)
    arch = cc.arch
    sizes = [(-(-h // 2**lv), -(-w // 2**lv)) for lv in range(5)]
    assert [tuple(p.shape[-2:]) for p in cc.latent_grids] == sizes
    flat = cc.quantized_flat_latents()
    assert flat.shape == (arch.n_latent_values(),)
    grids = split_flat(flat, arch)
    assert [g.shape for g in grids] == [(c.h, c.w) for c in arch.coded_grids()]
    mu, ls = cc.arm_outputs(flat)
    assert mu.shape == ls.shape == flat.shape
    dense = cc.dense_latent(flat)
    assert dense.shape == (1, 10, h, w)  # 5 latent + 5 common-randomness channels
    out = cc()
    assert out.raw_out.shape == (1, 3, h, w)
    assert out.rate.shape == flat.shape
    for spec in param_layout(arch):
        assert tuple(cc.get_parameter(spec.name).shape) == spec.shape


def test_named_transmitted_params_follow_param_layout():
    cc = make(hyper_latent_resolution=(3, 4), ifce_resolution=(0, 2), output_feature_ifce=4,
              linear_stabiliser_arm=True, linear_stabiliser_synth=True)
    names = list(cc.named_transmitted_params())
    assert names == [s.name for s in param_layout(cc.arch)]
    stacked = make(hyper_latent_resolution=(3, 4), ifce_resolution=(0, 2), output_feature_ifce=4, ifce_stack=True)
    ifce = {n: tuple(p.shape) for n, p in stacked.named_transmitted_params("ifce").items()}
    # Grids in decoding order: hyper 4, latent 4, hyper 3, latent 3, then latents 2, 1, 0 with an IFCE each.
    assert ifce == {"ifce.0.weight": (4, 9 + 3), "ifce.0.bias": (4,), "ifce.1.weight": (4, 9 + 4),
                    "ifce.1.bias": (4,), "ifce.2.weight": (4, 9 + 5), "ifce.2.bias": (4,)}
    assert names[:2] == ["arm.mlp.0.weight", "arm.mlp.0.bias"]
    assert "upsampling.tconv.0.weight" in names and "upsampling.preconcat.3.weight" in names
    static = make(static_upsampling_kernel=True)
    assert not any(n.startswith("upsampling") for n in static.named_transmitted_params())
    assert "upsampling" not in static.modules_to_send


def reference_arm(cc, flat, n_substreams=1):
    """Per-pixel evaluation of section 2 of docs/architecture.md, in float64;
    context rows above a pixel's substream stripe read 0 (bitstream.md)."""
    arch = cc.arch
    grids = [g.double().numpy() for g in split_flat(flat.detach(), arch)]
    offs = arm_context_offsets(arch.spatial_context_arm)
    ws = {n: p.detach().double().numpy() for n, p in cc.named_transmitted_params().items()}
    c, nh = arch.spatial_context_arm, arch.n_hidden_layers_arm
    mus, lss = [], []
    for cg, y in zip(arch.coded_grids(), grids):
        mu = np.zeros_like(y)
        ls = np.zeros_like(y)
        for i in range(cg.h):
            r0 = max(a for a, b in stripe_bounds(cg.h, n_substreams) if a <= i < b)
            for j in range(cg.w):
                ctx = []
                for dy, dx in offs:
                    yy, xx = i + dy, j + dx
                    ctx.append(y[yy, xx] if r0 <= yy < cg.h and 0 <= xx < cg.w else 0.0)
                feat = []
                if arch.ifce_features:
                    if cg.ifce_source >= 0:
                        src = grids[cg.ifce_source]
                        k = arch.coded_grids()[cg.ifce_source].level - cg.level
                        sy, sx = min(i >> k, src.shape[0] - 1), min(j >> k, src.shape[1] - 1)
                        v = [src[min(max(sy + a, 0), src.shape[0] - 1), min(max(sx + b, 0), src.shape[1] - 1)]
                             for a in (-1, 0, 1) for b in (-1, 0, 1)]
                        name = "ifce"
                        if arch.ifce_stack:  # then each coarser grid's value at the source pixel
                            sl = arch.coded_grids()[cg.ifce_source].level
                            for jg in cg.ifce_stack:
                                og, d = grids[jg], arch.coded_grids()[jg].level - sl
                                v.append(og[min(sy >> d, og.shape[0] - 1), min(sx >> d, og.shape[1] - 1)])
                            k_ifce = sum(1 for q in arch.coded_grids()[: cg.index] if q.ifce_source >= 0)
                            name = f"ifce.{k_ifce}"
                        feat = list(np.maximum(ws[f"{name}.weight"] @ np.array(v) + ws[f"{name}.bias"], 0))
                    else:
                        feat = [0.0] * arch.ifce_features
                u = np.array(ctx + feat)
                h = u
                for l in range(nh):
                    h = np.maximum(ws[f"arm.mlp.{l}.weight"] @ h + ws[f"arm.mlp.{l}.bias"] + h[:c], 0)
                out = ws[f"arm.mlp.{nh}.weight"] @ h + ws[f"arm.mlp.{nh}.bias"]
                if arch.linear_stabiliser_arm:
                    out = out + ws["arm.stabiliser.weight"] @ u
                mu[i, j] = out[0]
                ls[i, j] = min(max(out[1] - 4.0, -4.5), 4.0)
        mus.append(mu)
        lss.append(ls)
    return mus, lss


@pytest.mark.parametrize("kw,n_substreams", [
    (dict(), 1),
    (dict(spatial_context_arm=16, hyper_latent_resolution=(1, 2), ifce_resolution=(0, 2), output_feature_ifce=3,
          linear_stabiliser_arm=True), 1),
    (dict(spatial_context_arm=24, n_hidden_layers_arm=0, ifce_resolution=(1, 3), output_feature_ifce=2), 1),
    (dict(spatial_context_arm=16, ifce_resolution=(0, 2), output_feature_ifce=3), 3),
    (dict(spatial_context_arm=16, hyper_latent_resolution=(1, 2), ifce_resolution=(0, 3), output_feature_ifce=3,
          ifce_stack=True), 2),
])
def test_arm_matches_per_pixel_reference(kw, n_substreams):
    cc = make(9, 13, **kw)
    cc.set_n_substreams(n_substreams)
    randomize(cc)
    with torch.no_grad():
        for p in list(cc.latent_grids) + list(cc.hyper_latent_grids):
            p.copy_(torch.randint(-6, 7, p.shape) / cc.encoder_gain)
    flat = cc.quantized_flat_latents()
    assert torch.all(flat == torch.round(flat))
    mu, ls = cc.arm_outputs(flat)
    ref_mu, ref_ls = reference_arm(cc, flat, n_substreams)
    for a, b in zip(split_flat(mu.contiguous(), cc.arch), ref_mu):
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-4, atol=1e-4)
    for a, b in zip(split_flat(ls.contiguous(), cc.arch), ref_ls):
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_substreams,threads", [(1, 1), (2, 1), (1, 2)])
def test_arm_gradient_matches_autograd_reference(n_substreams, threads):
    """The hand-written backward of the gather and the MLP equals plain autograd,
    on the GEMM path (one thread) and the oneDNN convolution path (two)."""
    cc = make(9, 13, spatial_context_arm=16, ifce_resolution=(0, 2), output_feature_ifce=3,
              linear_stabiliser_arm=True).double()
    cc.set_n_substreams(n_substreams)
    randomize(cc)
    flat = (torch.randn(cc.arch.n_latent_values(), dtype=torch.double) * 3).requires_grad_()
    torch.set_num_threads(threads)
    try:
        assert torch.autograd.gradcheck(lambda f: cc.arm_outputs(f), (flat,))
    finally:
        torch.set_num_threads(1)


def test_laplace_rate_matches_distribution():
    y = torch.tensor([0.0, 1.0, -3.0, 7.0, 2.0, 40.0])
    mu = torch.tensor([0.2, 0.9, -1.0, 7.4, -2.0, 0.0])
    ls = torch.tensor([-1.0, 0.5, 1.0, -4.5, 4.0, -4.5])
    d = torch.distributions.Laplace(mu.double(), torch.exp(ls.double()))
    p = d.cdf(y.double() + 0.5) - d.cdf(y.double() - 0.5)
    expected = -torch.log2(torch.clamp(p, min=2.0**-16))
    torch.testing.assert_close(laplace_rate(y, mu, ls).double(), expected, rtol=1e-4, atol=1e-4)
    assert laplace_rate(y, mu, ls)[-1].item() == pytest.approx(16.0)  # floored probability


def naive_up2(x, t):
    """1-D reference of the 2x step: pad P, y[m] = sum_i xp[i] t[m-2i], keep y[c:c+2n]."""
    n, k = len(x), len(t)
    p = math.ceil(k / 4)
    xp = np.concatenate([[x[0]] * p, x, [x[-1]] * p])
    y = np.zeros(2 * len(xp) + k)
    for i, v in enumerate(xp):
        for j in range(k):
            y[2 * i + j] += v * t[j]
    c = k // 2 - 1 + 2 * p
    return y[c: c + 2 * n]


@pytest.mark.parametrize("k", [4, 6, 8, 12])
def test_up2_matches_1d_definition_and_is_separable(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(1, 2, 5, 7, generator=g, dtype=torch.double)
    t = torch.randn(k, generator=g, dtype=torch.double)
    out = up2(x, t, 9, 13).numpy()
    tn = t.numpy()
    for ch in range(2):
        rows = np.stack([naive_up2(r, tn) for r in x[0, ch].numpy()])  # along W
        full = np.stack([naive_up2(col, tn) for col in rows.T]).T  # along H
        np.testing.assert_allclose(out[0, ch], full[:9, :13], rtol=1e-10, atol=1e-10)


def test_initial_kernels_interpolate():
    assert initial_tconv_kernel(4).tolist() == [0.25, 0.75, 0.75, 0.25]
    assert initial_tconv_kernel(6).tolist() == [0.0, 0.25, 0.75, 0.75, 0.25, 0.0]
    bic = initial_tconv_kernel(8).tolist()
    assert sum(bic) == pytest.approx(2.0) and bic[3] == pytest.approx(0.87890625)
    ramp = torch.arange(6.0).view(1, 1, 1, 6).repeat(1, 1, 4, 1)
    out = up2(ramp, initial_tconv_kernel(4), 8, 12)
    # Bilinear, half-pixel centres: sample m sits at (m - 0.5) / 2, edges replicated.
    expected = torch.clamp((torch.arange(12.0) - 0.5) / 2, 0, 5)
    torch.testing.assert_close(out[0, 0, 0], expected)
    x = torch.randn(1, 1, 6, 5)
    torch.testing.assert_close(separable_filter(x, torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])), x)


def test_upsampling_channel_order_and_static_kernels():
    cc = make(16, 16, latent_resolution=(0, 2), static_upsampling_kernel=True)
    with torch.no_grad():
        cc.latent_grids[2].fill_(1.0)  # only the coarsest grid is non zero
    dense = cc.dense_latent(cc.quantized_flat_latents())
    assert dense.shape == (1, 3, 16, 16)
    assert torch.all(dense[0, 0] == 0) and torch.all(dense[0, 1] == 0)  # channel 0 = finest grid
    torch.testing.assert_close(dense[0, 2], torch.full((16, 16), 16.0))  # constants survive upsampling
    assert not any(p.requires_grad for p in cc.upsampling.parameters())


def test_common_randomness_buffers_and_flags():
    cc = make(12, 10, latent_resolution=(0, 2), flag_common_randomness=True, common_randomness_seed=7)
    expected = common_randomness_grids(cc.arch)
    assert len(expected) == 3
    for i, g in enumerate(expected):
        assert torch.equal(getattr(cc, f"common_randomness_{i}")[0, 0], torch.from_numpy(g))
    assert not any("common_randomness" in n for n, _ in cc.named_parameters())
    assert not any("common_randomness" in k for k in cc.state_dict())
    flat = cc.quantized_flat_latents()  # latents are zero: only the noise is non zero
    dense = cc.dense_latent(flat)
    assert torch.all(dense[0, :3] == 0) and dense[0, 3:].abs().sum() > 0
    assert torch.all(cc.dense_latent(flat, no_common_randomness=True) == 0)


def test_final_upsampling_when_finest_level_is_not_zero():
    cc = make(17, 23, latent_resolution=(1, 3), final_upsampling_type="bilinear")
    assert cc.latent_grids[0].shape[-2:] == (9, 12)
    assert cc().raw_out.shape == (1, 3, 17, 23)
    assert module_macs(cc.arch)["final_upsampling"] == 4 * 3 * 17 * 23


def test_synthesis_mac_count_by_hand():
    p = CoolChicEncoderParameter(img_size=(10, 20), latent_resolution=(0, 2), spatial_context_arm=8,
                                 n_hidden_layers_arm=1, ups_k_size=4, ups_preconcat_k_size=3,
                                 layers_synthesis=["8-1-linear-relu", "X-3-linear-none"],
                                 linear_stabiliser_synth=True)
    arch = p.to_arch("rgb")
    macs = module_macs(arch)
    hw = 10 * 20
    # 3 input channels -> 8 (1x1), 8 -> 3 (3x3), stabiliser 3 -> 3 (1x1)
    assert macs["synthesis"] == (3 * 8 + 8 * 3 * 9 + 3 * 3) * hw
    # ARM: 8x8 hidden + 2x8 output per coded value; grids 10x20, 5x10, 3x5
    assert macs["arm"] == (64 + 16) * (200 + 50 + 15)
    # level 1 -> 0: 2 channels, K/2 = 2 taps, H pass 10x10 + W pass 10x20; preconcat 2*3 taps
    # level 2 -> 1: 1 channel, H pass 5x5 + W pass 5x10; preconcat
    assert macs["upsampling"] == 2 * 2 * 10 * (10 + 20) + 6 * 200 + 1 * 2 * 5 * (5 + 10) + 6 * 50
    cc = CoolChicEncoder(p)
    assert cc.get_total_mac_per_pixel() == pytest.approx(sum(macs.values()) / hw)
    assert total_mac_per_pixel(arch) == pytest.approx(cc.get_total_mac_per_pixel())
    table = cc.str_complexity()
    assert "| synthesis.layers.1.weight" in table and "(3, 8, 3, 3)" in table
    assert table.startswith("| module")


@pytest.mark.parametrize("stabiliser", [False, True])
def test_synthesis_from_a_cached_layer_input_is_the_whole_synthesis(stabiliser):
    """What rdoq_model relies on: rerunning from layer i's cached input changes no bit."""
    from coolchic.decoder_runtime.arch import parse_synthesis_layer
    from coolchic.encoder.synthesis import Synthesis

    torch.manual_seed(0)
    layers = [parse_synthesis_layer(t, 3) for t in
              ("8-1-linear-relu", "X-1-linear-none", "X-3-residual-relu", "X-3-residual-none")]
    syn = Synthesis(5, layers, 3, stabiliser)
    with torch.no_grad():
        for p in syn.parameters():
            p.normal_(0, 0.3)
        x = torch.randn(1, 5, 12, 17)
        whole = syn(x)
        inputs = syn.layer_inputs(x)
        assert len(inputs) == len(layers) + 1
        for i in range(len(inputs)):
            assert torch.equal(syn.forward_from(i, inputs[i], inputs[0]), whole)
        # A parameter of layer 2 moves: from layer 2's input, as from the start.
        syn.layers[2].weight[0, 1, 1, 1] += 0.5
        assert torch.equal(syn.forward_from(2, inputs[2], inputs[0]), syn(x))
        assert not torch.equal(syn(x), whole)


def test_gray_frame_has_one_output_channel():
    p = CoolChicEncoderParameter(img_size=(8, 8), latent_resolution=(0, 2),
                                 layers_synthesis=["8-1-linear-relu", "X-1-linear-none", "X-3-residual-none"])
    cc = CoolChicEncoder(p, "gray")
    assert cc.arch.n_out == 1 and cc().raw_out.shape == (1, 1, 8, 8)


@pytest.mark.parametrize("stabiliser", [False, True])
def test_fused_synthesis_head_gives_the_convolutions_values_and_gradients(stabiliser, monkeypatch):
    """Training's tiled head (two 1x1 layers and the stabiliser in one function) against the
    convolutions it stands for, in float64: same output, same gradient for the input and for
    every parameter, over several tiles and a partial last one."""
    from coolchic.decoder_runtime.arch import parse_synthesis_layer
    from coolchic.encoder import synthesis as synthesis_mod

    monkeypatch.setattr(synthesis_mod, "HEAD_TILE", 40)  # 7 x 13 = 91 pixels: tiles of 40, 40, 11
    torch.manual_seed(0)
    layers = [parse_synthesis_layer(t, 3) for t in
              ("6-1-linear-relu", "X-1-linear-none", "X-3-residual-relu", "X-3-residual-none")]
    syn = synthesis_mod.Synthesis(5, layers, 3, stabiliser).double()
    with torch.no_grad():
        for p in syn.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(1, 5, 7, 13, dtype=torch.double)
    g = torch.randn(1, 3, 7, 13, dtype=torch.double)

    original = synthesis_mod.Synthesis._fused_head

    def run(fused: bool):
        monkeypatch.setattr(synthesis_mod.Synthesis, "_fused_head", lambda self, t: fused and original(self, t))
        syn.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = syn(xi)
        y.backward(g)
        return [y.detach(), xi.grad] + [p.grad for p in syn.parameters()]

    assert original(syn, x)  # the head applies to this layer list
    with torch.no_grad():
        assert not original(syn, x)  # without gradients the convolutions run (rdoq_model's bit-exactness)
    convs, fused = run(False), run(True)
    assert len(convs) == 2 + len(list(syn.parameters()))
    for a, b in zip(convs, fused):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_fused_synthesis_head_needs_two_leading_1x1_layers():
    from coolchic.decoder_runtime.arch import parse_synthesis_layer
    from coolchic.encoder.synthesis import Synthesis

    x = torch.zeros(1, 4, 5, 5)
    for spec, applies in ((("8-1-linear-relu", "X-1-linear-none", "X-3-residual-none"), True),
                          (("8-3-linear-relu", "X-1-linear-none"), False),
                          (("8-1-linear-none", "X-1-linear-none"), False),
                          (("8-1-linear-relu", "X-1-linear-relu"), False),
                          (("X-1-linear-none",), False)):
        syn = Synthesis(4, [parse_synthesis_layer(t, 3) for t in spec], 3, False)
        assert syn._fused_head(x) is applies, spec


def test_fused_synthesis_head_on_several_threads_only_when_wide():
    from coolchic.decoder_runtime.arch import parse_synthesis_layer
    from coolchic.encoder.synthesis import HEAD_MIN_WIDTH_THREADED, Synthesis

    x = torch.zeros(1, 4, 5, 5)
    def head(width):
        layers = [parse_synthesis_layer(f"{width}-1-linear-relu", 3), parse_synthesis_layer("X-1-linear-none", 3)]
        return Synthesis(4, layers, 3, True)

    narrow, wide = head(HEAD_MIN_WIDTH_THREADED - 1), head(HEAD_MIN_WIDTH_THREADED)
    assert narrow._fused_head(x) and wide._fused_head(x)
    torch.set_num_threads(2)
    try:
        assert not narrow._fused_head(x) and wide._fused_head(x)
    finally:
        torch.set_num_threads(1)
