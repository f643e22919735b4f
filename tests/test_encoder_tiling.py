"""Training in bands (encoder/tiling.py, encoder/arm_chunks.py): the same loss,
gradients and decoded output as the whole frame, and the memory budget that
picks the bands."""

import pytest
import torch

from coolchic.decoder_runtime.tiling import tile_bounds
from coolchic.encoder.arm_chunks import build_arm_chunks, chunked_latent_rate, rate_backward
from coolchic.encoder.coolchic import CoolChicEncoderParameter
from coolchic.encoder.frame_encoder import FrameData, FrameEncoder
from coolchic.encoder.loss import loss_function
from coolchic.encoder.tiling import TilePlan, plan_tiles, tiled_backward, whole_frame_training_bytes

from test_encoder_modules import randomize

torch.set_num_threads(1)

QUANT = dict(quantizer_noise_type="gaussian", quantizer_type="softround", soft_round_temperature=0.3,
             noise_parameter=0.2)
# A latent's rate in float32 when the ARM runs on other batches (bands, chunks):
# oneDNN sums in another order, 1.2e-4 bits off at 15.2 bits on an AVX-512 (Zen 4)
# machine; the same tests in float64 agree to 3e-13, so the terms are the same.
RATE_RTOL, RATE_ATOL = 5e-5, 1e-4
RICH = dict(ifce_resolution=(0, 2), output_feature_ifce=3, hyper_latent_resolution=(2, 3),
            flag_common_randomness=True, linear_stabiliser_synth=True, linear_stabiliser_arm=True)


