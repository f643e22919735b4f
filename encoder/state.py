"""What the bitstream writer takes from a trained, quantized FrameEncoder:
integers only (network parameters, latents) plus the architecture and the
quantization/Exp-Golomb parameters. Also the float ARM outputs, to compare the
training-time rate estimate with the size actually coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch

from coolchic.decoder_runtime.arch import DecoderArch, param_layout
from coolchic.decoder_runtime.errors import EncodeError

from .arm import split_flat
from .frame_encoder import FrameEncoder


@dataclass(frozen=True)
class EncoderState:
    """``q_params[name]``: int32 array of ParamSpec ``name``'s shape, the value
    being ``q * 2^-shifts[(module, kind)]``. ``latents``: int32 (h, w) grids in
    ``arch.coded_grids()`` order (hyper-latents included)."""

    arch: DecoderArch
    q_params: Dict[str, np.ndarray]
    shifts: Dict[Tuple[str, str], int]
    expgol: Dict[Tuple[str, str], int]
    latents: List[np.ndarray]


@torch.no_grad()
def export_state(frame_encoder: FrameEncoder) -> EncoderState:
    """Integer description of ``frame_encoder``; requires quantize_model to have run."""
    cc = frame_encoder.coolchic_encoder
    if not cc.is_quantized():
        raise EncodeError("export_state: the networks are not quantized yet (run quantize_model)")
    shifts = {(m, k): int(s) for m, kinds in cc.nn_q_step.items() for k, s in kinds.items()}
    expgol = {(m, k): int(c) for m, kinds in cc.nn_expgol_cnt.items() for k, c in kinds.items()}
    q_params = {}
    for spec in param_layout(cc.arch):
        p = cc.get_parameter(spec.name).detach().cpu().double()
        s = shifts[(spec.module, spec.kind)]
        q = torch.round(p * float(1 << s))
        if (q / float(1 << s) - p).abs().max().item() > 1e-6 * max(1.0, p.abs().max().item()):
            raise EncodeError(f"export_state: {spec.name} is not on its 2^-{s} grid (modified after quantize_model?)")
        q_params[spec.name] = q.numpy().astype(np.int32).reshape(spec.shape)
    flat = cc.quantized_flat_latents()
    latents = [g.cpu().numpy().astype(np.int32) for g in split_flat(flat, cc.arch)]
    return EncoderState(cc.arch, q_params, shifts, expgol, latents)


@torch.no_grad()
def arm_float_outputs(frame_encoder: FrameEncoder) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(mu, ln b) float32 (h, w) arrays of every coded grid, decoding order."""
    cc = frame_encoder.coolchic_encoder
    flat = cc.quantized_flat_latents()
    mu, log_scale = cc.arm_outputs(flat)
    mus = split_flat(mu.contiguous(), cc.arch)
    lss = split_flat(log_scale.contiguous(), cc.arch)
    return [(m.cpu().numpy().astype(np.float32), s.cpu().numpy().astype(np.float32)) for m, s in zip(mus, lss)]


@torch.no_grad()
def float_rate_per_grid(frame_encoder: FrameEncoder) -> List[float]:
    """Float Laplace rate (bits) of every coded grid, decoding order."""
    cc = frame_encoder.coolchic_encoder
    flat = cc.quantized_flat_latents()
    rate = cc.latent_rate(flat)
    return [float(r.sum()) for r in split_flat(rate, cc.arch)]
