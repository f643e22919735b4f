"""Training, quantization, save/load, export and checkpoint/resume on tiny frames."""

import dataclasses
import os

import numpy as np
import pytest
import torch

import coolchic

from coolchic.decoder_runtime.arch import param_layout
from coolchic.decoder_runtime.errors import EncodeError
from coolchic.decoder_runtime.frame import RawImage
from coolchic.encoder import (
    EncoderPreset,
    FrameEncoder,
    TrainerPhase,
    WarmupPhase,
    encode_frame,
    evaluate,
    export_state,
    arm_float_outputs,
    float_rate_per_grid,
    frame_from_raw,
    load_frame_encoder,
    planes_to_raw,
    quantize_model,
    train_phase,
)
from coolchic.encoder.coolchic import CoolChicEncoderParameter
from coolchic.encoder.nn_rate import MAX_PARAM_INT, best_expgol_count, exp_golomb_nbits

torch.set_num_threads(1)

SMALL = dict(latent_resolution=(0, 3), spatial_context_arm=8, n_hidden_layers_arm=1,
             layers_synthesis=["8-1-linear-relu", "X-1-linear-none", "X-3-residual-none"])
LMBDA = 1e-3


def image(h=32, w=48, fdt="rgb", bitdepth=8, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    maxv = (1 << bitdepth) - 1
    dtype = np.uint8 if bitdepth == 8 else np.uint16

    def plane(ph, pw, k):
        y, x = np.mgrid[0:ph, 0:pw]
        v = 0.5 + 0.3 * np.sin(x / (3 + k)) * np.cos(y / (4 + k)) + rng.normal(0, 0.02, (ph, pw))
        return np.clip(np.round(v * maxv), 0, maxv).astype(dtype)

    if fdt == "gray":
        planes = (plane(h, w, 0),)
    elif fdt == "yuv420":
        planes = (plane(h, w, 0), plane(h // 2, w // 2, 1), plane(h // 2, w // 2, 2))
    else:
        planes = tuple(plane(h, w, k) for k in range(3))
    return RawImage(planes, fdt, bitdepth)


def new_encoder(raw, **kw):
    torch.manual_seed(0)
    param = CoolChicEncoderParameter(img_size=(raw.height, raw.width), **{**SMALL, **kw})
    return FrameEncoder(param, "I", raw.frame_data_type, raw.bitdepth)


PHASE = TrainerPhase(lr=1e-2, max_itr=40, freq_valid=20, patience=1000, schedule_lr=True,
                     softround_temperature=(0.3, 0.1), noise_parameter=(0.25, 0.1), quantizer_noise_type="gaussian")


def test_frame_conversion():
    raw = image(8, 10, "yuv420", 10)
    f = frame_from_raw(raw)
    assert [p.shape for p in f.planes] == [(1, 1, 8, 10), (1, 2, 4, 5)]
    np.testing.assert_allclose(f.planes[1][0, 1].numpy(), raw.planes[2] / 1023.0, rtol=1e-6)
    assert frame_from_raw(image(8, 10, "gray")).planes[0].shape == (1, 1, 8, 10)
    back = planes_to_raw(f.planes, "yuv420", 10)
    for a, b in zip(back.planes, raw.planes):
        assert np.array_equal(a, b)


def test_training_lowers_the_loss():
    raw = image()
    frame = frame_from_raw(raw)
    fe = new_encoder(raw)
    before = float(evaluate(fe, frame, LMBDA).loss)
    res = train_phase(fe, frame, PHASE, LMBDA)
    after = float(evaluate(fe, frame, LMBDA).loss)
    assert res.iterations == 40
    assert after < 0.5 * before
    assert res.loss == pytest.approx(after)


def test_hard_round_phase_keeps_the_latents_and_trains_the_networks():
    raw = image()
    frame = frame_from_raw(raw)
    fe = new_encoder(raw)
    train_phase(fe, frame, PHASE, LMBDA)
    cc = fe.coolchic_encoder
    latents = [p.detach().clone() for p in cc.latent_grids]
    nets = {k: v.detach().clone() for k, v in cc.named_transmitted_params().items()}
    final = TrainerPhase(lr=1e-3, max_itr=5, freq_valid=10**6, patience=10**6, quantizer_type="hardround",
                         quantizer_noise_type="none")
    train_phase(fe, frame, final, LMBDA)
    assert all(torch.equal(a, p.detach()) for a, p in zip(latents, cc.latent_grids))
    # Out of autograd during the phase only.
    assert all(p.requires_grad for p in cc.latent_grids)
    assert any(not torch.equal(v, cc.get_parameter(k).detach()) for k, v in nets.items())


@pytest.mark.parametrize("fdt,bitdepth", [("yuv420", 10), ("gray", 8), ("yuv444", 12)])
def test_training_other_frame_types(fdt, bitdepth):
    raw = image(16, 20, fdt, bitdepth)
    frame = frame_from_raw(raw)
    fe = new_encoder(raw)
    out = fe()
    assert [p.shape for p in out.decoded_planes] == [p.shape for p in frame.planes]
    before = float(evaluate(fe, frame, LMBDA).loss)
    train_phase(fe, frame, TrainerPhase(max_itr=20, freq_valid=10, quantizer_noise_type="gaussian",
                                        noise_parameter=(0.2, 0.2)), LMBDA)
    assert float(evaluate(fe, frame, LMBDA).loss) < before


def test_eval_output_is_rounded_to_bitdepth():
    raw = image(16, 20, "rgb", 10)
    fe = new_encoder(raw)
    train_phase(fe, frame_from_raw(raw), TrainerPhase(max_itr=5, freq_valid=5), LMBDA)
    fe.set_to_eval()
    x = fe(quantizer_type="hardround", quantizer_noise_type="none").decoded_image
    assert torch.equal(torch.round(x * 1023), x * 1023) and x.min() >= 0 and x.max() <= 1


def test_save_load_roundtrip_gives_identical_outputs():
    raw = image(16, 20)
    frame = frame_from_raw(raw)
    fe = new_encoder(raw, hyper_latent_resolution=(2, 3), ifce_resolution=(0, 2), output_feature_ifce=2,
                     flag_common_randomness=True, common_randomness_seed=5, linear_stabiliser_arm=True)
    train_phase(fe, frame, TrainerPhase(max_itr=10, freq_valid=10, quantize_model=True), LMBDA)
    fe2 = load_frame_encoder(fe.save())
    for m in (fe, fe2):
        m.set_to_eval()
    a = fe(quantizer_type="hardround", quantizer_noise_type="none")
    b = fe2(quantizer_type="hardround", quantizer_noise_type="none")
    assert torch.equal(a.decoded_image, b.decoded_image) and torch.equal(a.rate, b.rate)
    assert fe2.coolchic_encoder.nn_q_step == fe.coolchic_encoder.nn_q_step
    assert fe2.coolchic_encoder.get_network_rate() == fe.coolchic_encoder.get_network_rate()
    assert (fe2.frame_type, fe2.frame_data_type, fe2.bitdepth) == ("I", "rgb", 8)


def test_exp_golomb_bits():
    # v = 0, k = 0: 1 bit; v = 1: 2*1 - 0 + 1 + sign = 4; v = -3, k = 1: 2*floor(log2(5)) - 1 + 1 + 1 = 5
    assert exp_golomb_nbits(np.array([0]), 0) == 1
    assert exp_golomb_nbits(np.array([1]), 0) == 4
    assert exp_golomb_nbits(np.array([-3]), 1) == 5
    assert exp_golomb_nbits(np.array([0, 1, -3]), 0) == 1 + 4 + (2 * 2 + 1 + 1)
    big = np.array([1000, -2000, 1500])
    k, bits = best_expgol_count(big)
    assert bits == min(exp_golomb_nbits(big, c) for c in range(13)) and k > 0


def test_quantize_model_steps_and_integers():
    raw = image()
    frame = frame_from_raw(raw)
    fe = new_encoder(raw, ifce_resolution=(0, 1), output_feature_ifce=2)
    train_phase(fe, frame, PHASE, LMBDA)
    float_loss = float(evaluate(fe, frame, LMBDA).loss)
    cc = fe.coolchic_encoder
    assert not cc.is_quantized() and cc.get_network_rate()[1] == 0
    quantize_model(fe, raw, LMBDA)
    assert cc.is_quantized()
    steps = cc.get_network_quantization_step()
    assert set(steps) == {"arm", "ifce", "upsampling", "synthesis"}
    for module, kinds in cc.nn_q_step.items():
        for kind, s in kinds.items():
            assert 0 <= s <= 16 and steps[module][kind] == 2.0**-s
            assert 0 <= cc.nn_expgol_cnt[module][kind] <= 12
    assert set(cc.nn_q_step["upsampling"]) == {"weight"}
    for spec in param_layout(cc.arch):
        p = cc.get_parameter(spec.name).detach().double()
        q = p * 2.0 ** cc.nn_q_step[spec.module][spec.kind]
        assert torch.equal(q, torch.round(q)) and q.abs().max() <= MAX_PARAM_INT
    rates, total = cc.get_network_rate()
    assert total == sum(v for kinds in rates.values() for v in kinds.values()) > 0
    q_loss = float(evaluate(fe, frame, LMBDA).loss)
    assert q_loss < float_loss * 1.5  # the network rate is included in q_loss


def test_export_state_matches_layout():
    raw = image(33, 47)
    fe = new_encoder(raw, hyper_latent_resolution=(2, 3), ifce_resolution=(0, 2), output_feature_ifce=2)
    with pytest.raises(EncodeError, match="quantize_model"):
        export_state(fe)
    frame = frame_from_raw(raw)
    train_phase(fe, frame, TrainerPhase(max_itr=10, freq_valid=10, quantize_model=True), LMBDA)
    st = export_state(fe)
    cc = fe.coolchic_encoder
    assert list(st.q_params) == [s.name for s in param_layout(st.arch)]
    for spec in param_layout(st.arch):
        q = st.q_params[spec.name]
        assert q.dtype == np.int32 and q.shape == spec.shape
        s = st.shifts[(spec.module, spec.kind)]
        np.testing.assert_array_equal(q * 2.0**-s, cc.get_parameter(spec.name).detach().numpy())
    assert [g.shape for g in st.latents] == [(c.h, c.w) for c in st.arch.coded_grids()]
    assert all(g.dtype == np.int32 for g in st.latents)
    assert st.latents[-1].shape == (33, 47)  # decoding order ends with the finest grid
    flat = cc.quantized_flat_latents()
    assert np.array_equal(np.concatenate([g.reshape(-1) for g in st.latents]), flat.detach().numpy().astype(np.int32))
    outs = arm_float_outputs(fe)
    assert [m.shape for m, _ in outs] == [g.shape for g in st.latents]
    assert all(ls.min() >= -4.5 and ls.max() <= 4.0 for _, ls in outs)
    rates = float_rate_per_grid(fe)
    with torch.no_grad():
        assert sum(rates) == pytest.approx(float(cc.latent_rate(flat).sum()), rel=1e-5)
    with torch.no_grad():  # moving a parameter off its grid is detected
        cc.arm.mlp[0].weight.add_(1e-3)
    with pytest.raises(EncodeError, match="not on its"):
        export_state(fe)


def tiny_preset(n_itr=10):
    warm = TrainerPhase(max_itr=3, freq_valid=3, noise_parameter=(2.0, 2.0))
    return EncoderPreset("tiny", (WarmupPhase(2, warm), WarmupPhase(1, warm)),
                         (TrainerPhase(max_itr=n_itr, freq_valid=5, schedule_lr=True, quantizer_noise_type="gaussian",
                                       noise_parameter=(0.2, 0.1)),
                          TrainerPhase(lr=1e-4, max_itr=4, freq_valid=4, quantizer_type="ste",
                                       quantizer_noise_type="none", softround_temperature=(1e-4, 1e-4),
                                       quantize_model=True)))


def test_encode_frame_workdir_progress_and_resume(tmp_path):
    raw = image(16, 24)
    param = CoolChicEncoderParameter(**SMALL)
    preset = tiny_preset()
    seen = []
    res = encode_frame(raw, param, preset, LMBDA, workdir=str(tmp_path), callback=seen.append)
    assert res.iterations == preset.total_iterations == 2 * 3 + 3 + 10 + 4
    assert res.frame_encoder.coolchic_encoder.is_quantized() and res.rate_nn_bpp > 0
    its = [p.iteration for p in seen]
    assert its == sorted(its) and seen[-1].total_iterations == preset.total_iterations
    assert any(p.validation for p in seen) and all(p.psnr_db > 0 for p in seen if p.validation)
    archi = (tmp_path / "archi.txt").read_text()
    assert "| arm.mlp.0.weight" in archi and "MAC per decoded pixel" in archi
    log = (tmp_path / "log.txt").read_text().splitlines()
    assert log[0] == f"coolchic {coolchic.__version__}: lambda 0.001, preset {preset.preset_name}, seed 0"
    assert [line.split(":")[0] for line in log[1:]] == ["warmup", "phase0", "phase1"]
    export_state(res.frame_encoder)

    # Interrupt during the last phase: the checkpoint after phase0 remains.
    wd = tmp_path / "resume"

    def stop_in_phase1(p):
        if p.stage == "phase1":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_frame(raw, param, preset, LMBDA, workdir=str(wd), callback=stop_in_phase1)
    assert os.path.exists(wd / "checkpoint.pt")
    resumed_stages = []
    res2 = encode_frame(raw, param, preset, LMBDA, workdir=str(wd), resume=True,
                        callback=lambda p: resumed_stages.append(p.stage))
    assert set(resumed_stages) == {"phase1"}
    assert res2.log[-2] == f"resumed after stage phase0 by coolchic {coolchic.__version__}"
    assert res2.log[-1].startswith("phase1")
    assert res2.iterations == preset.total_iterations
    with pytest.raises(EncodeError, match="another image"):
        encode_frame(raw, param, tiny_preset(12), LMBDA, workdir=str(wd), resume=True)


def test_resume_inside_a_phase_continues_as_if_never_stopped(tmp_path):
    """A checkpoint every 7 iterations of a 40-iteration phase: interrupted at
    iteration 20 and resumed from iteration 14, the encoder ends bit-identical
    to an uninterrupted run (optimizer, best state and random state restored)."""
    raw = image(16, 24)
    param = CoolChicEncoderParameter(**SMALL)
    main = dataclasses.replace(PHASE, max_itr=40, freq_valid=10)
    final = TrainerPhase(lr=1e-4, max_itr=4, freq_valid=4, quantizer_type="ste", quantizer_noise_type="none",
                         softround_temperature=(1e-4, 1e-4), quantize_model=True)
    preset = EncoderPreset("t", warmup=(), training_phases=(main, final))
    whole = encode_frame(raw, param, preset, LMBDA, workdir=str(tmp_path / "a"), checkpoint_every=7)

    def stop(p):
        if p.iteration >= 20:
            raise KeyboardInterrupt

    wd = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        encode_frame(raw, param, preset, LMBDA, workdir=wd, checkpoint_every=7, callback=stop)
    blob = torch.load(os.path.join(wd, "checkpoint.pt"), weights_only=True)
    assert blob["stage_done"] == -1 and blob["in_phase"]["itr"] == 14
    resumed = encode_frame(raw, param, preset, LMBDA, workdir=wd, resume=True, checkpoint_every=7)
    assert "resumed at iteration 14 of phase0" in resumed.log[-3]
    assert resumed.iterations == whole.iterations == 44
    a, b = export_state(whole.frame_encoder), export_state(resumed.frame_encoder)
    assert all(np.array_equal(x, y) for x, y in zip(a.latents, b.latents))
    assert all(np.array_equal(a.q_params[k], b.q_params[k]) for k in a.q_params)
    assert resumed.loss == whole.loss
