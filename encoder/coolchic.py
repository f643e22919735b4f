"""Cool-chic for one frame on the training side: latent grids, entropy model
(ARM + IFCE), upsampling and synthesis, with the reference encoder's public API.

``CoolChicEncoderParameter`` is what a user writes (via cfg files or options);
``to_arch`` turns it into the ``DecoderArch`` that the bitstream carries and the
runtime rebuilds. Every transmitted tensor is a torch Parameter with exactly the
name and shape of ``decoder_runtime.arch.param_layout``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coolchic.decoder_runtime.arch import (
    FRAME_TYPES,
    DecoderArch,
    modules_to_send,
    n_output_channels,
    param_layout,
    parse_synthesis_layer,
)
from coolchic.decoder_runtime.common_randomness import common_randomness_grids
from coolchic.decoder_runtime.errors import ConfigError
from coolchic.decoder_runtime.tiling import RowWindow

from . import complexity
from .arm import ArmIndices, ArmMLP, Ifce, arm_input, build_arm_indices, laplace_rate, split_flat
from .arm_chunks import ArmChunks, build_arm_chunks, chunked_arm_outputs, chunked_latent_rate, rate_backward
from .nn_rate import exp_golomb_nbits, quantize_to_int
from .quantizer import DEFAULT_ENCODER_GAIN, LATENT_LIMIT, quantize
from .synthesis import Synthesis
from .tiling import TilePlan, render_banded, synthesize_banded
from .upsampling import Upsampling

# {module: {"weight": x, "bias": y}}, as the reference's DescriptorCoolChic.
DescriptorCoolChic = Dict[str, Dict[str, Any]]


def _pair(value, name: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    try:
        a, b = value
        return (int(a), int(b))
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair of integers (low, high) or None, got {value!r}") from None


@dataclass(frozen=True)
class CoolChicEncoderParameter:
    """Architecture of a CoolChicEncoder (field names of the reference encoder)."""

    layers_synthesis: List[str] = field(
        default_factory=lambda: ["16-1-linear-relu", "X-1-linear-none", "X-3-residual-relu", "X-3-residual-none"]
    )
    linear_stabiliser_synth: bool = False
    ups_k_size: int = 8
    ups_preconcat_k_size: int = 7
    ifce_resolution: Optional[Tuple[int, int]] = None
    output_feature_ifce: int = 0
    ifce_stack: bool = False
    # The stacked IFCE and the hyper-latents only for images of at least this
    # many pixels (None: always): below, their parameters cost about what they save.
    stack_min_pixels: Optional[int] = None
    spatial_context_arm: int = 16
    linear_stabiliser_arm: bool = False
    n_hidden_layers_arm: int = 2
    latent_resolution: Tuple[int, int] = (0, 6)
    hyper_latent_resolution: Optional[Tuple[int, int]] = None
    flag_common_randomness: bool = False
    img_size: Optional[Tuple[int, int]] = None
    # None: chosen from lambda when encoding (quantizer.encoder_gain_for_lambda).
    encoder_gain: Optional[int] = None
    final_upsampling_type: str = "bicubic"
    static_upsampling_kernel: bool = False
    common_randomness_seed: int = 0

    def with_image_size(self, height: int, width: int) -> "CoolChicEncoderParameter":
        return dataclasses.replace(self, img_size=(int(height), int(width)))

    def to_arch(self, frame_data_type: str = "rgb", bitdepth: int = 8, frame_type: str = "I") -> DecoderArch:
        """The DecoderArch of this parameter set (raises ConfigError if inconsistent)."""
        if self.img_size is None:
            raise ConfigError("img_size is not set: call with_image_size(height, width) first")
        if isinstance(self.layers_synthesis, str):
            raise ConfigError("layers_synthesis must be a list of layer strings, not one string")
        if self.encoder_gain is not None and not (
            isinstance(self.encoder_gain, (int, float)) and self.encoder_gain > 0
        ):
            raise ConfigError(f"encoder_gain must be a positive number, got {self.encoder_gain!r}")
        for name in ("spatial_context_arm", "n_hidden_layers_arm", "ups_k_size", "ups_preconcat_k_size",
                     "output_feature_ifce", "common_randomness_seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if frame_type not in FRAME_TYPES:
            raise ConfigError(f"frame_type must be one of {FRAME_TYPES}, got {frame_type!r}")
        m = self.stack_min_pixels
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 0):
            raise ConfigError(f"stack_min_pixels must be a pixel count or None, got {m!r}")
        n_out = n_output_channels(frame_data_type, frame_type)
        layers = tuple(parse_synthesis_layer(s, n_out) for s in self.layers_synthesis)
        ifce = _pair(self.ifce_resolution, "ifce_resolution")
        h, w = _pair(self.img_size, "img_size")
        small = self.stack_min_pixels is not None and h * w < self.stack_min_pixels
        return DecoderArch(
            img_size=(h, w),
            frame_data_type=frame_data_type,
            bitdepth=bitdepth,
            latent_resolution=_pair(self.latent_resolution, "latent_resolution"),
            hyper_latent_resolution=None if small else _pair(self.hyper_latent_resolution, "hyper_latent_resolution"),
            spatial_context_arm=self.spatial_context_arm,
            n_hidden_layers_arm=self.n_hidden_layers_arm,
            linear_stabiliser_arm=bool(self.linear_stabiliser_arm),
            ifce_resolution=ifce,
            output_feature_ifce=self.output_feature_ifce if ifce is not None else 0,
            ifce_stack=bool(self.ifce_stack) and ifce is not None and not small,
            ups_k_size=self.ups_k_size,
            ups_preconcat_k_size=self.ups_preconcat_k_size,
            static_upsampling_kernel=bool(self.static_upsampling_kernel),
            layers_synthesis=layers,
            linear_stabiliser_synth=bool(self.linear_stabiliser_synth),
            flag_common_randomness=bool(self.flag_common_randomness),
            common_randomness_seed=self.common_randomness_seed,
            final_upsampling_type=self.final_upsampling_type,
            frame_type=frame_type,
        )

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers_synthesis"] = list(self.layers_synthesis)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CoolChicEncoderParameter":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown CoolChicEncoderParameter fields: {sorted(unknown)}")
        d = dict(d)
        for k in ("ifce_resolution", "latent_resolution", "hyper_latent_resolution", "img_size"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class CoolChicEncoderOutput:
    """``raw_out``: synthesis output (1, n_out, H', W') before any clamp;
    ``rate``: bits of every coded latent value, decoding order, (N,)."""

    raw_out: Tensor
    rate: Tensor
    additional_data: Dict[str, Any] = field(default_factory=dict)


class CoolChicEncoder(nn.Module):
    """Cool-chic encoder for one frame (see module docstring)."""

    def __init__(self, param: CoolChicEncoderParameter, frame_data_type: str = "rgb", bitdepth: int = 8,
                 frame_type: str = "I"):
        super().__init__()
        self.param = param
        self.arch = arch = param.to_arch(frame_data_type, bitdepth, frame_type)
        self.encoder_gain = float(param.encoder_gain if param.encoder_gain is not None else DEFAULT_ENCODER_GAIN)
        self.modules_to_send = modules_to_send(arch)
        self.coded = arch.coded_grids()

        self.latent_grids = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, h, w)) for h, w in arch.latent_grid_sizes()
        )
        hyper_sizes = [(g.h, g.w) for g in sorted((g for g in self.coded if g.hyper), key=lambda g: g.latent_index)]
        self.hyper_latent_grids = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, h, w)) for h, w in hyper_sizes)
        # Regenerated from the seed, never saved: the decoder regenerates them too.
        for i, g in enumerate(common_randomness_grids(arch)):
            self.register_buffer(f"common_randomness_{i}", torch.from_numpy(g)[None, None], persistent=False)

        self.arm = ArmMLP(arch.spatial_context_arm, arch.arm_input_dim, arch.n_hidden_layers_arm,
                          arch.linear_stabiliser_arm)
        self.ifce = Ifce.for_arch(arch) if arch.ifce_features else None
        self.upsampling = Upsampling(arch.n_latent_grids, arch.ups_k_size, arch.ups_preconcat_k_size,
                                     arch.static_upsampling_kernel)
        self.synthesis = Synthesis(arch.synthesis_in_channels, arch.layers_synthesis, arch.n_out,
                                   arch.linear_stabiliser_synth)

        self.tile_plan: Optional[TilePlan] = None
        self.set_n_substreams(1)

        # Network quantization results (None until quantize_model ran): shift s of the
        # step 2^-s and Exp-Golomb count per module and kind.
        self.nn_q_step: Dict[str, Dict[str, Optional[int]]] = {}
        self.nn_expgol_cnt: Dict[str, Dict[str, Optional[int]]] = {}
        self.reset_quantization_info()

        self._check_layout()
        self.get_flops()

    # ---- structure -----------------------------------------------------------
    def _check_layout(self) -> None:
        for spec in param_layout(self.arch):
            p = self.get_parameter(spec.name)
            if tuple(p.shape) != tuple(spec.shape):
                raise AssertionError(f"{spec.name}: torch shape {tuple(p.shape)} != layout {spec.shape}")

    def reset_quantization_info(self) -> None:
        self.nn_q_step = {}
        self.nn_expgol_cnt = {}
        for m in self.modules_to_send:
            kinds = sorted({s.kind for s in param_layout(self.arch) if s.module == m}, reverse=True)
            self.nn_q_step[m] = {k: None for k in kinds}
            self.nn_expgol_cnt[m] = {k: None for k in kinds}

    def set_n_substreams(self, n_substreams: int) -> None:
        """Train with the context of ``n_substreams`` stripes per grid (what the bitstream codes)."""
        self.n_substreams = int(n_substreams)
        self._arm_idx: Optional[ArmIndices] = None  # built on first use: large frames never need it
        self._arm_chunks: Optional[ArmChunks] = None

    def set_tile_plan(self, plan: Optional[TilePlan]) -> None:
        """Compute large frames in bands and ARM chunks (``tiling.py``); None: whole frame."""
        self.tile_plan = plan
        self._arm_chunks = None

    def _device(self) -> torch.device:
        return self.arm.mlp[-1].weight.device

    def arm_indices(self) -> ArmIndices:
        idx = self._arm_idx
        dev = self._device()
        if idx is None or idx.u_index.device != dev:
            idx = build_arm_indices(self.arch, self.n_substreams)
            if dev.type != "cpu":
                idx = dataclasses.replace(idx, **{f.name: getattr(idx, f.name).to(dev) for f in dataclasses.fields(idx)
                                                  if isinstance(getattr(idx, f.name), Tensor)})
            self._arm_idx = idx
        return idx

    def arm_chunks(self) -> ArmChunks:
        ch = self._arm_chunks
        if ch is None:
            ch = build_arm_chunks(self.arch, self.n_substreams, self.tile_plan.chunk_values).to(self._device())
            self._arm_chunks = ch
        return ch

    def named_transmitted_params(self, module: Optional[str] = None) -> "OrderedDict[str, nn.Parameter]":
        """Every transmitted tensor in ``param_layout`` order (optionally one module's)."""
        return OrderedDict(
            (s.name, self.get_parameter(s.name))
            for s in param_layout(self.arch)
            if module is None or s.module == module
        )

    def coded_grid_params(self) -> List[Tensor]:
        """Latent parameters (encoder side, before the gain) of each coded grid, decoding order."""
        return [
            (self.hyper_latent_grids if g.hyper else self.latent_grids)[g.latent_index] for g in self.coded
        ]

    # ---- forward -------------------------------------------------------------
    def quantized_flat_latents(
        self,
        quantizer_noise_type: str = "none",
        quantizer_type: str = "hardround",
        soft_round_temperature=0.3,
        noise_parameter=1.0,
        AC_MAX_VAL: int = -1,
    ) -> Tensor:
        """All coded values ``Q(gain * y)`` flattened in decoding order, (N,)."""
        flat = torch.cat([p.reshape(-1) for p in self.coded_grid_params()]) * self.encoder_gain
        # The bitstream cannot carry larger magnitudes.
        flat = torch.clamp(flat, -LATENT_LIMIT, LATENT_LIMIT)
        flat = quantize(flat, quantizer_noise_type, quantizer_type, soft_round_temperature, noise_parameter)
        if AC_MAX_VAL != -1:
            flat = torch.clamp(flat, -AC_MAX_VAL, AC_MAX_VAL + 1)
        return flat

    def arm_outputs(self, flat_hat: Tensor) -> Tuple[Tensor, Tensor]:
        """(mu, ln b) of every coded value, (N,) each."""
        a = self.arch
        if self.tile_plan is not None:
            self._no_grad_when_tiled(flat_hat)
            return chunked_arm_outputs(flat_hat, self.arm, self.ifce, self.arm_chunks(), a.arm_input_dim)
        u = arm_input(flat_hat, self.ifce, self.arm_indices(), a.spatial_context_arm, a.arm_input_dim)
        return self.arm(u)

    def latent_rate(self, flat_hat: Tensor) -> Tensor:
        if self.tile_plan is not None:
            self._no_grad_when_tiled(flat_hat)
            return chunked_latent_rate(flat_hat, self.arm, self.ifce, self.arm_chunks(), self.arch.arm_input_dim)
        mu, log_scale = self.arm_outputs(flat_hat)
        return laplace_rate(flat_hat, mu, log_scale)

    def rate_backward(self, flat_hat: Tensor, scale: float, grad_flat: Tensor) -> float:
        """Bits of ``flat_hat``; adds ``scale`` times their gradient into the ARM's and
        IFCE's ``.grad`` and into ``grad_flat`` (chunk by chunk when tiled)."""
        a = self.arch
        if self.tile_plan is not None:
            return rate_backward(flat_hat, self.arm, self.ifce, self.arm_chunks(), a.spatial_context_arm,
                                 a.arm_input_dim, scale, grad_flat)
        y = flat_hat.detach().requires_grad_()
        bits = self.latent_rate(y).sum()
        (bits * scale).backward()
        grad_flat += y.grad
        return float(bits.detach())

    def _no_grad_when_tiled(self, t: Tensor) -> None:
        if torch.is_grad_enabled() and t.requires_grad:
            raise RuntimeError("a tiled CoolChicEncoder computes gradients with tiling.tiled_backward only")

    def synthesis_grids(self, flat_hat: Tensor) -> List[Tensor]:
        """The (h, w) latent grids that feed the upsampling, finest first (views of ``flat_hat``)."""
        a = self.arch
        latents: List[Optional[Tensor]] = [None] * a.n_latent_grids
        for g, t in zip(self.coded, split_flat(flat_hat, a)):
            if not g.hyper:
                latents[g.latent_index] = t
        return latents

    def dense_from_rows(self, rows: Sequence[Tensor], window: RowWindow) -> Tensor:
        """Rows ``window.dense_rows[0]`` of the synthesis input from the rows
        ``window.latent_rows[i]`` of each latent grid (``rows[i]``, (rows, w))."""
        a = self.arch
        grids = [r[None, None] for r in rows]
        if a.flag_common_randomness:
            grids = [torch.cat([g, getattr(self, f"common_randomness_{i}")[:, :, r0:r1]], dim=0)
                     for i, (g, (r0, r1)) in enumerate(zip(grids, window.latent_rows))]
        x = self.upsampling.forward_rows(grids, a.latent_grid_sizes(), window)
        b, n, h, w = x.shape
        return x.reshape(1, b * n, h, w)

    def synthesize(self, dense: Tensor) -> Tensor:
        """``synthesis(dense)``, band by band when tiled (no gradient then)."""
        if self.tile_plan is not None:
            self._no_grad_when_tiled(dense)
            return synthesize_banded(self, dense, self.tile_plan)
        return self.synthesis(dense)

    def dense_latent(self, flat_hat: Tensor, no_common_randomness: bool = False,
                     only_common_randomness: bool = False) -> Tensor:
        """Upsampled synthesis input (1, C, H, W) (final upsampling included)."""
        a = self.arch
        latents = [t[None, None] for t in self.synthesis_grids(flat_hat)]
        if a.flag_common_randomness:
            stacked = [
                torch.cat([lat, getattr(self, f"common_randomness_{i}")], dim=0) for i, lat in enumerate(latents)
            ]
        else:
            stacked = latents
        x = self.upsampling(stacked, a.latent_grid_sizes())
        b, n, h, w = x.shape
        x = x.reshape(1, b * n, h, w)
        if a.flag_common_randomness and (no_common_randomness or only_common_randomness):
            keep = torch.ones(b * n, device=x.device, dtype=x.dtype)
            keep[n:] = 0.0 if no_common_randomness else 1.0
            keep[:n] = 0.0 if only_common_randomness else 1.0
            x = x * keep.view(1, -1, 1, 1)
        if a.latent_resolution[0] > 0:
            mode = a.final_upsampling_type
            x = F.interpolate(x, size=a.img_size, mode=mode, align_corners=None if mode == "nearest" else False)
        return x

    def forward(
        self,
        quantizer_noise_type: str = "gaussian",
        quantizer_type: str = "softround",
        soft_round_temperature=torch.tensor(0.35),
        noise_parameter=torch.tensor(0.22),
        AC_MAX_VAL: int = -1,
        flag_additional_outputs: bool = False,
        no_common_randomness: bool = False,
        only_common_randomness: bool = False,
    ) -> CoolChicEncoderOutput:
        """Quantize the latents, measure their rate with the ARM, decode them."""
        flat_hat = self.quantized_flat_latents(
            quantizer_noise_type, quantizer_type, soft_round_temperature, noise_parameter, AC_MAX_VAL
        )
        mu, log_scale = self.arm_outputs(flat_hat)
        rate = laplace_rate(flat_hat, mu, log_scale)
        if self.tile_plan is not None and not (no_common_randomness or only_common_randomness):
            raw = render_banded(self, flat_hat, self.tile_plan)
        else:
            raw = self.synthesis(self.dense_latent(flat_hat, no_common_randomness, only_common_randomness))
        extra: Dict[str, Any] = {}
        if flag_additional_outputs:
            extra["latents"] = split_flat(flat_hat.detach(), self.arch)
            extra["mu"] = split_flat(mu.detach().contiguous(), self.arch)
            extra["log_scale"] = split_flat(log_scale.detach().contiguous(), self.arch)
            extra["rate_per_grid"] = [r.sum() for r in split_flat(rate.detach(), self.arch)]
        return CoolChicEncoderOutput(raw_out=raw, rate=rate, additional_data=extra)

    # ---- parameters ----------------------------------------------------------
    def get_param(self) -> "OrderedDict[str, Tensor]":
        """A copy of all the weights, biases and latents."""
        return OrderedDict((k, v.detach().clone()) for k, v in self.named_parameters())

    def set_param(self, param: "OrderedDict[str, Tensor]") -> None:
        with torch.no_grad():
            for k, v in self.named_parameters():
                if k in param:
                    v.copy_(param[k])

    def initialize_latent_grids(self) -> None:
        with torch.no_grad():
            for p in list(self.latent_grids) + list(self.hyper_latent_grids):
                p.zero_()

    def reinitialize_parameters(self) -> None:
        self.initialize_latent_grids()
        self.arm.reinitialize_parameters()
        if self.ifce is not None:
            self.ifce.reinitialize_parameters()
        self.upsampling.reinitialize_parameters()
        self.synthesis.reinitialize_parameters()
        self.reset_quantization_info()

    # ---- network quantization info ------------------------------------------
    def module_integer_params(self, module: str, kind: str, shift: int) -> np.ndarray:
        """Concatenated ``round(p * 2^shift)`` of one module's weights or biases."""
        vals = [
            p.detach().cpu().double().numpy().reshape(-1)
            for name, p in self.named_transmitted_params(module).items()
            if name.endswith("." + kind)
        ]
        return quantize_to_int(np.concatenate(vals) if vals else np.zeros(0), shift)

    def get_network_rate(self) -> Tuple[DescriptorCoolChic, int]:
        """Bits of each module's weights and biases (0 until quantized), and the total."""
        rate: DescriptorCoolChic = {}
        total = 0
        for m in self.modules_to_send:
            rate[m] = {}
            for kind, s in self.nn_q_step[m].items():
                k = self.nn_expgol_cnt[m][kind]
                bits = 0 if s is None or k is None else exp_golomb_nbits(self.module_integer_params(m, kind, s), k)
                rate[m][kind] = bits
                total += bits
        return rate, total

    def get_network_quantization_step(self) -> DescriptorCoolChic:
        return {
            m: {kind: (None if s is None else 2.0**-s) for kind, s in kinds.items()}
            for m, kinds in self.nn_q_step.items()
        }

    def get_network_expgol_count(self) -> DescriptorCoolChic:
        return {m: dict(kinds) for m, kinds in self.nn_expgol_cnt.items()}

    def is_quantized(self) -> bool:
        return all(s is not None for kinds in self.nn_q_step.values() for s in kinds.values())

    # ---- complexity ----------------------------------------------------------
    def get_flops(self) -> None:
        """Update ``total_flops`` (MACs of one decoding) and ``flops_str``."""
        self.flops_per_module = complexity.module_macs(self.arch)
        self.total_flops = sum(self.flops_per_module.values())
        self.flops_str = complexity.archi_table(self.arch)

    def str_complexity(self) -> str:
        return self.flops_str

    def get_total_mac_per_pixel(self) -> float:
        h, w = self.arch.img_size
        return self.total_flops / (h * w)
