"""Synthesis: the convolutional network from the dense latent tensor to the
decoded frame (docs/architecture.md, section 4).

Parameters ``layers.{i}.weight/bias`` and ``stabiliser.weight`` have the names
and shapes of ``param_layout``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coolchic.decoder_runtime.arch import SynthesisLayer

from .init import init_conv_weight_


def _channels_last_grad(x: Tensor) -> Tensor:
    """Make the gradient reaching ``x`` channels-last (identity in the forward pass).

    The loss and the padding give NCHW gradients; mixed layouts make oneDNN and
    every elementwise backward take a strided path (10x slower for a ReLU mask).
    """
    if x.requires_grad:
        x.register_hook(lambda g: g.contiguous(memory_format=torch.channels_last))
    return x


class Synthesis(nn.Module):
    def __init__(self, in_channels: int, layers: Sequence[SynthesisLayer], n_out: int, stabiliser: bool):
        super().__init__()
        self.specs = tuple(layers)
        convs, cin = [], in_channels
        for spec in self.specs:
            convs.append(nn.Conv2d(cin, spec.out_channels, spec.kernel_size, bias=True))
            cin = spec.out_channels
        self.layers = nn.ModuleList(convs)
        self.stabiliser = nn.Conv2d(in_channels, n_out, 1, bias=False) if stabiliser else None
        self.reinitialize_parameters()

    def reinitialize_parameters(self) -> None:
        for spec, conv in zip(self.specs, self.layers):
            if spec.residual:
                # A residual layer starts as the identity.
                nn.init.zeros_(conv.weight)
            else:
                init_conv_weight_(conv.weight)
            nn.init.zeros_(conv.bias)
        if self.stabiliser is not None:
            init_conv_weight_(self.stabiliser.weight)

    def forward(self, x: Tensor) -> Tensor:
        cpu = x.device.type == "cpu"
        if cpu:
            # oneDNN runs these few-channel convolutions ~3x faster in channels-last.
            x = x.contiguous(memory_format=torch.channels_last)
        x_in = x
        for spec, conv in zip(self.specs, self.layers):
            r = spec.kernel_size // 2
            y = conv(F.pad(x, (r, r, r, r), mode="replicate") if r else x)
            if spec.residual:
                y = y + x
            x = torch.relu(y) if spec.relu else y
            if cpu:
                x = _channels_last_grad(x)
        if self.stabiliser is not None:
            x = x + self.stabiliser(x_in)
            if cpu:
                x = _channels_last_grad(x)
        return x
