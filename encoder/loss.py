"""The rate-distortion loss minimised by training and by quantize_model:
``MSE + lambda * (latent rate + network rate)``, rates in bits per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor


@dataclass
class LossFunctionOutput:
    loss: Tensor  # what is minimised (differentiable)
    mse: Optional[float] = None
    rate_latent_bpp: Optional[float] = None
    rate_nn_bpp: Optional[float] = None
    psnr_db: Optional[float] = None

    @property
    def total_rate_bpp(self) -> Optional[float]:
        if self.rate_latent_bpp is None:
            return None
        return self.rate_latent_bpp + (self.rate_nn_bpp or 0.0)


def squared_error_and_count(decoded: Sequence[Tensor], target: Sequence[Tensor]):
    """Sum of squared errors over every plane group, and the number of samples."""
    sse = sum(torch.sum((d - t) ** 2) for d, t in zip(decoded, target))
    return sse, sum(t.numel() for t in target)


def psnr(mse: float) -> float:
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def loss_function(
    decoded_planes: Sequence[Tensor],
    rate_latent_bit: Tensor,
    target_planes: Sequence[Tensor],
    lmbda: float,
    rate_mlp_bit: float = 0.0,
    compute_logs: bool = False,
) -> LossFunctionOutput:
    """Distortion (MSE over every sample of every plane; yuv420 chroma counts at its
    own size) plus ``lmbda`` times the rate in bits per pixel, pixels = H * W.

    Planes are FrameData-style groups (``FrameEncoderOutput.decoded_planes`` and
    ``FrameData.planes``) or two dense tensors.
    """
    if isinstance(decoded_planes, Tensor):  # one dense (1, C, H, W) tensor
        decoded_planes, target_planes = (decoded_planes,), (target_planes,)
    sse, n_samples = squared_error_and_count(decoded_planes, target_planes)
    mse = sse / n_samples
    n_pixels = target_planes[0].shape[-2] * target_planes[0].shape[-1]
    rate_latent_bpp = rate_latent_bit.sum() / n_pixels
    rate_nn_bpp = rate_mlp_bit / n_pixels
    loss = mse + lmbda * (rate_latent_bpp + rate_nn_bpp)
    out = LossFunctionOutput(loss=loss)
    if compute_logs:
        out.mse = float(mse.detach())
        out.rate_latent_bpp = float(rate_latent_bpp.detach())
        out.rate_nn_bpp = float(rate_nn_bpp.detach() if isinstance(rate_nn_bpp, Tensor) else rate_nn_bpp)
        out.psnr_db = psnr(out.mse)
    return out
