"""Entropy model of the latents on the training side: the ARM, the IFCE and
the Laplace rate (docs/architecture.md, section 2).

All coded grids are processed at once. Their values are concatenated into one
flat vector in decoding order, and the ARM input of every latent value (its C
causal neighbours, then its F IFCE features) is gathered with one precomputed
index: no Python loop over pixels, one MLP call per iteration. The backward of
the gather is itself a gather (each value is the c-th neighbour of at most one
pixel per c), which is several times faster on the CPU than autograd's
scatter-add.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coolchic.decoder_runtime.arch import DecoderArch, arm_context_offsets, ifce_grids, stripe_bounds

from .init import init_linear_weight_

# ln b = out[1] - 4, clamped; the Laplace probability of a symbol is floored.
LOG_SCALE_SHIFT = 4.0
LOG_SCALE_MIN = -4.5
LOG_SCALE_MAX = 4.0
PROBA_FLOOR = 2.0**-16


@dataclass(frozen=True)
class ArmIndices:
    """Precomputed gather indices for one architecture (they depend on nothing else).

    ``src`` below is ``[flat latents (N), 0, IFCE features (n_ifce_src x F)]``.
    """

    n: int  # coded values in all grids
    grid_starts: Tuple[int, ...]  # offset of each coded grid in the flat vector
    u_index: Tensor  # (N * D,) position in src of each ARM input
    grad_index: Tensor  # (N * C,) position in the padded flat grad of u, per (value, c)
    ifce_input_index: Optional[Tuple[Tensor, ...]]  # positions in the flat latents (ifce_table_index)
    ifce_src_rows: Optional[Tensor]  # rows of u fed by the IFCE (int64)
    ifce_src_pixels: Optional[Tensor]  # for each such row, its source pixel in the IFCE table
    n_ifce_src: int


def grid_starts(arch: DecoderArch) -> List[int]:
    """Offset of each coded grid in the flat vector of coded values (decoding order)."""
    starts, s = [], 0
    for g in arch.coded_grids():
        starts.append(s)
        s += g.h * g.w
    return starts


def ifce_table_index(arch: DecoderArch, starts: List[int]):
    """``(index, blocks, rows)`` of the IFCE table: one block of rows per grid that has
    an IFCE source, one row per pixel of that source, fed by its 3x3 patch (edges
    replicated) then, with ``arch.ifce_stack``, by the value of every grid decoded
    before the source at that pixel's position. ``index`` is a tuple of flat-latent
    positions: one tensor per block (rows x width) with ``ifce_stack``, else one
    tensor for all blocks (their weights are shared); None without IFCE.
    ``blocks[g.index]`` is the first row of grid g's block.
    """
    grids = arch.coded_grids()
    blocks: Dict[int, int] = {}
    n_src = 0
    taps_all = []
    if not arch.ifce_features:
        return None, blocks, 0
    for g in grids:
        if g.ifce_source >= 0:
            sg = grids[g.ifce_source]
            blocks[g.index] = n_src
            yy = torch.arange(sg.h)
            xx = torch.arange(sg.w)
            taps = []
            for dy in (-1, 0, 1):  # rows then columns, edges replicated
                for dx in (-1, 0, 1):
                    ry = (yy + dy).clamp(0, sg.h - 1)
                    rx = (xx + dx).clamp(0, sg.w - 1)
                    taps.append((starts[sg.index] + ry[:, None] * sg.w + rx[None, :]).reshape(-1))
            for j in g.ifce_stack:
                og = grids[j]
                k = og.level - sg.level
                ry = (yy >> k).clamp(max=og.h - 1)
                rx = (xx >> k).clamp(max=og.w - 1)
                taps.append((starts[og.index] + ry[:, None] * og.w + rx[None, :]).reshape(-1))
            taps_all.append(torch.stack(taps, dim=1).reshape(-1))
            n_src += sg.h * sg.w
    if not taps_all:
        return None, blocks, 0
    return (tuple(taps_all) if arch.ifce_stack else (torch.cat(taps_all),)), blocks, n_src


@functools.lru_cache(maxsize=4)
def build_arm_indices(arch: DecoderArch, n_substreams: int = 1) -> ArmIndices:
    """Gather indices of the ARM input for every coded value of ``arch``.

    With ``n_substreams`` stripes per grid, context rows above a pixel's
    stripe read 0, as in the decoder: training sees the context that is coded.
    Cached: warm-up candidates of one frame share them (read-only tensors).
    """
    grids = arch.coded_grids()
    c, d, nf = arch.spatial_context_arm, arch.arm_input_dim, arch.ifce_features
    offsets = arm_context_offsets(c)
    starts = grid_starts(arch)
    n = starts[-1] + grids[-1].h * grids[-1].w
    # int32 indices halve the memory traffic of index_select; fall back when too big.
    idx_dtype = torch.int32 if (n + 1) * max(d, 9) + n < (1 << 31) - 1 else torch.int64

    ifce_in, src_block, n_src = ifce_table_index(arch, starts)

    u_parts, grad_parts, f_rows, f_pix = [], [], [], []
    for g in grids:
        yy = torch.arange(g.h)[:, None]
        xx = torch.arange(g.w)[None, :]
        flat = (starts[g.index] + yy * g.w + xx).reshape(-1)
        # First row of the stripe of each row (the decoder's context stops there).
        r0 = torch.zeros(g.h, dtype=torch.int64)
        for a, b in stripe_bounds(g.h, n_substreams):
            r0[a:b] = a
        cols, gcols = [], []
        for j, (dy, dx) in enumerate(offsets):
            ny, nx = yy + dy, xx + dx
            inside = (ny >= r0[yy]) & (ny < g.h) & (nx >= 0) & (nx < g.w)
            cols.append(torch.where(inside, starts[g.index] + ny * g.w + nx, n).reshape(-1))
            # This value is the j-th neighbour of pixel (y - dy, x - dx), if that pixel exists.
            qy, qx = yy - dy, xx - dx
            qin = (qy >= 0) & (qy < g.h) & (qx >= 0) & (qx < g.w)
            qin &= yy >= r0[qy.clamp(0, g.h - 1)]
            q = starts[g.index] + qy * g.w + qx
            gcols.append(torch.where(qin, q * d + j, n * d).reshape(-1))
        if nf:
            if g.ifce_source >= 0:
                sg = grids[g.ifce_source]
                k = sg.level - g.level
                sy = (yy >> k).clamp(max=sg.h - 1)
                sx = (xx >> k).clamp(max=sg.w - 1)
                pix = (src_block[g.index] + sy * sg.w + sx).reshape(-1)
                for j in range(nf):
                    cols.append(n + 1 + pix * nf + j)
                f_rows.append(flat)
                f_pix.append(pix)
            else:
                cols.extend([torch.full_like(flat, n)] * nf)
        u_parts.append(torch.stack(cols, dim=1))
        grad_parts.append(torch.stack(gcols, dim=1))

    u_index = torch.cat(u_parts).reshape(-1).to(idx_dtype)
    grad_index = torch.cat(grad_parts).reshape(-1).to(idx_dtype)
    return ArmIndices(
        n=n,
        grid_starts=tuple(starts),
        u_index=u_index,
        grad_index=grad_index,
        ifce_input_index=tuple(t.to(idx_dtype) for t in ifce_in) if ifce_in is not None else None,
        ifce_src_rows=torch.cat(f_rows) if f_rows else None,
        ifce_src_pixels=torch.cat(f_pix) if f_pix else None,
        n_ifce_src=n_src,
    )


class _GatherArmInput(torch.autograd.Function):
    """u = src[u_index] with src = [latents, 0, IFCE features], and its fast backward."""

    @staticmethod
    def forward(ctx, flat: Tensor, feats: Tensor, idx: ArmIndices, c: int, d: int) -> Tensor:
        src = torch.cat([flat, flat.new_zeros(1), feats.reshape(-1)])
        ctx.idx, ctx.c = idx, c
        ctx.nf = feats.shape[1] if feats.dim() == 2 else 0
        return src.index_select(0, idx.u_index).view(idx.n, d)

    @staticmethod
    def backward(ctx, grad_u: Tensor):
        idx, c = ctx.idx, ctx.c
        grad_u = grad_u.contiguous()
        padded = torch.cat([grad_u.reshape(-1), grad_u.new_zeros(1)])
        grad_flat = padded.index_select(0, idx.grad_index).view(idx.n, c).sum(dim=1)
        grad_feats = None
        if ctx.nf and ctx.needs_input_grad[1]:
            rows = grad_u.index_select(0, idx.ifce_src_rows)[:, c:]
            grad_feats = grad_u.new_zeros(idx.n_ifce_src, ctx.nf).index_add_(0, idx.ifce_src_pixels, rows)
        return grad_flat, grad_feats, None, None, None


class Ifce(nn.Module):
    """Inter-feature context extractor: ``f = relu(W v + b)``, ``v`` a source pixel's
    3x3 patch (then, with ``ifce_stack``, the co-located values of the coarser grids).

    Without ``ifce_stack`` one (W, b) serves every grid (``ifce.weight``); with it,
    each grid that has an IFCE has its own (``ifce.<k>.weight``, k-th such grid in
    decoding order), ``widths[k]`` inputs wide.
    """

    def __init__(self, n_features: int, widths: Optional[Sequence[int]] = None):
        super().__init__()
        self.stacked = widths is not None
        if self.stacked:
            for k, w in enumerate(widths):
                self.add_module(str(k), _IfceLayer(n_features, w))
        else:
            self.weight = nn.Parameter(torch.empty(n_features, 9))
            self.bias = nn.Parameter(torch.empty(n_features))
        self.reinitialize_parameters()

    @classmethod
    def for_arch(cls, arch: DecoderArch) -> "Ifce":
        if not arch.ifce_stack:
            return cls(arch.ifce_features)
        return cls(arch.ifce_features, [9 + len(g.ifce_stack) for g in ifce_grids(arch)])

    def reinitialize_parameters(self) -> None:
        if self.stacked:
            for layer in self.children():
                layer.reinitialize_parameters()
        else:
            init_linear_weight_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, flat: Tensor, index: Tuple[Tensor, ...], n_rows: int) -> Tensor:
        """The IFCE table (n_rows, F) of the flat latents (``index``: see :func:`ifce_table_index`)."""
        if not self.stacked:
            v = flat.index_select(0, index[0]).view(n_rows, 9)
            return torch.relu(F.linear(v, self.weight, self.bias))
        outs = []
        for layer, ix in zip(self.children(), index):
            v = flat.index_select(0, ix).view(-1, layer.weight.shape[1])
            outs.append(torch.relu(F.linear(v, layer.weight, layer.bias)))
        return torch.cat(outs)


class _IfceLayer(nn.Module):
    def __init__(self, n_features: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_features, width))
        self.bias = nn.Parameter(torch.empty(n_features))

    def reinitialize_parameters(self) -> None:
        init_linear_weight_(self.weight)
        nn.init.zeros_(self.bias)


def _use_onednn(x: Tensor) -> bool:
    """Whether the ARM's layers go through oneDNN's 1x1 convolution (CPU, several
    threads): a single-threaded convolution falls back to PyTorch's slow path."""
    return x.device.type == "cpu" and torch.get_num_threads() > 1


