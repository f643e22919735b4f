"""Initial values of the network weights (the reference Cool-chic's).

Fresh weights are scaled down by the square of the layer's output channels:
a network starts close to zero (residual layers exactly at the identity), so
that weights training does not need stay small and cost few bits once
quantized, which matters most at low rate and on small images.

* linear layers of the ARM, its stabiliser and the IFCE:
  ``W ~ N(0, 1) / C_out^2``
* synthesis convolutions and their stabiliser:
  ``W ~ U(-a, a)`` with ``a = 1 / (C_out^2 sqrt(C_in k^2))`` (PyTorch's default
  bound divided by ``C_out^2``)
* biases: 0
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def init_linear_weight_(weight: Tensor) -> Tensor:
    """ARM-style (C_out, C_in) weight: N(0, 1) / C_out^2."""
    return weight.normal_().div_(weight.shape[0] ** 2)


@torch.no_grad()
def init_conv_weight_(weight: Tensor) -> Tensor:
    """Synthesis (C_out, C_in, k, k) weight: U(-a, a), a = 1 / (C_out^2 sqrt(C_in k^2))."""
    fan_in = weight[0].numel()
    if fan_in == 0:
        return weight.zero_()
    a = 1.0 / (weight.shape[0] ** 2 * math.sqrt(fan_in))
    return weight.uniform_(-a, a)
