"""Synthesis: the convolutional network from the dense latent tensor to the
decoded frame (docs/architecture.md, section 4).

Parameters ``layers.{i}.weight/bias`` and ``stabiliser.weight`` have the names
and shapes of ``param_layout``.

On the CPU the synthesis head, its first two 1x1 layers and the stabiliser,

    h = relu(W0 x + b0),   y = W1 h + b1,   s = S x,

is one autograd function computed tile by tile of pixels (``HEAD_TILE``): the
wide hidden tensor ``h`` (48 channels at hop) stays in the cache and is never
kept for the backward pass, which recomputes it from ``x``. Its gradients are

    g_h = (W1^T g_y) * [W0 x + b0 > 0],   dW1 = g_y h^T,   dW0 = g_h x^T,
    dS = g_s x^T,   g_x = W0^T g_h + S^T g_s,

summed over the tiles. A training iteration of hop (48 wide) on kodim01, one
thread, took 264-277 ms with it against 319-341 ms with the convolutions
(``bench/encode_speed.py``; docs/compression.md, "Encoder speed: the synthesis
head in tiles").
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coolchic.decoder_runtime.arch import SynthesisLayer

from .init import init_conv_weight_

# Pixels per tile of the fused head: its hidden tile (48 x 4096 floats at hop) fits in L2.
HEAD_TILE = 4096
# On several threads, the narrowest hidden layer for which the tiles beat oneDNN (measured 16: no, 48: yes).
HEAD_MIN_WIDTH_THREADED = 32


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


def _pixels(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N H W, C): a view of a channels-last tensor."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _planes(m: Tensor, like: Tensor) -> Tensor:
    """(N H W, C) -> (N, C, H, W) in channels-last memory, as ``like``'s pixels."""
    n, _, h, w = like.shape
    return m.view(n, h, w, m.shape[1]).permute(0, 3, 1, 2)


class _FusedHead(torch.autograd.Function):
    """``(y, s)`` of the module docstring's head; ``s`` is empty without a stabiliser."""

    @staticmethod
    def forward(ctx, x: Tensor, w0: Tensor, b0: Tensor, w1: Tensor, b1: Tensor, st: Tensor):
        xm = _pixels(x)
        w0t, w1t = w0.flatten(1).t(), w1.flatten(1).t()
        y = x.new_empty(xm.shape[0], w1.shape[0])
        for p0 in range(0, xm.shape[0], HEAD_TILE):
            ht = torch.addmm(b0, xm[p0: p0 + HEAD_TILE], w0t).clamp_min_(0)
            torch.addmm(b1, ht, w1t, out=y[p0: p0 + HEAD_TILE])
        ctx.save_for_backward(x, w0, b0, w1, st)
        return _planes(y, x), _planes(torch.mm(xm, st.flatten(1).t()), x)

    @staticmethod
    def backward(ctx, g_y: Tensor, g_s: Tensor):
        x, w0, b0, w1, st = ctx.saved_tensors
        xm = _pixels(x)
        w0m, w1m, stm = w0.flatten(1), w1.flatten(1), st.flatten(1)
        w0t = w0m.t()
        gym = _pixels(g_y).contiguous()
        g_x = x.new_empty(xm.shape)
        d_w0, d_b0, d_w1 = torch.zeros_like(w0m), torch.zeros_like(b0), torch.zeros_like(w1m)
        for p0 in range(0, xm.shape[0], HEAD_TILE):
            xt, gyt = xm[p0: p0 + HEAD_TILE], gym[p0: p0 + HEAD_TILE]
            pre = torch.addmm(b0, xt, w0t)
            d_w1.addmm_(gyt.t(), pre.clamp_min(0))
            g_h = torch.mm(gyt, w1m).mul_(pre > 0)
            d_w0.addmm_(g_h.t(), xt)
            d_b0 += g_h.sum(0)
            torch.mm(g_h, w0m, out=g_x[p0: p0 + HEAD_TILE])
        d_st = None
        if stm.shape[0]:
            gsm = _pixels(g_s).contiguous()
            g_x.addmm_(gsm, stm)
            d_st = (gsm.t() @ xm).view_as(st)
        return (_planes(g_x, x), d_w0.view_as(w0), d_b0, d_w1.view_as(w1), gym.sum(0), d_st)


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
        if not self._fused_head(x):
            return self.forward_from(0, x, x)
        l0, l1 = self.layers[0], self.layers[1]
        st = self.stabiliser.weight if self.stabiliser is not None else x.new_zeros(0, x.shape[1], 1, 1)
        y, s = _FusedHead.apply(x, l0.weight, l0.bias, l1.weight, l1.bias, st)
        for j in range(2, len(self.layers)):
            y = self._layer(j, y)
        return _channels_last_grad(y + s) if self.stabiliser is not None else y

    def _fused_head(self, x: Tensor) -> bool:
        """Whether the head of the module docstring applies: training on the CPU, two
        leading 1x1 layers, the first with a ReLU, the second without, neither residual.
        Without gradients the convolutions run, so that :meth:`forward` gives, bit for
        bit, what :meth:`forward_from` gives from :meth:`layer_inputs` (``rdoq_model``
        compares the two)."""
        if not torch.is_grad_enabled() or x.device.type != "cpu" or len(self.specs) < 2:
            return False
        a, b = self.specs[0], self.specs[1]
        if not (a.kernel_size == 1 and b.kernel_size == 1 and a.relu and not b.relu
                and not a.residual and not b.residual):
            return False
        # The tiles run one after the other: on several threads oneDNN's convolutions of a
        # narrow head are faster (mop, 16 wide, 2 threads: 117-119 ms an iteration with them,
        # 128-129 with the tiles; the 48-wide hop gains still: docs/compression.md).
        return torch.get_num_threads() == 1 or a.out_channels >= HEAD_MIN_WIDTH_THREADED

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
