"""Synthesis: the convolutional network from the dense latent tensor to the
decoded frame (docs/architecture.md, section 4).

Parameters ``layers.{i}.weight/bias`` and ``stabiliser.weight`` have the names
and shapes of ``param_layout``.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coolchic.decoder_runtime.arch import SynthesisLayer

from .init import init_conv_weight_


def _prepare(x: Tensor) -> Tensor:
    # oneDNN runs these few-channel convolutions ~3x faster in channels-last.
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def _channels_last_grad(x: Tensor) -> Tensor:
    """Make the gradient reaching ``x`` channels-last (identity in the forward pass; CPU only).

    The loss and the padding give NCHW gradients; mixed layouts make oneDNN and
    every elementwise backward take a strided path (10x slower for a ReLU mask).
    """
    if x.requires_grad and x.device.type == "cpu":
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
        x = _prepare(x)
        return self.forward_from(0, x, x)

    def layer_inputs(self, x: Tensor) -> List[Tensor]:
        """The input of each layer, then the last layer's output (before the stabiliser)."""
        x = _prepare(x)
        out = [x]
        for i in range(len(self.layers)):
            out.append(self._layer(i, out[-1]))
        return out

    def forward_from(self, i: int, x: Tensor, x_in: Tensor) -> Tensor:
        """The output from ``x``, the input of layer ``i`` (``len(layers)``: the last
        layer's output), and ``x_in``, the synthesis input (for the stabiliser);
        both as :meth:`layer_inputs` gives them."""
        for j in range(i, len(self.layers)):
            x = self._layer(j, x)
        if self.stabiliser is not None:
            x = _channels_last_grad(x + self.stabiliser(x_in))
        return x

    def _layer(self, i: int, x: Tensor) -> Tensor:
        spec, conv = self.specs[i], self.layers[i]
        r = spec.kernel_size // 2
        y = conv(F.pad(x, (r, r, r, r), mode="replicate") if r else x)
        if spec.residual:
            y = y + x
        return _channels_last_grad(torch.relu(y) if spec.relu else y)
