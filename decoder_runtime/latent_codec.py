"""Latent decoding: range decoder + integer ARM, wave by wave.

Grids are decoded coarsest first (``arch.coded_grids()``).  Each grid is cut
into horizontal stripes, one per substream; a stripe's context stops at its
first row, so substreams decode independently (numba ``prange``, one thread
each).  Inside a stripe, pixels are coded in wavefront order: pixel (i, j) at
step ``j + K*i`` where K is ``arch.wavefront_slope`` — every context pixel of
a wave is already decoded, so the ARM runs once per wave on all its pixels
(vectorised integer arithmetic) instead of once per pixel.  The encoder
(export/latent_encoder.py) uses these very kernels and this order.
"""

from __future__ import annotations

import os
from typing import List, Sequence

import numba as nb
import numpy as np

from .arch import DecoderArch, arm_context_offsets, stripe_bounds, wavefront_slope
from .arm_int import FRAC, IntArm, arm_forward, ifce_forward
from .errors import BitstreamError
from .prob_tables import get_tables
from .range_coder import (
    ST_STATUS,
    STATUS_BAD_ESCAPE,
    STATUS_OK,
    STATUS_OVERREAD,
    STATUS_RANGE,
    decode_bits,
    decode_symbol,
    decoder_init,
)

MAX_LATENT = (1 << 14) - 1  # |latent| bound of the format
MAX_ESCAPE_PREFIX = 16


@nb.njit(cache=True, inline="always")
def gather_column(y_grid, r0, row, j, w, dys, dxs, ifce, n_ifce, x, col):
    """Context (and IFCE features) of pixel (row, j) into column ``col`` of ``x``.

    Neighbours outside the grid or above the stripe's first row ``r0`` read 0.
    """
    n_ctx = dys.size
    for c in range(n_ctx):
        yy = row + dys[c]
        xx = j + dxs[c]
        if yy >= r0 and xx >= 0 and xx < w:
            x[c, col] = np.int64(y_grid[yy, xx]) << FRAC
        else:
            x[c, col] = 0
    # Grids without an IFCE source still feed the ARM zeros in those slots.
    for f in range(x.shape[0] - n_ctx):
        x[n_ctx + f, col] = ifce[f, row * w + j] if f < n_ifce else 0


