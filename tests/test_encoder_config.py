"""Configuration files, option overrides and the errors a user gets."""

import pytest

from coolchic.decoder_runtime.errors import ConfigError
from coolchic.encoder.complexity import total_mac_per_pixel
from coolchic.encoder.coolchic import CoolChicEncoder, CoolChicEncoderParameter
from coolchic.encoder.presets import (
    DECODER_CONFIGS,
    ENCODER_PRESETS,
    decoder_config_to_param,
    load_decoder_config,
    load_encoder_preset,
)


def arch_of(**kw):
    return CoolChicEncoderParameter(img_size=(32, 48), **kw).to_arch("rgb", 8)


EXPECTED_MAC = {"vlop": (250, 400), "lop": (450, 750), "mop": (1000, 1300), "hop": (1600, 2000),
                "vhop": (2600, 3200)}


@pytest.mark.parametrize("name", DECODER_CONFIGS)
def test_bundled_decoder_configs_span_the_complexity_range(name):
    param = decoder_config_to_param(load_decoder_config(name), img_size=(512, 768))
    mac = total_mac_per_pixel(param.to_arch("rgb", 8))
    lo, hi = EXPECTED_MAC[name]
    assert lo <= mac <= hi, (name, mac)


def test_mop_content_and_reference_overrides():
    cfg = load_decoder_config("mop")
    assert cfg["spatial_context_arm"] == 16 and cfg["n_hidden_layers_arm"] == 2
    assert cfg["latent_resolution"] == (0, 6) and cfg["ifce_resolution"] == (0, 2)
    p = decoder_config_to_param(cfg, {"arm": "24,1", "upsampling_kernel_size": "4", "n_ft_per_res": "1,1,1",
                                      "static_upsampling_kernel": "true",
                                      "layers_synthesis": "8-1-linear-relu,X-1-linear-none"})
    assert (p.spatial_context_arm, p.n_hidden_layers_arm, p.ups_k_size) == (24, 1, 4)
    assert p.latent_resolution == (0, 2) and p.static_upsampling_kernel
    assert p.layers_synthesis == ["8-1-linear-relu", "X-1-linear-none"]
    assert p.img_size is None


def test_decoder_config_from_path(tmp_path):
    f = tmp_path / "mine.cfg"
    f.write_text("; comment\narm = 8,1  ; trailing comment\nlayers_synthesis = X-1-linear-none\n"
                 "n_ft_per_res = 1,1\nhyper_latent_resolution = 1-1\ncommon_randomness\n")
    p = decoder_config_to_param(load_decoder_config(str(f)), img_size=(16, 16))
    assert p.hyper_latent_resolution == (1, 1) and p.flag_common_randomness
    assert CoolChicEncoder(p).arch.n_latent_grids == 2


def test_unknown_key_names_file_and_key(tmp_path):
    f = tmp_path / "bad.cfg"
    f.write_text("arm = 16,2\ndim_arm = 8\n")
    with pytest.raises(ConfigError, match=r"bad\.cfg.*dim_arm"):
        load_decoder_config(str(f))
    with pytest.raises(ConfigError, match="override.*unknown decoder option 'armm'"):
        decoder_config_to_param(load_decoder_config("mop"), {"armm": "8,1"})
    g = tmp_path / "enc.cfg"
    g.write_text("n_itr = 10\nnb_itr = 5\n")
    with pytest.raises(ConfigError, match=r"enc\.cfg.*nb_itr"):
        load_encoder_preset(str(g))


def test_bad_values_name_the_key(tmp_path):
    f = tmp_path / "v.cfg"
    f.write_text("arm = 16\n")
    with pytest.raises(ConfigError, match="v.cfg.*'arm'"):
        load_decoder_config(str(f))
    f.write_text("n_ft_per_res = 1,2,1\n")
    with pytest.raises(ConfigError, match="one feature per resolution"):
        load_decoder_config(str(f))
    f.write_text("arm = 16,2\narm = 8,1\n")
    with pytest.raises(ConfigError, match="given twice"):
        load_decoder_config(str(f))
    with pytest.raises(ConfigError, match="unknown decoder configuration 'nope'"):
        load_decoder_config("nope")


@pytest.mark.parametrize("layers,msg", [
    (["16-1-linear"], "expected <out>-<kernel>"),
    (["16-1-conv-relu"], "linear or residual"),
    (["16-2-linear-relu", "X-1-linear-none"], "odd"),
    (["a-1-linear-relu", "X-1-linear-none"], "not an integer"),
    (["16-1-linear-gelu", "X-1-linear-none"], "relu or none"),
    (["16-1-linear-relu"], "needs 3"),
    (["16-3-residual-relu", "X-1-linear-none"], "residual"),
])
def test_malformed_synthesis_layers(layers, msg):
    with pytest.raises(ConfigError, match=msg):
        arch_of(layers_synthesis=layers)


