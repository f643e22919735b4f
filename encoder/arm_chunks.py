"""The ARM of a large frame, a chunk of rows at a time, in bounded memory.

``arm.build_arm_indices`` gathers the input of every coded value at once:
its indices alone take ``N (2C + F)`` integers (3 GB for a 12 Mpixel frame).
Here the coded values are cut into chunks of whole rows of one grid, never
across a substream stripe, and each chunk gathers its ARM input from a
small local source

    src = [0, y[ctx_start : ctx_start + L], IFCE table rows of the chunk]

where ``y[ctx_start : ...]`` are the rows ``[max(stripe start, r0 - R), r1)``
of the grid (R: the context's reach in rows) and position 0 stands for a
context outside the stripe or the grid. Local indices depend only on the
chunk's shape (grid, rows, rows of context above it, its alignment on the
IFCE source grid), so a frame of 30 chunks needs a handful of index
patterns, built once.

The rate is a sum over coded values, so its gradient is the sum of the
chunks' gradients: with the coded values ``y`` held as a leaf, each chunk
runs forward and backward on its own, its gradient with respect to its
local source is added into ``dR/dy`` (the backward of the gather being the
gather ``grad_index``, as in ``arm._GatherArmInput``) and into the IFCE
table's gradient, and the ARM's parameters accumulate theirs. The result is
the whole-frame gradient up to float summation order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from coolchic.decoder_runtime.arch import DecoderArch, arm_context_offsets, stripe_bounds

from .arm import ArmMLP, Ifce, grid_starts, ifce_table_index, laplace_rate


@dataclass(frozen=True)
class ChunkPattern:
    """Local gather indices of one chunk shape (int32 or int64 tensors).

    ``u_index`` (K * D,): position in the local source of each ARM input;
    ``grad_index`` (L * C,): for each context value and each neighbour slot c,
    the position in the flat ARM input gradient (K * D, then one zero) that
    it received; ``ifce_pixel`` (K,): the local IFCE table row of each value
    (None when the grid has no IFCE source).
    """

    u_index: Tensor
    grad_index: Tensor
    ifce_pixel: Optional[Tensor]
    n_ctx: int  # context values the pattern reads (a short chunk pads its own with zeros)


@dataclass(frozen=True)
class ArmChunk:
    """Coded values ``[start, stop)`` (whole rows of one grid), their context
    values ``[ctx_start, ctx_start + ctx_len)`` and IFCE table rows
    ``[feat_start, feat_stop)``."""

    start: int
    stop: int
    ctx_start: int
    ctx_len: int
    feat_start: int
    feat_stop: int
    pattern: ChunkPattern


@dataclass(frozen=True)
class ArmChunks:
    """Every chunk of a frame (decoding order) and the IFCE table's index."""

    n: int
    chunks: Tuple[ArmChunk, ...]
    ifce_input_index: Optional[Tensor]
    n_ifce_rows: int

    def to(self, device) -> "ArmChunks":
        def mv(t):
            return None if t is None else t.to(device)

        memo: Dict[int, ChunkPattern] = {}

        def pat(p: ChunkPattern) -> ChunkPattern:
            if id(p) not in memo:
                memo[id(p)] = ChunkPattern(mv(p.u_index), mv(p.grad_index), mv(p.ifce_pixel), p.n_ctx)
            return memo[id(p)]

        chunks = tuple(ArmChunk(c.start, c.stop, c.ctx_start, c.ctx_len, c.feat_start, c.feat_stop, pat(c.pattern))
                       for c in self.chunks)
        ifce_in = None if self.ifce_input_index is None else tuple(mv(t) for t in self.ifce_input_index)
        return ArmChunks(self.n, chunks, ifce_in, self.n_ifce_rows)


