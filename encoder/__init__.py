"""The PyTorch encoder: overfits latents and three small networks (ARM,
upsampling, synthesis) to one frame, quantizes the networks, and hands the
integers to the bitstream writer (:func:`export_state`).

Entry points: :func:`encode_frame` (training with checkpoints),
:func:`quantize_model`, :func:`export_state`, and the configuration loaders of
:mod:`encoder.presets`. Nothing of the decoder runtime depends on this package.
"""

import importlib

# Names are loaded on first use (PEP 562) so that ``coolchic-encode`` can start,
# and say that PyTorch is missing, on an install of the runtime alone.
_EXPORTS = {
    "CoolChicEncoder": "coolchic",
    "CoolChicEncoderOutput": "coolchic",
    "CoolChicEncoderParameter": "coolchic",
    "configure_cpu": "cpu",
    "FrameData": "frame_encoder",
    "FrameEncoder": "frame_encoder",
    "FrameEncoderOutput": "frame_encoder",
    "frame_from_raw": "frame_encoder",
    "load_frame_encoder": "frame_encoder",
    "planes_to_raw": "frame_encoder",
    "LossFunctionOutput": "loss",
    "loss_function": "loss",
    "decoder_config_to_param": "presets",
    "load_decoder_config": "presets",
    "load_encoder_preset": "presets",
    "quantize_model": "quantizemodel",
    "EncoderState": "state",
    "arm_float_outputs": "state",
    "export_state": "state",
    "float_rate_per_grid": "state",
    "EncodeResult": "train",
    "EncoderPreset": "train",
    "ProgressInfo": "train",
    "TrainerPhase": "train",
    "WarmupPhase": "train",
    "encode_frame": "train",
    "evaluate": "train",
    "train_phase": "train",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'encoder' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = [
    "CoolChicEncoder",
    "CoolChicEncoderOutput",
    "CoolChicEncoderParameter",
    "EncodeResult",
    "EncoderPreset",
    "EncoderState",
    "FrameData",
    "FrameEncoder",
    "FrameEncoderOutput",
    "LossFunctionOutput",
    "ProgressInfo",
    "TrainerPhase",
    "WarmupPhase",
    "arm_float_outputs",
    "configure_cpu",
    "decoder_config_to_param",
    "encode_frame",
    "evaluate",
    "export_state",
    "float_rate_per_grid",
    "frame_from_raw",
    "load_decoder_config",
    "load_encoder_preset",
    "load_frame_encoder",
    "loss_function",
    "planes_to_raw",
    "quantize_model",
    "train_phase",
]
