"""Upsampling of the hierarchical latents into one dense tensor
(docs/architecture.md, section 3).

Per transition a separable symmetric transposed convolution (x2) and a
separable symmetric pre-concatenation filter. Only half of each symmetric
kernel is a parameter, so symmetry holds by construction and the parameters
have exactly the shapes the bitstream carries.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coolchic.decoder_runtime.tiling import RowWindow
from coolchic.decoder_runtime.upsampling_kernels import default_upsampling_kernels


def initial_tconv_kernel(k: int) -> Tensor:
    """Full kernel of size ``k``: bilinear for 4 and 6, bicubic from 8, zero padded, centred.

    The runtime's definition, so that static kernels mean the same on both sides.
    """
    return torch.from_numpy(default_upsampling_kernels(k, 1)[0].astype("float32"))


def initial_preconcat_kernel(k: int) -> Tensor:
    """A unit impulse of odd size ``k``: the pre-concatenation filter starts as identity."""
    return torch.from_numpy(default_upsampling_kernels(4, k)[1].astype("float32"))


class HalfKernel(nn.Module):
    """Half ``t[K//2:]`` of a symmetric 1-D kernel, stored as ``weight``."""

    def __init__(self, full: Tensor, learnable: bool):
        super().__init__()
        self.size = full.numel()
        self.weight = nn.Parameter(full[self.size // 2 :].clone(), requires_grad=learnable)

    def full(self) -> Tensor:
        w = self.weight
        if self.size % 2 == 0:
            return torch.cat([w.flip(0), w])
        return torch.cat([w[1:].flip(0), w])


# Filters run along one axis of a stack of planes. The planes' rows are cut into
# LANES interleaved columns that oneDNN sees as the channels of a channels-last
# depthwise convolution: a single-channel convolution (and its backward) is
# 5-10x slower on CPU. The other axis is filtered after a transpose.
LANES = 16


def _filter_axis1(x: Tensor, k: Tensor, upsample: bool) -> Tensor:
    """Filter every column of ``x`` (P, A, B) along A with the 1-D kernel ``k``.

    ``upsample``: stride-2 transposed convolution, ``y[m] = sum_i x[i] k[m - 2i]``
    (length 2A + K - 2); otherwise a 'valid' correlation (length A - K + 1).
    """
    n, a, b = x.shape
    pad = (-b) % LANES
    x = F.pad(x, (0, pad)) if pad else x.contiguous()
    v = x.view(n, a, (b + pad) // LANES, LANES).permute(0, 3, 1, 2)
    kk = k.view(1, 1, -1, 1).expand(LANES, 1, -1, 1)
    if upsample:
        y = F.conv_transpose2d(v, kk, stride=(2, 1), groups=LANES)
    else:
        y = F.conv2d(v, kk, groups=LANES)
    y = y.permute(0, 2, 3, 1).reshape(n, y.shape[2], b + pad)
    return y[:, :, :b] if pad else y


def up2(x: Tensor, t: Tensor, out_h: int, out_w: int, row_shift: int = 0) -> Tensor:
    """2x transposed-convolution upsampling of every (batch, channel) plane of ``x``.

    Replicate padding of P = ceil(K/4) per side, stride-2 transposed convolution
    along H then W, crop from c = K/2 - 1 + 2P, then crop to (out_h, out_w).
    ``row_shift`` moves the row crop: for a band of input rows from S whose
    output rows start at s, ``row_shift = s - 2 S`` (decoder_runtime/tiling.py).
    Padding both axes before filtering equals padding each axis before its own
    pass, because replication commutes with a filter along the other axis.
    """
    b, c, h, w = x.shape
    k = t.numel()
    p = math.ceil(k / 4)
    start = k // 2 - 1 + 2 * p
    y = F.pad(x, (p, p, p, p), mode="replicate").reshape(b * c, h + 2 * p, w + 2 * p)
    y = _filter_axis1(y, t, upsample=True)[:, start + row_shift : start + row_shift + out_h]
    y = _filter_axis1(y.transpose(1, 2), t, upsample=True)[:, start : start + out_w]
    return y.transpose(1, 2).reshape(b, c, out_h, out_w)


def separable_filter(x: Tensor, p: Tensor) -> Tensor:
    """Replicate-padded correlation with ``p`` along H then W, per plane."""
    k = p.numel()
    if k == 1:
        return x * (p * p)  # the same 1-tap filter along H and along W
    b, c, h, w = x.shape
    r = k // 2
    y = F.pad(x, (r, r, r, r), mode="replicate").reshape(b * c, h + 2 * r, w + 2 * r)
    y = _filter_axis1(y, p, upsample=False)
    y = _filter_axis1(y.transpose(1, 2), p, upsample=False)
    return y.transpose(1, 2).reshape(b, c, h, w)


class Upsampling(nn.Module):
    """``upsampling.tconv.{l}.weight`` and ``upsampling.preconcat.{l}.weight``, l = 0..N-2."""

    def __init__(self, n_grids: int, ups_k_size: int, ups_preconcat_k_size: int, static: bool):
        super().__init__()
        self.n_grids, self.k, self.kp, self.static = n_grids, ups_k_size, ups_preconcat_k_size, static
        self.tconv = nn.ModuleList(
            HalfKernel(initial_tconv_kernel(ups_k_size), not static) for _ in range(n_grids - 1)
        )
        self.preconcat = nn.ModuleList(
            HalfKernel(initial_preconcat_kernel(ups_preconcat_k_size), not static) for _ in range(n_grids - 1)
        )

    def reinitialize_parameters(self) -> None:
        with torch.no_grad():
            for m in self.tconv:
                m.weight.copy_(initial_tconv_kernel(self.k)[self.k // 2 :])
            for m in self.preconcat:
                m.weight.copy_(initial_preconcat_kernel(self.kp)[self.kp // 2 :])

    def forward(self, grids: Sequence[Tensor], sizes: Sequence[Tuple[int, int]]) -> Tensor:
        """``grids[i]`` is (B, 1, h_i, w_i), finest first; returns (B, N, h_0, w_0).

        B stacks independent signals that share the kernels (latents and
        common randomness).
        """
        x = grids[-1]
        for lv in range(self.n_grids - 2, -1, -1):
            h, w = sizes[lv]
            x = up2(x, self.tconv[lv].full(), h, w)
            x = torch.cat([separable_filter(grids[lv], self.preconcat[lv].full()), x], dim=1)
        return x

    def forward_rows(self, grids: Sequence[Tensor], sizes: Sequence[Tuple[int, int]], window: RowWindow) -> Tensor:
        """The rows ``window.dense_rows[0]`` of :meth:`forward`'s output, from the rows
        ``window.latent_rows[i]`` of each grid (``grids[i]``), as the decoder's tiles.

        Each level computes only its ``dense_rows``; replicated padding at a band's
        inner edge only reaches rows the next level does not read.
        """
        x = grids[-1]
        for lv in range(self.n_grids - 2, -1, -1):
            s, e = window.dense_rows[lv]
            big_s = window.dense_rows[lv + 1][0]
            x = up2(x, self.tconv[lv].full(), e - s, sizes[lv][1], row_shift=s - 2 * big_s)
            a = window.latent_rows[lv][0]
            pre = separable_filter(grids[lv], self.preconcat[lv].full())[:, :, s - a : e - a]
            x = torch.cat([pre, x], dim=1)
        return x