def _linear_nd(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """(N, Din) @ weight.T + bias -> (N, Dout), both sides row-major.

    With several threads the (N, D) memory is handed to oneDNN as a
    channels-last (1, D, 1, N) image: its 1x1 convolution beats a GEMM with
    such a small inner size (0.59 against 0.78 ms for N = 87 000, D = 20 -> 16,
    2 threads). On one thread PyTorch takes its slow convolution path instead,
    and the GEMM wins (1.74 against 1.97 ms); see :func:`_use_onednn`.
    """
    n, din = x.shape
    if not _use_onednn(x):
        return F.linear(x, weight, bias)
    y = F.conv2d(x.view(1, 1, n, din).permute(0, 3, 1, 2), weight[:, :, None, None], bias)
    y = y.permute(0, 2, 3, 1)
    return y.view(n, weight.shape[0]) if y.is_contiguous() else y.reshape(n, weight.shape[0])


def _cl_view(x: Tensor) -> Tensor:
    n, d = x.shape
    return x.view(1, 1, n, d).permute(0, 3, 1, 2)


def _linear_nd_backward(g: Tensor, h: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, weight, bias) of ``_linear_nd(h, weight, bias)`` given ``g``.

    With several threads one oneDNN convolution-backward call does all three
    faster than two GEMMs and a reduction (1.96 against 2.53 ms, N = 87 000,
    D = 20 -> 16, 2 threads); on one thread the GEMMs win (4.31 against 6.50 ms).
    """
    n, din = h.shape
    dout = weight.shape[0]
    if not _use_onednn(h):
        return g @ weight, g.t() @ h, g.sum(0)
    gi, gw, gb = torch.ops.aten.convolution_backward(
        _cl_view(g), _cl_view(h), weight[:, :, None, None], [dout], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
        [True, True, True],
    )
    gi = gi.permute(0, 2, 3, 1)
    gi = gi.view(n, din) if gi.is_contiguous() else gi.reshape(n, din)
    return gi, gw.view(dout, din), gb


def _with_residual(w: Tensor, c: int) -> Tensor:
    """W + [I_c, 0]: a residual ``+ h[:c]`` folded into the layer's weight."""
    eye = torch.eye(c, w.shape[1], dtype=w.dtype, device=w.device)
    return w + eye


class _ArmMLPFunction(torch.autograd.Function):
    """The ARM MLP with a hand-written backward.

    Each residual layer ``relu(W h + b + h[:C])`` is computed as
    ``relu((W + [I 0]) h + b)``: the residual costs no pass over the (N, C)
    activations, forward or backward, and the weight gradient is unchanged.
    Activations are updated in place; each layer's backward is two GEMM-like
    calls plus one mask.
    """

    @staticmethod
    def forward(ctx, u: Tensor, n_context: int, n_hidden: int, has_stab: bool, *params: Tensor) -> Tensor:
        c = n_context
        acts = [u]
        h = u
        for i in range(n_hidden):
            a = _linear_nd(h, _with_residual(params[2 * i], c), params[2 * i + 1])
            a.relu_()
            acts.append(a)
            h = a
        w_out, b_out = params[2 * n_hidden], params[2 * n_hidden + 1]
        out = _linear_nd(h, w_out, b_out)
        if has_stab:
            # Accumulated in place: an (N, 2) product and a sum would be two more passes.
            out.addmm_(u, params[2 * n_hidden + 2].t())
        ctx.save_for_backward(*acts, *params)
        ctx.meta = (c, n_hidden, has_stab)
        return out

    @staticmethod
    def backward(ctx, g_out: Tensor):
        c, n_hidden, has_stab = ctx.meta
        saved = ctx.saved_tensors
        acts, params = saved[: n_hidden + 1], saved[n_hidden + 1 :]
        g_out = g_out.contiguous()
        grads = [None] * len(params)
        grads[2 * n_hidden] = g_out.t() @ acts[-1]
        grads[2 * n_hidden + 1] = g_out.sum(0)
        if has_stab:
            grads[2 * n_hidden + 2] = g_out.t() @ acts[0]
        g = _linear_nd(g_out, params[2 * n_hidden].t().contiguous())
        for i in range(n_hidden - 1, -1, -1):
            g = torch.ops.aten.threshold_backward(g, acts[i + 1], 0.0)
            g, grads[2 * i], grads[2 * i + 1] = _linear_nd_backward(g, acts[i], _with_residual(params[2 * i], c))
        if has_stab:
            # g is this function's own (N, D) array: the stabiliser's share is added in place.
            g.addmm_(g_out, params[2 * n_hidden + 2])
        return (g, None, None, None, *grads)


class ArmMLP(nn.Module):
    """The ARM network: residual ReLU hidden layers, 2 outputs, optional stabiliser.

    Parameters are ``mlp.{i}.weight`` (out, in) / ``mlp.{i}.bias`` and
    ``stabiliser.weight``, as in ``param_layout``. Hidden layer i computes
    ``relu(W_i h + b_i + h[:C])``.
    """

    def __init__(self, n_context: int, input_dim: int, n_hidden: int, stabiliser: bool):
        super().__init__()
        self.n_context, self.input_dim, self.n_hidden = n_context, input_dim, n_hidden
        layers = []
        for i in range(n_hidden):
            layers.append(nn.Linear(input_dim if i == 0 else n_context, n_context))
        layers.append(nn.Linear(n_context if n_hidden else input_dim, 2))
        self.mlp = nn.ModuleList(layers)
        self.stabiliser = nn.Linear(input_dim, 2, bias=False) if stabiliser else None
        self.reinitialize_parameters()

    def reinitialize_parameters(self) -> None:
        # Hidden layers start as the identity (residual path only), so a fresh
        # ARM passes the context through; the output layer is random.
        for layer in self.mlp[:-1]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        out = self.mlp[-1]
        init_linear_weight_(out.weight)
        nn.init.zeros_(out.bias)
        if self.stabiliser is not None:
            init_linear_weight_(self.stabiliser.weight)

    def raw_output(self, u: Tensor) -> Tensor:
        """(N, 2) network output for the (N, D) inputs ``u``."""
        params = []
        for layer in self.mlp:
            params += [layer.weight, layer.bias]
        if self.stabiliser is not None:
            params.append(self.stabiliser.weight)
        return _ArmMLPFunction.apply(u, self.n_context, self.n_hidden, self.stabiliser is not None, *params)

    def forward(self, u: Tensor) -> Tuple[Tensor, Tensor]:
        """``u`` is (N, D); returns ``mu`` and the clamped ``ln b``, each (N,)."""
        out = self.raw_output(u)
        mu = out[:, 0]
        log_scale = torch.clamp(out[:, 1] - LOG_SCALE_SHIFT, LOG_SCALE_MIN, LOG_SCALE_MAX)
        return mu, log_scale


def arm_input(flat: Tensor, ifce: Optional[Ifce], idx: ArmIndices, n_context: int, input_dim: int) -> Tensor:
    """(N, D) ARM inputs of every coded value: causal context, then IFCE features."""
    feats = ifce(flat, idx.ifce_input_index, idx.n_ifce_src) if ifce is not None else flat.new_zeros(0)
    return _GatherArmInput.apply(flat, feats, idx, n_context, input_dim)


def laplace_rate(y: Tensor, mu: Tensor, log_scale: Tensor) -> Tensor:
    """Bits of each integer ``y`` under Laplace(mu, b = exp(log_scale)), P floored at 2^-16.

    By symmetry P depends on a = |y - mu| only:
    P = F(a + 1/2) - F(a - 1/2) with F the Laplace(0, b) CDF.
    """
    inv_b = torch.exp(-log_scale)
    a = torch.abs(y - mu)
    e_lo = torch.exp(-torch.abs(a - 0.5) * inv_b)
    e_hi = torch.exp(-(a + 0.5) * inv_b)
    p = torch.where(a >= 0.5, 0.5 * e_lo, 1.0 - 0.5 * e_lo) - 0.5 * e_hi
    return -torch.log2(torch.clamp(p, min=PROBA_FLOOR))


def split_flat(flat: Tensor, arch: DecoderArch) -> List[Tensor]:
    """The flat vector of coded values cut back into (h, w) grids, decoding order."""
    out, s = [], 0
    for g in arch.coded_grids():
        out.append(flat[s : s + g.h * g.w].view(g.h, g.w))
        s += g.h * g.w
    return out