@nb.njit(cache=True)
def wave_rows(t, n_rows, w, slope):
    """First and last stripe row of wave ``t``."""
    lo = 0
    if t > w - 1:
        lo = (t - (w - 1) + slope - 1) // slope
    hi = min(n_rows - 1, t // slope)
    return lo, hi


@nb.njit(cache=True)
def _decode_stripe(buf, st, y_grid, r0, r1, w, ifce, n_ifce, dys, dxs, slope,
                   wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in,
                   cum, offset, half_width):
    n_rows = r1 - r0
    if n_rows <= 0:
        return
    cap = min(n_rows, w // slope + 1)
    x = np.zeros((dim_in, cap), dtype=np.int64)
    h0 = np.empty((n_ctx, cap), dtype=np.int64)
    h1 = np.empty((n_ctx, cap), dtype=np.int64)
    acc = np.empty(cap, dtype=np.int64)
    acc2 = np.empty(cap, dtype=np.int64)
    mu_int = np.empty(cap, dtype=np.int64)
    frac = np.empty(cap, dtype=np.int64)
    kidx = np.empty(cap, dtype=np.int64)
    n_waves = (w - 1) + slope * (n_rows - 1) + 1
    for t in range(n_waves):
        lo, hi = wave_rows(t, n_rows, w, slope)
        n = hi - lo + 1
        for p in range(n):
            i = lo + p
            gather_column(y_grid, r0, r0 + i, t - slope * i, w, dys, dxs, ifce, n_ifce, x, p)
        arm_forward(x, n, wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, h0, h1, acc, acc2, mu_int, frac, kidx)
        for p in range(n):
            i = lo + p
            k = kidx[p]
            big_r = half_width[k]
            s = decode_symbol(buf, st, cum, offset[frac[p], k], 2 * big_r + 2)
            if s == 2 * big_r + 1:
                sign = decode_bits(buf, st, 1)
                nz = 0
                while decode_bits(buf, st, 1) == 0:
                    nz += 1
                    if nz > MAX_ESCAPE_PREFIX or st[ST_STATUS] != STATUS_OK:
                        st[ST_STATUS] = STATUS_BAD_ESCAPE
                        return
                m = ((np.int64(1) << nz) | decode_bits(buf, st, nz)) - 1
                r = big_r + 1 + m
                if sign == 1:
                    r = -r
            else:
                r = s - big_r
            v = mu_int[p] + r
            if v > MAX_LATENT or v < -MAX_LATENT:
                st[ST_STATUS] = STATUS_RANGE
                return
            y_grid[r0 + i, t - slope * i] = v
        if st[ST_STATUS] != STATUS_OK:
            return


@nb.njit(cache=True)
def _decode_grid_serial(data, starts, ends, states, bounds, y_grid, w, ifce, n_ifce, dys, dxs, slope,
                        wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, cum, offset, half_width):
    for s in range(states.shape[0]):
        _decode_stripe(data[starts[s]:ends[s]], states[s], y_grid, bounds[s, 0], bounds[s, 1], w, ifce, n_ifce,
                       dys, dxs, slope, wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, cum, offset, half_width)


@nb.njit(cache=True, parallel=True)
def _decode_grid_parallel(data, starts, ends, states, bounds, y_grid, w, ifce, n_ifce, dys, dxs, slope,
                          wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, cum, offset, half_width):
    for s in nb.prange(states.shape[0]):
        _decode_stripe(data[starts[s]:ends[s]], states[s], y_grid, bounds[s, 0], bounds[s, 1], w, ifce, n_ifce,
                       dys, dxs, slope, wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, cum, offset, half_width)


def grid_ifce(arch: DecoderArch, arm: IntArm, grid, decoded: Sequence[np.ndarray]) -> np.ndarray:
    """IFCE features [F, h*w] of a coded grid (a 1x1 dummy when it has none)."""
    if grid.ifce_source < 0 or arm.n_ifce == 0:
        return np.zeros((1, 1), dtype=np.int64)
    src_grid = arch.coded_grids()[grid.ifce_source]
    out = np.empty((arm.n_ifce, grid.h * grid.w), dtype=np.int64)
    ifce_forward(decoded[grid.ifce_source], src_grid.level - grid.level, grid.h, grid.w,
                 arm.w_ifce, arm.b_ifce, arm.shift_ifce, arm.n_ifce, out)
    return out


def context_arrays(arch: DecoderArch):
    offs = arm_context_offsets(arch.spatial_context_arm)
    dys = np.array([o[0] for o in offs], dtype=np.int64)
    dxs = np.array([o[1] for o in offs], dtype=np.int64)
    return dys, dxs, wavefront_slope(arch.spatial_context_arm)


_STATUS_TEXT = {
    STATUS_OVERREAD: "a latent substream ends before its last symbol",
    STATUS_BAD_ESCAPE: "a latent substream holds an invalid escape code",
    STATUS_RANGE: f"a decoded latent exceeds the format's bound of {MAX_LATENT}",
}


def decode_latent_grids(arch: DecoderArch, arm: IntArm, substreams: Sequence[bytes], threads: int = 1) -> List[np.ndarray]:
    """Decode every coded grid (``arch.coded_grids()`` order) as int32 arrays."""
    n_sub = len(substreams)
    tables = get_tables()
    dys, dxs, slope = context_arrays(arch)
    data = np.frombuffer(b"".join(bytes(s) for s in substreams), dtype=np.uint8)
    lengths = np.array([len(s) for s in substreams], dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    states = np.zeros((n_sub, 4), dtype=np.int64)
    for s in range(n_sub):
        decoder_init(data[starts[s]:ends[s]], states[s])
    threads = max(1, min(int(threads), n_sub, nb.config.NUMBA_NUM_THREADS))
    parallel = threads > 1
    if parallel:
        nb.set_num_threads(threads)
    decoded: List[np.ndarray] = []
    for g in arch.coded_grids():
        y_grid = np.zeros((g.h, g.w), dtype=np.int32)
        ifce = grid_ifce(arch, arm, g, decoded)
        n_ifce = arm.n_ifce if g.ifce_source >= 0 else 0
        bounds = np.array(stripe_bounds(g.h, n_sub), dtype=np.int64).reshape(n_sub, 2)
        run = _decode_grid_parallel if parallel else _decode_grid_serial
        run(data, starts, ends, states, bounds, y_grid, g.w, ifce, n_ifce, dys, dxs, slope,
            arm.w_hidden, arm.b_hidden, arm.w_out, arm.w_stab, arm.b_out, arm.shift, arm.n_hidden,
            arm.n_context, arm.dim_in, tables.cum, tables.offset, tables.half_width)
        bad = states[:, ST_STATUS]
        if np.any(bad != STATUS_OK):
            code = int(bad[bad != STATUS_OK][0])
            raise BitstreamError(f"grid {g.index} (level {g.level}): {_STATUS_TEXT.get(code, 'decoding failed')}")
        decoded.append(y_grid)
    return decoded


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def decode_latents(bs, threads: int = 1) -> List[np.ndarray]:
    """Decode the latents of a parsed bitstream (``bitstream.read_bitstream``)."""
    from .arm_int import build_int_arm

    arm = build_int_arm(bs.arch, bs.q_params, bs.shifts)
    return decode_latent_grids(bs.arch, arm, bs.substreams, threads)
