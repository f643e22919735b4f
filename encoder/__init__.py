"""The PyTorch encoder: overfits latents and three small networks (ARM,
upsampling, synthesis) to one frame, quantizes the networks, and hands the
integers to the bitstream writer (:func:`export_state`).

Entry points: :func:`encode_frame` (training with checkpoints),
:func:`quantize_model`, :func:`export_state`, and the configuration loaders of
:mod:`encoder.presets`. Nothing of the decoder runtime depends on this package.
"""

from .coolchic import CoolChicEncoder, CoolChicEncoderOutput, CoolChicEncoderParameter
from .cpu import configure_cpu
from .frame_encoder import (
    FrameData,
    FrameEncoder,
    FrameEncoderOutput,
    frame_from_raw,
    load_frame_encoder,
    planes_to_raw,
)
from .loss import LossFunctionOutput, loss_function
from .presets import (
    decoder_config_to_param,
    load_decoder_config,
    load_encoder_preset,
)
from .quantize_model import quantize_model
from .state import EncoderState, arm_float_outputs, export_state, float_rate_per_grid
from .train import (
    EncodeResult,
    EncoderPreset,
    ProgressInfo,
    TrainerPhase,
    WarmupPhase,
    encode_frame,
    evaluate,
    train_phase,
)

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