def _pattern(arch: DecoderArch, g, r0: int, r1: int, c0: int, sa: int, f0: int) -> ChunkPattern:
    """Local indices of rows ``[r0, r1)`` of grid ``g`` (stripe from ``sa``; context from row ``c0``;
    IFCE source rows from ``f0``)."""
    grids = arch.coded_grids()
    c, d, nf = arch.spatial_context_arm, arch.arm_input_dim, arch.ifce_features
    w = g.w
    k_rows = r1 - r0
    n_ctx = (r1 - c0) * w
    yy = torch.arange(r0, r1)[:, None]
    xx = torch.arange(w)[None, :]
    cols, ifce_pixel = [], None
    for dy, dx in arm_context_offsets(c):
        ny, nx = yy + dy, xx + dx
        inside = (ny >= sa) & (nx >= 0) & (nx < w)
        cols.append(torch.where(inside, 1 + (ny - c0) * w + nx, 0).reshape(-1))
    if nf:
        if g.ifce_source >= 0:
            sg = grids[g.ifce_source]
            k = sg.level - g.level
            sy = (yy >> k).clamp(max=sg.h - 1)
            sx = (xx >> k).clamp(max=sg.w - 1)
            ifce_pixel = ((sy - f0) * sg.w + sx).expand(k_rows, w).reshape(-1)
            for j in range(nf):
                cols.append(1 + n_ctx + ifce_pixel * nf + j)
        else:
            cols.extend([torch.zeros(k_rows * w, dtype=torch.int64)] * nf)
    u_index = torch.stack(cols, dim=1).reshape(-1)
    vy = torch.arange(c0, r1)[:, None]
    vx = xx
    gcols = []
    for j, (dy, dx) in enumerate(arm_context_offsets(c)):
        # This value is the j-th neighbour of (vy - dy, vx - dx) if that pixel is in the chunk.
        qy, qx = vy - dy, vx - dx
        ok = (qy >= r0) & (qy < r1) & (qx >= 0) & (qx < w)
        gcols.append(torch.where(ok, ((qy - r0) * w + qx) * d + j, k_rows * w * d).reshape(-1))
    grad_index = torch.stack(gcols, dim=1).reshape(-1)
    small = max(n_ctx + 1 + (ifce_pixel.max().item() + 1 if ifce_pixel is not None else 0) * nf,
                k_rows * w * d + 1) < (1 << 31) - 1
    dt = torch.int32 if small else torch.int64
    return ChunkPattern(u_index.to(dt), grad_index.to(dt), None if ifce_pixel is None else ifce_pixel.to(dt),
                        n_ctx)


