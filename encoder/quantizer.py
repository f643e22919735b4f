"""Latent quantization as seen by training: soft round, quantization noise and
the straight-through estimator.

The decoder only ever sees integers ``round(encoder_gain * y)``; every mode here
is a differentiable stand-in for that rounding, chosen per training phase.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from coolchic.decoder_runtime.errors import ConfigError

QUANTIZER_TYPES = ("softround_alone", "softround", "hardround", "ste", "none")
QUANTIZER_NOISE_TYPES = ("kumaraswamy", "gaussian", "none")

# The bitstream codes latents with a 15-bit signed range; keep one value of margin.
LATENT_LIMIT = (1 << 14) - 1

Scalar = Union[float, Tensor]

DEFAULT_ENCODER_GAIN = 16


def encoder_gain_for_lambda(lmbda: float) -> int:
    """The latent gain Gamma of ``round(Gamma * y)`` for a rate constraint lambda.

    At high rate (small lambda) latents need a finer effective step; a larger
    gain gives it without making the latent parameters themselves large (the
    reference's rule: 24 below 2e-4, 20 below 5e-4, else 16).
    """
    if lmbda < 2e-4:
        return 24
    if lmbda < 5e-4:
        return 20
    return DEFAULT_ENCODER_GAIN


def softround(x: Tensor, t: Scalar) -> Tensor:
    """Soft round of Agustsson & Theis: round(x) as t -> 0, identity as t grows.

    ``floor(x) + 1/2 + tanh(d / t) / (2 tanh(1 / (2t)))`` with ``d = x - floor(x) - 1/2``.
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    floor_x = torch.floor(x)
    d = x - floor_x - 0.5
    return floor_x + 0.5 + 0.5 * torch.tanh(d / t) / torch.tanh(0.5 / t)


def kumaraswamy_noise(uniform: Tensor, a: Scalar) -> Tensor:
    """Map U(0, 1) samples to a Kumaraswamy(a, b) noise in [-1/2, 1/2].

    ``b`` is tied to ``a`` so that the mode stays at 1/2: a = 1 gives uniform
    noise, larger ``a`` concentrates the noise around 0.
    """
    a = torch.as_tensor(a, dtype=uniform.dtype, device=uniform.device)
    b = (torch.pow(2.0, a) * (a - 1.0) + 1.0) / a
    return torch.pow(1.0 - torch.pow(1.0 - uniform, 1.0 / b), 1.0 / a) - 0.5


def quantization_noise(x: Tensor, noise_type: str, noise_parameter: Scalar) -> Optional[Tensor]:
    """A noise tensor shaped like ``x``, or None for ``noise_type == "none"``."""
    if noise_type == "none":
        return None
    if noise_type == "gaussian":
        return torch.randn_like(x) * noise_parameter
    if noise_type == "kumaraswamy":
        return kumaraswamy_noise(torch.rand_like(x), noise_parameter)
    raise ConfigError(f"quantizer_noise_type must be one of {QUANTIZER_NOISE_TYPES}, got {noise_type!r}")


def quantize(
    x: Tensor,
    quantizer_noise_type: str = "kumaraswamy",
    quantizer_type: str = "softround",
    soft_round_temperature: Optional[Scalar] = 0.3,
    noise_parameter: Optional[Scalar] = 1.0,
) -> Tensor:
    """Simulated quantization of ``x`` (already multiplied by the encoder gain).

    - ``softround_alone``: softround(x)
    - ``softround``: softround(softround(x) + noise)   (C3's recipe)
    - ``hardround``: round(x), no gradient
    - ``ste``: round(x) forward, derivative of softround(x) backward
    - ``none``: x + noise (x when the noise type is "none")

    Noise is only used by ``softround`` and ``none``; the other modes ignore it.
    """
    if quantizer_type not in QUANTIZER_TYPES:
        raise ConfigError(f"quantizer_type must be one of {QUANTIZER_TYPES}, got {quantizer_type!r}")
    if quantizer_noise_type not in QUANTIZER_NOISE_TYPES:
        raise ConfigError(
            f"quantizer_noise_type must be one of {QUANTIZER_NOISE_TYPES}, got {quantizer_noise_type!r}"
        )
    if quantizer_type == "hardround":
        return torch.round(x)
    if quantizer_type == "softround_alone":
        return softround(x, soft_round_temperature)
    if quantizer_type == "ste":
        soft = softround(x, soft_round_temperature)
        # Value of round(x), gradient of softround(x).
        return soft + (torch.round(x) - soft).detach()
    noise = quantization_noise(x, quantizer_noise_type, noise_parameter)
    if quantizer_type == "none":
        return x if noise is None else x + noise
    soft = softround(x, soft_round_temperature)
    if noise is not None:
        soft = soft + noise
    return softround(soft, soft_round_temperature)