def _frame_encoder(h, w, fdt, n_substreams, **kw):
    torch.manual_seed(0)
    p = CoolChicEncoderParameter(img_size=(h, w), latent_resolution=(0, 4), spatial_context_arm=8,
                                 n_hidden_layers_arm=2, **kw)
    fe = FrameEncoder(p, "I", fdt, 8)
    randomize(fe.coolchic_encoder)
    fe.coolchic_encoder.set_n_substreams(n_substreams)
    g = torch.Generator().manual_seed(5)
    if fdt == "yuv420":
        planes = (torch.rand(1, 1, h, w, generator=g), torch.rand(1, 2, h // 2, w // 2, generator=g))
    else:
        planes = (torch.rand(1, 3, h, w, generator=g),)
    return fe, FrameData(planes, fdt, 8)


def _grads(cc):
    return {n: p.grad.clone() for n, p in cc.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("h,w,fdt,kw,n_substreams,rows,chunk", [
    (100, 72, "rgb", RICH, 2, 16, 300),
    (100, 72, "rgb", dict(RICH, ifce_stack=True), 2, 16, 300),
    (96, 64, "yuv420", dict(ifce_resolution=(0, 2), output_feature_ifce=4), 1, 32, 1000),
    (70, 50, "rgb", {}, 3, 16, 50),
])
def test_bands_give_the_whole_frame_loss_and_gradients(h, w, fdt, kw, n_substreams, rows, chunk):
    fe, frame = _frame_encoder(h, w, fdt, n_substreams, **kw)
    cc = fe.coolchic_encoder
    fe.set_to_train()
    torch.manual_seed(7)
    out = fe(**QUANT)
    whole = loss_function(out.decoded_planes, out.rate, frame.planes, 0.01, compute_logs=True)
    whole.loss.backward()
    ref = _grads(cc)

    plan = TilePlan(tuple(tile_bounds(h, rows, 16)), chunk)
    assert len(plan.rows) > 2
    cc.set_tile_plan(plan)
    assert len(cc.arm_chunks().chunks) > len(cc.arch.coded_grids())  # grids really are cut
    cc.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same quantization noise
    step = tiled_backward(fe, frame.planes, 0.01, plan, **QUANT)
    assert step.loss == pytest.approx(float(whole.loss), rel=1e-6)
    assert step.mse == pytest.approx(whole.mse, rel=1e-6)
    assert step.rate_latent_bits / (h * w) == pytest.approx(whole.rate_latent_bpp, rel=1e-6)
    got = _grads(cc)
    assert set(got) == set(ref)  # latents and every network
    # float32 sums in another order (by band): up to 3.4e-5 of a tensor's largest
    # gradient on an AVX-512 machine (ifce.3.weight of the stacked case), 1e-15
    # with the same test in float64, so the bands add exactly the same terms.
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-4 * float(g.abs().max()), msg=name)


def test_tiled_evaluation_is_the_whole_frame_one():
    fe, _ = _frame_encoder(100, 72, "rgb", 2, **RICH)
    cc = fe.coolchic_encoder
    fe.set_to_eval()
    with torch.no_grad():
        whole = fe(quantizer_noise_type="none", quantizer_type="hardround")
        cc.set_tile_plan(TilePlan(tuple(tile_bounds(100, 16, 16)), 200))
        tiled = fe(quantizer_noise_type="none", quantizer_type="hardround")
        dense = cc.dense_latent(cc.quantized_flat_latents())
        banded = cc.synthesize(dense)
    torch.testing.assert_close(tiled.decoded_image, whole.decoded_image, rtol=0, atol=1e-6)
    torch.testing.assert_close(tiled.rate, whole.rate, rtol=RATE_RTOL, atol=RATE_ATOL)
    torch.testing.assert_close(banded, cc.synthesis(dense), rtol=0, atol=1e-5)


def test_a_tiled_encoder_refuses_the_whole_frame_autograd_path():
    fe, _ = _frame_encoder(40, 40, "rgb", 1)
    cc = fe.coolchic_encoder
    cc.set_tile_plan(TilePlan(((0, 16), (16, 32), (32, 40)), 100))
    with pytest.raises(RuntimeError, match="tiled_backward"):
        cc.latent_rate(cc.quantized_flat_latents("gaussian", "softround", 0.3, 0.2))


def test_chunked_rate_matches_by_hand_counted_chunks():
    fe, _ = _frame_encoder(33, 47, "rgb", 2, **RICH)
    cc = fe.coolchic_encoder
    chunks = build_arm_chunks(cc.arch, 2, 100)
    # Each chunk is whole rows of one grid inside one stripe: 100 values -> 2 rows of 47.
    finest = [c for c in chunks.chunks if c.stop - c.start in (47, 94)]
    assert finest and all((c.stop - c.start) % 47 == 0 for c in finest)
    assert sum(c.stop - c.start for c in chunks.chunks) == cc.arch.n_latent_values()
    flat = cc.quantized_flat_latents().detach()
    torch.testing.assert_close(chunked_latent_rate(flat, cc.arm, cc.ifce, chunks, cc.arch.arm_input_dim),
                               cc.latent_rate(flat), rtol=RATE_RTOL, atol=RATE_ATOL)
    grad = torch.zeros_like(flat)
    bits = rate_backward(flat, cc.arm, cc.ifce, chunks, cc.arch.spatial_context_arm, cc.arch.arm_input_dim,
                         1.0, grad)
    assert bits == pytest.approx(float(cc.latent_rate(flat).sum()), rel=1e-6)


def test_the_memory_budget_picks_bands():
    p = CoolChicEncoderParameter(img_size=(3000, 4000), latent_resolution=(0, 6), ifce_resolution=(0, 2),
                                 output_feature_ifce=4)
    arch = p.to_arch()
    whole = whole_frame_training_bytes(arch)
    assert plan_tiles(arch, whole + 1) is None  # fits: today's whole-frame path
    plan = plan_tiles(arch, whole - 1)
    assert plan is not None
    assert plan.rows[0][0] == 0 and plan.rows[-1][1] == 3000
    assert all(a[1] == b[0] for a, b in zip(plan.rows, plan.rows[1:]))  # contiguous, no overlap
    assert all((y0 % 64) == 0 for y0, _ in plan.rows)  # aligned on the coarsest grid
    # A final resize cannot be cut in bands.
    resized = CoolChicEncoderParameter(img_size=(3000, 4000), latent_resolution=(1, 6)).to_arch()
    assert plan_tiles(resized, 1) is None