@functools.lru_cache(maxsize=4)
def build_arm_chunks(arch: DecoderArch, n_substreams: int, chunk_values: int) -> ArmChunks:
    """Chunks of about ``chunk_values`` coded values (whole rows, within a stripe).

    A chunk shorter than its grid's chunk length (the last of a stripe) uses
    the leading part of the full-length pattern: its first rows read the same
    context, and the rows it lacks give zero gradients (see :func:`_chunk_input` and :func:`_context_grad`).
    """
    grids = arch.coded_grids()
    starts = grid_starts(arch)
    reach = max(-dy for dy, _ in arm_context_offsets(arch.spatial_context_arm))
    ifce_index, blocks, n_rows = ifce_table_index(arch, starts)
    patterns: Dict[tuple, ChunkPattern] = {}
    chunks: List[ArmChunk] = []
    for g in grids:
        align, src = 1, None
        if arch.ifce_features and g.ifce_source >= 0:
            src = grids[g.ifce_source]
            align = 1 << (src.level - g.level)
        rows = max(align, (max(1, chunk_values // g.w) // align) * align)
        rows = min(rows, g.h)
        for sa, sb in stripe_bounds(g.h, n_substreams):
            for r0 in range(sa, sb, rows):
                r1 = min(sb, r0 + rows)
                c0 = max(sa, r0 - reach)
                f0 = f1 = 0
                if src is not None:
                    k = src.level - g.level
                    f0 = min(r0 >> k, src.h - 1)
                    f1 = min(src.h, ((r1 - 1) >> k) + 1)
                # The pattern of a full-length chunk with this start; rows past the
                # grid's end only make its indices longer, never different.
                key = (g.index, r0 - c0, r0 % align)
                if key not in patterns:
                    patterns[key] = _pattern(arch, g, r0, r0 + rows, c0, sa, f0)
                feat0 = blocks.get(g.index, 0) + f0 * (src.w if src is not None else 0)
                feat1 = blocks.get(g.index, 0) + f1 * (src.w if src is not None else 0)
                chunks.append(ArmChunk(starts[g.index] + r0 * g.w, starts[g.index] + r1 * g.w,
                                       starts[g.index] + c0 * g.w, (r1 - c0) * g.w, feat0, feat1, patterns[key]))
    n = starts[-1] + grids[-1].h * grids[-1].w
    return ArmChunks(n, tuple(chunks), ifce_index, n_rows)


def _ifce_table(flat: Tensor, ifce: Optional[Ifce], chunks: ArmChunks) -> Tensor:
    if ifce is None or chunks.ifce_input_index is None:
        return flat.new_zeros(0, 0)
    return ifce(flat, chunks.ifce_input_index, chunks.n_ifce_rows)


def _chunk_input(flat: Tensor, feats: Tensor, ch: ArmChunk, d: int) -> Tensor:
    parts = [flat.new_zeros(1), flat[ch.ctx_start : ch.ctx_start + ch.ctx_len]]
    if ch.pattern.ifce_pixel is not None:
        if ch.ctx_len < ch.pattern.n_ctx:  # a short chunk: the IFCE features sit after the full context
            parts.append(flat.new_zeros(ch.pattern.n_ctx - ch.ctx_len))
        parts.append(feats[ch.feat_start : ch.feat_stop].reshape(-1))
    k = ch.stop - ch.start
    return torch.cat(parts).index_select(0, ch.pattern.u_index[: k * d]).view(k, d)


@torch.no_grad()
def chunked_arm_outputs(flat: Tensor, arm: ArmMLP, ifce: Optional[Ifce], chunks: ArmChunks,
                        d: int) -> Tuple[Tensor, Tensor]:
    """(mu, ln b) of every coded value, (N,) each, chunk by chunk (no gradient)."""
    feats = _ifce_table(flat, ifce, chunks)
    mu, log_scale = flat.new_empty(chunks.n), flat.new_empty(chunks.n)
    for ch in chunks.chunks:
        m, s = arm(_chunk_input(flat, feats, ch, d))
        mu[ch.start : ch.stop] = m
        log_scale[ch.start : ch.stop] = s
    return mu, log_scale


@torch.no_grad()
def chunked_latent_rate(flat: Tensor, arm: ArmMLP, ifce: Optional[Ifce], chunks: ArmChunks, d: int) -> Tensor:
    """Bits of every coded value, (N,), chunk by chunk (no gradient)."""
    feats = _ifce_table(flat, ifce, chunks)
    rate = flat.new_empty(chunks.n)
    for ch in chunks.chunks:
        mu, ls = arm(_chunk_input(flat, feats, ch, d))
        rate[ch.start : ch.stop] = laplace_rate(flat[ch.start : ch.stop], mu, ls)
    return rate


def _context_grad(gu: Tensor, ch: ArmChunk, c: int) -> Tensor:
    """Gradient of the chunk's context values from its ARM input gradient ``gu`` (K, D):
    the backward of the gather, itself a gather through ``grad_index``."""
    full = ch.pattern.u_index.numel()  # the pattern's own K * D, the position of the zero
    tail = full - gu.numel() + 1  # a short chunk: the rows it lacks read zeros too
    padded = torch.cat([gu.reshape(-1), gu.new_zeros(tail)])
    return padded.index_select(0, ch.pattern.grad_index[: ch.ctx_len * c]).view(ch.ctx_len, c).sum(dim=1)


def rate_backward(flat: Tensor, arm: ArmMLP, ifce: Optional[Ifce], chunks: ArmChunks, c: int, d: int,
                  scale: float, grad_flat: Tensor) -> float:
    """Total bits of ``flat`` (a detached tensor); accumulates ``scale * dR/dparams``
    into the ARM's and IFCE's ``.grad`` and ``scale * dR/dy`` into ``grad_flat``."""
    nf = d - c
    if ifce is not None and chunks.ifce_input_index is not None:
        flat_in = flat.detach().requires_grad_()
        feats = _ifce_table(flat_in, ifce, chunks)
        feats_leaf = feats.detach().requires_grad_()
    else:
        flat_in = feats = feats_leaf = None
    table = feats_leaf.detach() if feats_leaf is not None else flat.new_zeros(0, 0)
    grad_table = torch.zeros_like(table) if feats_leaf is not None else None
    total = 0.0
    for ch in chunks.chunks:
        u = _chunk_input(flat, table, ch, d).requires_grad_()
        y = flat[ch.start : ch.stop].detach().requires_grad_()
        mu, ls = arm(u)
        bits = laplace_rate(y, mu, ls).sum()
        total += float(bits.detach())
        (bits * scale).backward()
        grad_flat[ch.start : ch.stop] += y.grad
        gu = u.grad
        grad_flat[ch.ctx_start : ch.ctx_start + ch.ctx_len] += _context_grad(gu, ch, c)
        if ch.pattern.ifce_pixel is not None and grad_table is not None:
            k = ch.stop - ch.start
            grad_table[ch.feat_start : ch.feat_stop].index_add_(0, ch.pattern.ifce_pixel[:k], gu[:, c:])
    if feats is not None:
        feats.backward(grad_table)
        grad_flat += flat_in.grad
    return total
