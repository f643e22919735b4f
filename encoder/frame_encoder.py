"""FrameEncoder: everything needed to encode one frame, i.e. a CoolChicEncoder
plus the frame-level conventions (data type, bit depth, yuv420 chroma layout,
output rounding), and the frame tensors it is trained against.

An intra (I) frame's decoded image is the Cool-chic's output. A P or B frame's
Cool-chic also outputs motion, a mask and (B) a blend, which the
``InterCodingModule`` (``inter.py``) applies to the decoded reference frames,
given to ``forward(reference_frames=...)`` or held by ``set_references``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from coolchic.decoder_runtime.arch import FRAME_DATA_TYPES, FRAME_TYPES, N_REFERENCES
from coolchic.decoder_runtime.errors import ConfigError
from coolchic.decoder_runtime.frame import RawImage

from .coolchic import CoolChicEncoder, CoolChicEncoderParameter
from .inter import InterCodingModule

SAVE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class FrameData:
    """A frame as training targets, values in [0, 1].

    ``planes`` groups planes of equal size: one (1, C, H, W) tensor for rgb,
    yuv444 and gray; (Y (1, 1, H, W), UV (1, 2, H/2, W/2)) for yuv420.
    ``refs_data`` will hold the decoded reference frames of P/B frames.
    """

    planes: Tuple[Tensor, ...]
    frame_data_type: str
    bitdepth: int
    refs_data: Tuple[Tensor, ...] = ()

    @property
    def height(self) -> int:
        return int(self.planes[0].shape[-2])

    @property
    def width(self) -> int:
        return int(self.planes[0].shape[-1])

    def to(self, device) -> "FrameData":
        return FrameData(tuple(p.to(device) for p in self.planes), self.frame_data_type, self.bitdepth,
                         tuple(r.to(device) for r in self.refs_data))


def frame_from_raw(raw: RawImage, device="cpu") -> FrameData:
    """Integer planes -> float planes ``value / (2^bitdepth - 1)``."""
    scale = 1.0 / raw.max_value

    def t(arrays: Sequence[np.ndarray]) -> Tensor:
        x = np.stack([np.asarray(a, dtype=np.float32) for a in arrays])[None] * np.float32(scale)
        return torch.from_numpy(x).to(device)

    if raw.frame_data_type == "yuv420":
        planes = (t(raw.planes[:1]), t(raw.planes[1:]))
    else:
        planes = (t(raw.planes),)
    return FrameData(planes, raw.frame_data_type, raw.bitdepth)


def as_frame_data(frame, device=None) -> FrameData:
    if isinstance(frame, RawImage):
        return frame_from_raw(frame, device or "cpu")
    if isinstance(frame, FrameData):
        return frame if device is None else frame.to(device)
    raise TypeError(f"expected a RawImage or FrameData, got {type(frame).__name__}")


def dense_to_planes(x: Tensor, frame_data_type: str) -> Tuple[Tensor, ...]:
    """Dense (1, n_out, H, W) output -> plane groups; yuv420 keeps even rows/columns of U, V."""
    if frame_data_type == "yuv420":
        return (x[:, :1], x[:, 1:, ::2, ::2])
    return (x,)


def planes_to_raw(planes: Sequence[Tensor], frame_data_type: str, bitdepth: int) -> RawImage:
    """Float plane groups in [0, 1] -> integer RawImage (what the decoder writes)."""
    maxv = (1 << bitdepth) - 1
    dtype = np.uint8 if bitdepth == 8 else np.uint16
    arrays: List[np.ndarray] = []
    for group in planes:
        q = torch.round(torch.clamp(group.detach(), 0.0, 1.0) * maxv).cpu().numpy()[0]
        arrays.extend(q[i].astype(dtype) for i in range(q.shape[0]))
    return RawImage(tuple(arrays), frame_data_type, bitdepth)


@dataclass
class FrameEncoderOutput:
    """``decoded_image``: (1, n_out, H, W) in [0, 1] (rounded to the bit depth in eval
    mode); ``decoded_planes``: the same in the frame's layout (see FrameData);
    ``rate``: bits of each coded latent value."""

    decoded_image: Tensor
    decoded_planes: Tuple[Tensor, ...]
    rate: Tensor
    additional_data: Dict[str, Any] = field(default_factory=dict)


class FrameEncoder(nn.Module):
    def __init__(
        self,
        coolchic_encoder_param: CoolChicEncoderParameter,
        frame_type: str = "I",
        frame_data_type: str = "rgb",
        bitdepth: int = 8,
    ):
        super().__init__()
        if frame_type not in FRAME_TYPES:
            raise ConfigError(f"frame_type must be one of {FRAME_TYPES}, got {frame_type!r}")
        if frame_data_type not in FRAME_DATA_TYPES:
            raise ConfigError(f"frame_data_type must be one of {FRAME_DATA_TYPES}, got {frame_data_type!r}")
        self.frame_type = frame_type
        self.frame_data_type = frame_data_type
        self.bitdepth = int(bitdepth)
        self.coolchic_encoder_param = coolchic_encoder_param
        self.coolchic_encoder = CoolChicEncoder(coolchic_encoder_param, frame_data_type, self.bitdepth, frame_type)
        self.inter_coding_module = InterCodingModule(frame_type) if frame_type != "I" else None
        self.references: Tuple[Tensor, ...] = ()
        # (target motion (1, 2 or 4, H, W), weight): a training-only pull of the
        # motion towards an optical-flow estimate; None once training is on its own.
        self.motion_guidance: Optional[Tuple[Tensor, float]] = None

    def set_references(self, references: Sequence[Tensor]) -> None:
        """The decoded reference frames, dense (1, C, H, W) in [0, 1] (yuv420 chroma repeated 2x2)."""
        n = N_REFERENCES[self.frame_type]
        if len(references) != n:
            raise ConfigError(f"a {self.frame_type} frame needs {n} reference frame(s), got {len(references)}")
        self.references = tuple(references)

    @property
    def arch(self):
        return self.coolchic_encoder.arch

    def forward(
        self,
        reference_frames: Optional[List[Tensor]] = None,
        quantizer_noise_type: str = "kumaraswamy",
        quantizer_type: str = "softround",
        soft_round_temperature=0.3,
        noise_parameter=1.0,
        AC_MAX_VAL: int = -1,
        flag_additional_outputs: bool = False,
    ) -> FrameEncoderOutput:
        out = self.coolchic_encoder(
            quantizer_noise_type=quantizer_noise_type,
            quantizer_type=quantizer_type,
            soft_round_temperature=soft_round_temperature,
            noise_parameter=noise_parameter,
            AC_MAX_VAL=AC_MAX_VAL,
            flag_additional_outputs=flag_additional_outputs,
        )
        extra = dict(out.additional_data or {})
        if self.training and self.motion_guidance is not None and self.inter_coding_module is not None:
            target, weight = self.motion_guidance
            flows = self.inter_coding_module.flows(out.raw_out)
            extra["guidance_loss"] = weight * torch.mean((flows - target) ** 2)
        return self.postprocess(out.raw_out, out.rate, extra, reference_frames)

    def postprocess(self, raw_out: Tensor, rate: Tensor, additional_data=None,
                    reference_frames: Optional[Sequence[Tensor]] = None) -> FrameEncoderOutput:
        x = raw_out
        if self.inter_coding_module is not None:
            refs = tuple(reference_frames) if reference_frames else self.references
            if not refs:
                raise ConfigError(f"a {self.frame_type} frame needs its reference frames (set_references)")
            x = self.inter_coding_module(raw_out, refs)
        if not self.training:
            # What the decoder writes to the file: integers at the frame's bit depth.
            maxv = float((1 << self.bitdepth) - 1)
            x = torch.round(x * maxv) / maxv
        x = torch.clamp(x, 0.0, 1.0)
        return FrameEncoderOutput(x, dense_to_planes(x, self.frame_data_type), rate, additional_data or {})

    # ---- reference API -------------------------------------------------------
    def get_param(self):
        return self.coolchic_encoder.get_param()

    def set_param(self, param) -> None:
        self.coolchic_encoder.set_param(param)

    def reinitialize_parameters(self) -> None:
        self.coolchic_encoder.reinitialize_parameters()

    def set_to_train(self) -> None:
        """Training mode: float output (only the output rounding depends on it)."""
        self.train()

    def set_to_eval(self) -> None:
        """Test mode: output rounded to the bit depth, as the decoder writes it."""
        self.eval()

    def to_device(self, device) -> None:
        self.to(device)

    def save(self) -> io.BytesIO:
        """Everything needed to rebuild this FrameEncoder, in a bytes buffer."""
        cc = self.coolchic_encoder
        blob = {
            "format_version": SAVE_FORMAT_VERSION,
            "coolchic_encoder_param": self.coolchic_encoder_param.to_dict(),
            "frame_type": self.frame_type,
            "frame_data_type": self.frame_data_type,
            "bitdepth": self.bitdepth,
            "state_dict": {k: v.detach().cpu() for k, v in cc.state_dict().items()},
            "nn_q_step": cc.nn_q_step,
            "nn_expgol_cnt": cc.nn_expgol_cnt,
        }
        buf = io.BytesIO()
        torch.save(blob, buf)
        buf.seek(0)
        return buf


def load_frame_encoder(raw_bytes: io.BytesIO) -> FrameEncoder:
    """Rebuild a FrameEncoder from the output of ``FrameEncoder.save()``."""
    raw_bytes.seek(0)
    blob = torch.load(raw_bytes, map_location="cpu", weights_only=True)
    if blob.get("format_version") != SAVE_FORMAT_VERSION:
        raise ConfigError(f"unsupported saved FrameEncoder format {blob.get('format_version')!r}")
    param = CoolChicEncoderParameter.from_dict(blob["coolchic_encoder_param"])
    fe = FrameEncoder(param, blob["frame_type"], blob["frame_data_type"], blob["bitdepth"])
    fe.coolchic_encoder.load_state_dict(blob["state_dict"], strict=True)
    fe.coolchic_encoder.nn_q_step = {m: dict(v) for m, v in blob["nn_q_step"].items()}
    fe.coolchic_encoder.nn_expgol_cnt = {m: dict(v) for m, v in blob["nn_expgol_cnt"].items()}
    return fe
