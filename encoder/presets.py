"""Configuration files: decoder architectures (``cfg/dec/*.cfg``) and encoder
presets (``cfg/enc/*.cfg``), and the option names a user may override.

Files are ``key = value`` lines; ``;`` or ``#`` starts a comment; a key alone
on its line means ``key = true``. Bundled files are found by name with
importlib.resources (``cfg`` is a package), any other file by path. Every error
names the file (or "override") and the key.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from coolchic.decoder_runtime.errors import ConfigError

from .coolchic import CoolChicEncoderParameter
from .train import EncoderPreset, TrainerPhase, WarmupPhase

DECODER_CONFIGS = ("vlop", "lop", "mop", "hop", "vhop")
INTER_DECODER_CONFIGS = ("inter", "inter_b", "inter_b_fine", "inter_b_derived")  # P and B frames (encoder/video.py)
ENCODER_PRESETS = ("debug", "fast", "medium", "slow")


# ---- file reading -------------------------------------------------------------
def _read_cfg_text(kind: str, name_or_path: str) -> Tuple[str, str]:
    """(text, source) of a bundled config by name, or of a file by path."""
    p = str(name_or_path)
    if os.path.sep in p or p.endswith(".cfg") or os.path.exists(p):
        try:
            with open(p, encoding="utf-8") as f:
                return f.read(), p
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {p}: {e.strerror}") from None
    res = importlib.resources.files("coolchic.cfg").joinpath(kind, p + ".cfg")
    if not res.is_file():
        known = DECODER_CONFIGS + INTER_DECODER_CONFIGS if kind == "dec" else ENCODER_PRESETS
        raise ConfigError(f"unknown {'decoder configuration' if kind == 'dec' else 'encoder preset'} {p!r}; "
                          f"bundled: {', '.join(known)} (or give a path to a .cfg file)")
    return res.read_text(encoding="utf-8"), f"cfg/{kind}/{p}.cfg"


def parse_cfg_text(text: str, source: str) -> Dict[str, str]:
    """key -> raw value string; rejects repeated keys and lines without a key."""
    out: Dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split(";", 1)[0].split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not key:
            raise ConfigError(f"{source}:{n}: missing key in {line!r}")
        if key in out:
            raise ConfigError(f"{source}:{n}: key {key!r} given twice")
        out[key] = value if sep else "true"
    return out


# ---- value parsers ------------------------------------------------------------
def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _int(v: str) -> int:
    return int(v.strip())


def _float(v: str) -> float:
    return float(v.strip())


# Words that switch an optional decoder option off.
_DISABLED = ("none", "off", "")


def _optional_int(v: str) -> Optional[int]:
    """An integer; 'none' disables."""
    return None if v.strip().lower() in _DISABLED else _int(v)


def _range(v: str) -> Optional[Tuple[int, int]]:
    """'a-b' (or 'a,b'); 'none' disables."""
    s = v.strip().lower()
    if s in _DISABLED:
        return None
    sep = "-" if "-" in s else ","
    a, b = s.split(sep)
    return (int(a), int(b))


def _float_pair(v: str) -> Tuple[float, float]:
    parts = [float(x) for x in v.split(",")]
    if len(parts) == 1:
        return (parts[0], parts[0])
    if len(parts) != 2:
        raise ValueError("expected one or two numbers")
    return (parts[0], parts[1])


# ---- decoder configuration ----------------------------------------------------
def _arm(v: str) -> Dict[str, Any]:
    parts = v.split(",")
    if len(parts) != 2:
        raise ValueError("expected <context>,<hidden layers>, e.g. 16,2")
    return {"spatial_context_arm": int(parts[0]), "n_hidden_layers_arm": int(parts[1])}


def _layers(v: str) -> Dict[str, Any]:
    layers = [s.strip() for s in v.split(",") if s.strip()]
    if not layers:
        raise ValueError("expected comma-separated <out>-<kernel>-<linear|residual>-<relu|none> layers")
    return {"layers_synthesis": layers}


def _n_ft_per_res(v: str) -> Dict[str, Any]:
    fts = [int(x) for x in v.split(",")]
    if not fts or any(f != 1 for f in fts):
        raise ValueError("only one feature per resolution is supported, e.g. 1,1,1,1,1,1,1")
    return {"latent_resolution": (0, len(fts) - 1)}


def _field(name: str, conv: Callable[[str], Any]) -> Callable[[str], Dict[str, Any]]:
    return lambda v: {name: conv(v)}


# option name -> parser returning CoolChicEncoderParameter fields
DECODER_OPTIONS: Dict[str, Callable[[str], Dict[str, Any]]] = {
    "arm": _arm,
    "layers_synthesis": _layers,
    "n_ft_per_res": _n_ft_per_res,
    "latent_resolution": _field("latent_resolution", _range),
    "hyper_latent_resolution": _field("hyper_latent_resolution", _range),
    "hyperlatent_resolution": _field("hyper_latent_resolution", _range),  # the reference's cfg spelling
    "upsampling_kernel_size": _field("ups_k_size", _int),
    "ups_k_size": _field("ups_k_size", _int),
    "ups_preconcat_k_size": _field("ups_preconcat_k_size", _int),
    "static_upsampling_kernel": _field("static_upsampling_kernel", _bool),
    "ifce_resolution": _field("ifce_resolution", _range),
    "output_feature_ifce": _field("output_feature_ifce", _int),
    "ifce_stack": _field("ifce_stack", _bool),
    "stack_min_pixels": _field("stack_min_pixels", _optional_int),
    "linear_stabiliser_arm": _field("linear_stabiliser_arm", _bool),
    "linear_stabiliser_synth": _field("linear_stabiliser_synth", _bool),
    "common_randomness": _field("flag_common_randomness", _bool),
    "flag_common_randomness": _field("flag_common_randomness", _bool),
    "common_randomness_seed": _field("common_randomness_seed", _int),
    "final_upsampling_type": _field("final_upsampling_type", lambda v: v.strip()),
    "encoder_gain": _field("encoder_gain", _int),
    "spatial_context_arm": _field("spatial_context_arm", _int),
    "n_hidden_layers_arm": _field("n_hidden_layers_arm", _int),
}
_PARAM_FIELDS = {f.name for f in dataclasses.fields(CoolChicEncoderParameter)} - {"img_size"}


def _decoder_entry(key: str, value: Any, source: str) -> Dict[str, Any]:
    """Fields set by one option; ``value`` is a string, or already typed for field names."""
    if key not in DECODER_OPTIONS and key not in _PARAM_FIELDS:
        raise ConfigError(f"{source}: unknown decoder option {key!r}; known: {', '.join(sorted(DECODER_OPTIONS))}")
    if not isinstance(value, str):
        if key in _PARAM_FIELDS:
            return {key: value}
        value = ",".join(str(x) for x in value) if isinstance(value, (list, tuple)) else str(value)
    try:
        return DECODER_OPTIONS[key](value) if key in DECODER_OPTIONS else {key: value}
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: bad value {value!r} for {key!r}: {e}") from None


def load_decoder_config(name_or_path: str) -> Dict[str, Any]:
    """CoolChicEncoderParameter fields set by a decoder config (bundled name or path)."""
    text, source = _read_cfg_text("dec", name_or_path)
    fields: Dict[str, Any] = {}
    for key, value in parse_cfg_text(text, source).items():
        fields.update(_decoder_entry(key, value, source))
    return fields


def decoder_config_to_param(
    cfg_dict: Mapping[str, Any],
    overrides: Optional[Mapping[str, Any]] = None,
    img_size: Optional[Tuple[int, int]] = None,
) -> CoolChicEncoderParameter:
    """Parameter from a loaded config, then ``overrides`` (option or field names).

    The result is validated now (with a placeholder size if ``img_size`` is None)
    so that a bad option fails before any training.
    """
    fields: Dict[str, Any] = {}
    for key, value in cfg_dict.items():
        fields.update(_decoder_entry(key, value, "decoder configuration"))
    for key, value in (overrides or {}).items():
        fields.update(_decoder_entry(key, value, "override"))
    if img_size is not None:
        fields["img_size"] = (int(img_size[0]), int(img_size[1]))
    try:
        param = CoolChicEncoderParameter(**fields)
    except TypeError as e:
        raise ConfigError(f"bad decoder configuration: {e}") from None
    check = param if img_size is not None else param.with_image_size(512, 768)
    check.to_arch("rgb", 8)
    return param


# ---- encoder presets ----------------------------------------------------------
def _auto_or_float(v: str) -> Optional[float]:
    return None if v.strip().lower() == "auto" else float(v)


ENCODER_OPTIONS: Dict[str, Callable[[str], Any]] = {
    "preset_name": lambda v: v.strip(),
    "n_itr": _int,  # main phase
    "start_lr": _float,
    "patience": _int,
    "freq_valid": _int,
    "schedule_lr": _bool,
    "softround_temperature": _float_pair,
    "noise_parameter": _float_pair,
    "quantizer_noise_type": lambda v: v.strip(),
    "warmup": lambda v: v.strip(),  # "5x400,2x400": candidates x iterations per phase, or "none"
    "warmup_lr": _float,
    "warmup_noise_parameter": _auto_or_float,  # "auto": from lambda (optim.warmup_noise_level)
    "warmup_softround_temperature": _float,
    "final_itr": _int,
    "final_lr": _float,
    "final_quantizer": lambda v: v.strip(),  # hardround (latents frozen) or ste
    "rdoq": _bool,  # rate-distortion optimised network quantization after quantize_model
    "network_rate_weight": _float,  # weight of the networks' estimated rate in the training loss
}
# Earlier spellings of the final phase's options.
ENCODER_OPTION_ALIASES = {"ste_itr": "final_itr", "ste_lr": "final_lr"}


def _warmup_spec(v: str) -> List[Tuple[int, int]]:
    if v.lower() in ("none", "0", ""):
        return []
    out = []
    for part in v.split(","):
        c, _, n = part.strip().lower().partition("x")
        out.append((int(c), int(n)))
        if out[-1][0] < 1 or out[-1][1] < 0:
            raise ValueError("candidates must be >= 1 and iterations >= 0")
    if any(b[0] > a[0] for a, b in zip(out, out[1:])):
        raise ValueError("the number of candidates cannot grow from one warm-up phase to the next")
    return out


def load_encoder_preset(name_or_path: str) -> EncoderPreset:
    """EncoderPreset from a bundled preset name (debug, fast, medium, slow) or a path.

    Layout (the reference Cool-chic 5.0.1's intra recipe): warm-up phases at
    constant learning rate with Gaussian noise whose level follows lambda; one
    main phase with cosine learning rate and soft round (temperature and noise
    decreasing linearly); a final phase at a low learning rate with hard-rounded,
    frozen latents, ending with network quantization. SOAP trains the networks
    (betas 0.95, 0.95; preconditioner refreshed every step in the warm-up, every
    10 steps after), Adam the latents (betas 0.725, 0.97 in the warm-up, 0.9,
    0.999 after). ``rdoq = false`` skips the rate-distortion optimised
    quantization of the networks that follows ``quantize_model``. After the
    warm-up the loss counts the networks' rate too (a differentiable estimate,
    ``nn_rate.NetworkRateProxy``) with weight ``network_rate_weight`` (1: the
    same lambda as the latents; 0: left out, as the reference does).
    """
    text, source = _read_cfg_text("enc", name_or_path)
    raw = parse_cfg_text(text, source)
    v: Dict[str, Any] = {
        "preset_name": os.path.splitext(os.path.basename(source))[0],
        "n_itr": 10000,
        "start_lr": 1e-2,
        "patience": 5000,
        "freq_valid": 100,
        "schedule_lr": True,
        "softround_temperature": (0.35, 0.08),
        "noise_parameter": (0.22, 0.15),
        "quantizer_noise_type": "gaussian",
        "warmup": "5x400,2x400",
        "warmup_lr": None,
        "warmup_noise_parameter": None,
        "warmup_softround_temperature": 0.35,
        "final_itr": 500,
        "final_lr": 1e-4,
        "final_quantizer": "hardround",
        "rdoq": True,
        "network_rate_weight": 1.0,
    }
    for key, value in raw.items():
        key = ENCODER_OPTION_ALIASES.get(key, key)
        if key not in ENCODER_OPTIONS:
            raise ConfigError(f"{source}: unknown encoder preset option {key!r}; "
                              f"known: {', '.join(sorted(ENCODER_OPTIONS))}")
        try:
            v[key] = ENCODER_OPTIONS[key](value)
        except ValueError as e:
            raise ConfigError(f"{source}: bad value {value!r} for {key!r}: {e}") from None
    if v["final_quantizer"] not in ("hardround", "ste"):
        raise ConfigError(f"{source}: final_quantizer must be hardround or ste, got {v['final_quantizer']!r}")
    try:
        warm = _warmup_spec(v["warmup"])
    except ValueError as e:
        raise ConfigError(f"{source}: bad value {v['warmup']!r} for 'warmup': {e}") from None
    warm_lr = v["warmup_lr"] or v["start_lr"]
    wn = v["warmup_noise_parameter"]
    t_wu = v["warmup_softround_temperature"]
    try:
        warmup = tuple(
            WarmupPhase(c, TrainerPhase(lr=warm_lr, max_itr=n, freq_valid=max(n, 1), patience=max(n, 1),
                                        softround_temperature=(t_wu, t_wu),
                                        noise_parameter=None if wn is None else (wn, wn),
                                        quantizer_noise_type="gaussian", quantizer_type="softround",
                                        betas_latent=(0.725, 0.97), precondition_frequency_model=1))
            for c, n in warm
        )
        main = TrainerPhase(lr=v["start_lr"], max_itr=v["n_itr"], freq_valid=v["freq_valid"],
                            patience=v["patience"], schedule_lr=v["schedule_lr"],
                            softround_temperature=v["softround_temperature"],
                            noise_parameter=v["noise_parameter"], quantizer_noise_type=v["quantizer_noise_type"],
                            quantizer_type="softround", network_rate_weight=v["network_rate_weight"])
        n_fin = v["final_itr"]
        final = TrainerPhase(lr=v["final_lr"], max_itr=n_fin, freq_valid=min(v["freq_valid"], max(n_fin, 1)),
                             patience=max(n_fin, 1), schedule_lr=True,
                             softround_temperature=(1e-4, 1e-4), noise_parameter=(1.0, 1.0),
                             quantizer_noise_type="none", quantizer_type=v["final_quantizer"],
                             quantize_model=True, rdoq=v["rdoq"], network_rate_weight=v["network_rate_weight"])
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return EncoderPreset(v["preset_name"], warmup, (main, final))