@pytest.mark.parametrize("kw,msg", [
    (dict(spatial_context_arm=12), "multiple of 8"),
    (dict(spatial_context_arm=48), "multiple of 8"),
    (dict(ups_k_size=7), "even"),
    (dict(ups_k_size=2), ">= 4"),
    (dict(ups_preconcat_k_size=4), "odd"),
    (dict(latent_resolution=(2, 1)), "latent_resolution"),
    (dict(ifce_resolution=(0, 2), output_feature_ifce=0), "output_feature_ifce"),
    (dict(final_upsampling_type="lanczos"), "final_upsampling_type"),
    (dict(encoder_gain=0), "encoder_gain"),
    (dict(layers_synthesis="X-1-linear-none"), "list of layer strings"),
])
def test_bad_architecture_parameters(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        arch_of(**kw)


def test_missing_image_size():
    with pytest.raises(ConfigError, match="img_size"):
        CoolChicEncoderParameter().to_arch()


def test_override_validated_before_training():
    with pytest.raises(ConfigError, match="multiple of 8"):
        decoder_config_to_param(load_decoder_config("mop"), {"arm": "10,2"})


@pytest.mark.parametrize("name", ENCODER_PRESETS)
def test_encoder_presets(name):
    p = load_encoder_preset(name)
    assert p.preset_name == name
    final = p.training_phases[-1]
    assert final.quantize_model and final.rdoq and final.quantizer_type == "hardround"
    main = p.training_phases[0]
    assert main.schedule_lr and main.quantizer_type == "softround"
    assert main.softround_temperature == (0.35, 0.08)
    expected = {"debug": (20, 60), "fast": (1600, 1600), "medium": (10000, 10000), "slow": (30000, 30000)}[name]
    assert expected[0] <= p.total_iterations <= expected[1]
    assert p.warmup[0].candidates >= p.warmup[-1].candidates


def test_parameter_roundtrip_through_dict():
    p = decoder_config_to_param(load_decoder_config("hop"), img_size=(20, 30))
    assert CoolChicEncoderParameter.from_dict(p.to_dict()) == p
    with pytest.raises(ConfigError, match="unknown"):
        CoolChicEncoderParameter.from_dict({"bogus": 1})


def test_encoder_preset_options_and_old_spellings(tmp_path):
    g = tmp_path / "p.cfg"
    g.write_text("n_itr = 30\nwarmup = none\nste_itr = 7\nste_lr = 2e-4\nrdoq = false\n"
                 "warmup_noise_parameter = 0.3\nfinal_quantizer = ste\n")
    p = load_encoder_preset(str(g))
    main, final = p.training_phases
    assert (main.max_itr, final.max_itr, final.lr, final.rdoq, final.quantizer_type) == (30, 7, 2e-4, False, "ste")
    assert p.warmup == ()
    g.write_text("final_quantizer = softround\n")
    with pytest.raises(ConfigError, match="final_quantizer"):
        load_encoder_preset(str(g))


@pytest.mark.parametrize("golden", ["golden_v1.cool", "golden_v3.cool"])
def test_decoder_options_rebuild_the_architecture_of_a_file(golden):
    """``decoder_options`` (the Pillow plugin's ``dec_cfg``) given back to the
    encoder rebuilds the file's architecture, the stacked IFCE included."""
    from pathlib import Path

    from coolchic.decoder_runtime.arch import decoder_options
    from coolchic.decoder_runtime.bitstream import read_bitstream

    arch = read_bitstream((Path(__file__).parent / "data" / golden).read_bytes()).arch
    opts = decoder_options(arch)
    assert opts["ifce_stack"] == str(arch.ifce_stack).lower()
    param = decoder_config_to_param({}, opts, arch.img_size)
    rebuilt = param.to_arch(arch.frame_data_type, arch.bitdepth, arch.frame_type)
    assert rebuilt == arch


def test_stack_min_pixels_drops_the_stacked_ifce_and_hyper_latents_on_small_images():
    opts = {"ifce_stack": "true", "hyper_latent_resolution": "4-6", "stack_min_pixels": "262144"}
    small = decoder_config_to_param(load_decoder_config("mop"), opts, (256, 256)).to_arch()
    large = decoder_config_to_param(load_decoder_config("mop"), opts, (512, 512)).to_arch()
    assert (small.ifce_stack, small.hyper_latent_resolution) == (False, None)
    assert (large.ifce_stack, large.hyper_latent_resolution) == (True, (4, 6))
    with pytest.raises(ConfigError, match="stack_min_pixels"):
        decoder_config_to_param(load_decoder_config("mop"), {"stack_min_pixels": "-1"}, (8, 8)).to_arch()


def test_shipped_mop_stacks_from_a_quarter_megapixel_and_hop_always():
    # A 256x256 crop keeps mop's version 1 form; a whole Kodak image (393 216 pixels) takes the
    # stack in mop. hop is the reference's hop, stacked at every size (docs/compression.md).
    mop = load_decoder_config("mop")
    crop = decoder_config_to_param(mop, None, (256, 256)).to_arch()
    whole = decoder_config_to_param(mop, None, (512, 768)).to_arch()
    assert (crop.ifce_stack, crop.hyper_latent_resolution) == (False, None)
    assert (whole.ifce_stack, whole.hyper_latent_resolution) == (True, (4, 6))
    for size in ((256, 256), (512, 768)):
        hop = decoder_config_to_param(load_decoder_config("hop"), None, size).to_arch()
        assert (hop.ifce_stack, hop.hyper_latent_resolution, hop.ifce_features) == (True, (4, 6), 6)
        assert (hop.spatial_context_arm, hop.linear_stabiliser_arm, hop.linear_stabiliser_synth) == (16, True, True)
