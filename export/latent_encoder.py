"""Latent encoding: the writing twin of decoder_runtime/latent_codec.py.

The encoder knows every latent, so it runs the integer ARM once per grid on
all pixels (the decoder runs it wave by wave, with the same kernel and the
same integers), then range codes each stripe in the decoder's wavefront order.
It also returns the ideal cost of the integer model (sum of -log2 p), which
measures the range coder's overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from coolchic.decoder_runtime.arch import DecoderArch, stripe_bounds
from coolchic.decoder_runtime.arm_int import IntArm, arm_forward, new_scratch
from coolchic.decoder_runtime.errors import EncodeError
from coolchic.decoder_runtime.jit import njit
from coolchic.decoder_runtime.latent_codec import (
    MAX_LATENT,
    context_arrays,
    context_offsets,
    gather_run,
    grid_features,
    skew_index,
    skewed_stripe,
    stripe_layout,
    wave_rows,
)
from coolchic.decoder_runtime.prob_tables import TOTAL_BITS, get_tables

from .range_encoder import encode_bits, encode_symbol, encoder_finish, new_encoder_state


@njit
def _grid_arm(y_grid, bounds, gf, ctx, net, mu_int, frac, kidx):
    """ARM outputs of every pixel of a grid (row-major), stripes respected.

    Same gather and ARM kernels as the decoder, a row at a time, on the
    int64 net (exact for every input).
    """
    h, w = y_grid.shape
    x = np.zeros((net.dim, w), dtype=net.wh.dtype)  # arm_forward reads x of the net's type
    scr = new_scratch(net, w)
    nz = np.empty(w, dtype=np.uint8)
    for s in range(bounds.shape[0]):
        r0, r1 = bounds[s, 0], bounds[s, 1]
        if r1 <= r0:
            continue
        yp = skewed_stripe(y_grid, r0, r1, ctx.slope)
        hs, cpad, _ = stripe_layout(r1 - r0, w, ctx.slope)
        offs = context_offsets(ctx, hs)
        for i in range(r1 - r0):
            # Along a row, the skewed copy steps one column (hs values) per pixel.
            gather_run(yp, skew_index(i, 0, hs, cpad, ctx.slope), hs, w, offs, gf, r0 + i, 0, 0, 1, x, nz, 0)
            o = (r0 + i) * w
            arm_forward(x, w, net, scr, mu_int[o:o + w], frac[o:o + w], kidx[o:o + w])


@njit
def _encode_stripe(out, st, y_grid, r0, r1, slope, mu_int, frac, kidx, cum, offset, half_width):
    """Range code one stripe in wavefront order; return its ideal cost in bits."""
    w = y_grid.shape[1]
    n_rows = r1 - r0
    bits = 0.0
    if n_rows <= 0:
        return bits
    n_waves = (w - 1) + slope * (n_rows - 1) + 1
    for t in range(n_waves):
        lo, hi = wave_rows(t, n_rows, w, slope)
        for i in range(lo, hi + 1):
            j = t - slope * i
            idx = (r0 + i) * w + j
            k = kidx[idx]
            big_r = half_width[k]
            off = offset[frac[idx], k]
            r = np.int64(y_grid[r0 + i, j]) - mu_int[idx]
            if r >= -big_r and r <= big_r:
                s = r + big_r
            else:
                s = 2 * big_r + 1
            c0 = np.int64(cum[off + s])
            f = np.int64(cum[off + s + 1]) - c0
            encode_symbol(out, st, c0, f)
            bits += TOTAL_BITS - np.log2(f)
            if s == 2 * big_r + 1:
                sign = 1 if r < 0 else 0
                m = (-r if r < 0 else r) - big_r - 1
                v = m + 1
                nbits = 0
                while (v >> (nbits + 1)) > 0:
                    nbits += 1
                encode_bits(out, st, sign, 1)
                for _ in range(nbits):
                    encode_bits(out, st, 0, 1)
                encode_bits(out, st, 1, 1)
                encode_bits(out, st, v & ((np.int64(1) << nbits) - 1), nbits)
                bits += 2 + 2 * nbits
    return bits


@dataclass(frozen=True)
class EncodedLatents:
    substreams: List[bytes]
    ideal_bits: float  # sum of -log2 p of the integer model, escapes included


def encode_latent_grids(arch: DecoderArch, arm: IntArm, latents: Sequence[np.ndarray], n_substreams: int) -> EncodedLatents:
    """Range code ``latents`` (``arch.coded_grids()`` order) into ``n_substreams`` streams."""
    grids = arch.coded_grids()
    if len(latents) != len(grids):
        raise EncodeError(f"expected {len(grids)} latent grids, got {len(latents)}")
    tables = get_tables()
    ctx = context_arrays(arch)
    n_symbols = sum(g.h * g.w for g in grids)
    # Worst case per symbol: 16 bits + an escape of 1 + 2*17 bits.
    cap = 7 * n_symbols + 64
    outs = [np.zeros(cap, dtype=np.uint8) for _ in range(n_substreams)]
    states = [new_encoder_state() for _ in range(n_substreams)]
    ideal = 0.0
    decoded: List[np.ndarray] = []
    for g, y in zip(grids, latents):
        y = np.ascontiguousarray(y, dtype=np.int32)
        if y.shape != (g.h, g.w):
            raise EncodeError(f"grid {g.index}: shape {y.shape}, expected {(g.h, g.w)}")
        if np.abs(y.astype(np.int64)).max(initial=0) > MAX_LATENT:
            raise EncodeError(f"grid {g.index}: a latent exceeds the format's bound of {MAX_LATENT}")
        gf = grid_features(arch, arm, g, decoded)
        bounds = np.array(stripe_bounds(g.h, n_substreams), dtype=np.int64).reshape(n_substreams, 2)
        mu_int = np.empty(g.h * g.w, dtype=np.int64)
        frac = np.empty(g.h * g.w, dtype=np.int64)
        kidx = np.empty(g.h * g.w, dtype=np.int64)
        _grid_arm(y, bounds, gf, ctx, arm.net64, mu_int, frac, kidx)
        for s in range(n_substreams):
            ideal += _encode_stripe(outs[s], states[s], y, bounds[s, 0], bounds[s, 1], ctx.slope,
                                    mu_int, frac, kidx, tables.cum, tables.offset, tables.half_width)
        decoded.append(y)
    subs = []
    for out, st in zip(outs, states):
        n = encoder_finish(out, st)
        if n < 0:
            raise EncodeError("range encoder output buffer overflow")
        subs.append(out[:n].tobytes())
    return EncodedLatents(subs, ideal)
