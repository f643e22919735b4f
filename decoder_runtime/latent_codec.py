"""Latent decoding: range decoder + integer ARM, wave by wave.

Grids are decoded coarsest first (``arch.coded_grids()``).  Each grid is cut
into horizontal stripes, one per substream; a stripe's context stops at its
first row, so substreams decode independently (numba ``prange``, one thread
each).  Inside a stripe, pixels are coded in wavefront order: pixel (i, j) at
step ``j + K*i`` where K is ``arch.wavefront_slope`` — every context pixel of
a wave is already decoded, so the ARM runs once per wave on all its pixels
(vectorised integer arithmetic) instead of once per pixel.  The encoder
(export/latent_encoder.py) uses these very kernels and this order.

Threads. :func:`decode_latent_grids` may be called from several Python
threads at once (``decoder_runtime.decode`` is thread-safe). The kernels are
pure functions of their arguments, except the one ``parallel=True`` kernel,
whose launches go through numba's threading layer. This library does not
choose that layer: it is a process-wide setting (``NUMBA_THREADING_LAYER``)
that belongs to the application and is frozen at the process's first parallel
launch. numba's default takes ``tbb``, else ``omp``, else ``workqueue``, and
``workqueue`` aborts the process when two threads launch parallel kernels at
once. So the library makes no concurrent parallel launches: a process-wide
lock admits one parallel decode at a time, and a
thread that finds it taken decodes its stripes serially (stripes are
independent: same latents, bit for bit). This is safe under every layer; an
application that also runs its own numba parallel code in other threads
should choose ``NUMBA_THREADING_LAYER=tbb`` or ``omp``. The thread count is
set with ``numba.set_num_threads``, which is per calling thread, and restored
afterwards.

Kernels are declared with :func:`decoder_runtime.jit.njit`: disk-cached, with
a cache keyed on the source of every kernel module (a change in
``range_coder.py`` or ``arm_int.py`` recompiles ``_decode_stripe``, which
inlines or calls their code), and a fallback to a temp directory or to no
cache when the install and home directories are read-only.
"""

from __future__ import annotations

import threading
from typing import List, Sequence

import numba as nb
import numpy as np

from .arch import DecoderArch, arm_context_offsets, stripe_bounds, wavefront_slope
from .arm_int import FRAC, IntArm, arm_forward, build_int_arm, ifce_forward
from .errors import BitstreamError
from .jit import njit
from .prob_tables import get_tables
from .range_coder import (
    MAX_OVERREAD,
    ST_CODE,
    ST_POS,
    ST_RANGE,
    ST_STATUS,
    STATUS_BAD_ESCAPE,
    STATUS_OK,
    STATUS_OVERREAD,
    STATUS_RANGE,
    decoder_init,
    rc_bits,
    rc_symbol,
)

MAX_LATENT = (1 << 14) - 1  # |latent| bound of the format
MAX_ESCAPE_PREFIX = 16
# Held while this process runs _decode_grid_parallel (see the module docstring).
_parallel_launch = threading.Lock()


@njit(inline="always")
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


@njit
def wave_rows(t, n_rows, w, slope):
    """First and last stripe row of wave ``t``."""
    lo = 0
    if t > w - 1:
        lo = (t - (w - 1) + slope - 1) // slope
    hi = min(n_rows - 1, t // slope)
    return lo, hi


PAD = 4  # context reaches 4 rows up and 4 columns left/right (9x9 window)


@njit
def _decode_stripe(buf, st, y_grid, r0, r1, w, ifce, n_ifce, canon, dys, dxs, slope,
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
    batch_of = np.empty(cap, dtype=np.int64)
    # The stripe is decoded into a zero-bordered copy: contexts need no bounds
    # checks, and rows above the stripe read 0 as the format requires.
    yp = np.zeros((n_rows + PAD, w + 2 * PAD), dtype=np.int64)
    # Most contexts of a fine grid are all zero: their ARM output is computed
    # once. Identical integer inputs give identical outputs, so this changes
    # the speed, not a single decoded value.
    for f in range(dim_in - n_ctx):
        x[n_ctx + f, 0] = canon[f]
    arm_forward(x, 1, wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, h0, h1, acc, acc2, mu_int, frac, kidx)
    mu0, frac0, k0 = mu_int[0], frac[0], kidx[0]
    n_feat = dim_in - n_ctx
    pos, code, rng = st[ST_POS], st[ST_CODE], st[ST_RANGE]
    n_waves = (w - 1) + slope * (n_rows - 1) + 1
    for t in range(n_waves):
        lo, hi = wave_rows(t, n_rows, w, slope)
        m = 0
        for p in range(hi - lo + 1):
            i = lo + p
            j = t - slope * i
            nonzero = False
            for c in range(n_ctx):
                v = yp[i + PAD + dys[c], j + PAD + dxs[c]]
                x[c, m] = v << FRAC
                nonzero |= v != 0
            for f in range(n_feat):
                v = ifce[f, (r0 + i) * w + j] if f < n_ifce else 0
                x[n_ctx + f, m] = v
                nonzero |= v != canon[f]
            if nonzero:
                batch_of[p] = m
                m += 1
            else:
                batch_of[p] = -1
        if m > 0:
            arm_forward(x, m, wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, h0, h1, acc, acc2, mu_int, frac, kidx)
        for p in range(hi - lo + 1):
            i = lo + p
            b = batch_of[p]
            if b < 0:
                mu, fr, k = mu0, frac0, k0
            else:
                mu, fr, k = mu_int[b], frac[b], kidx[b]
            big_r = half_width[k]
            s, pos, code, rng = rc_symbol(buf, pos, code, rng, cum, offset[fr, k], 2 * big_r + 2)
            if s == 2 * big_r + 1:
                sign, pos, code, rng = rc_bits(buf, pos, code, rng, 1)
                nz = 0
                while True:
                    bit, pos, code, rng = rc_bits(buf, pos, code, rng, 1)
                    if bit == 1:
                        break
                    nz += 1
                    if nz > MAX_ESCAPE_PREFIX:
                        st[ST_STATUS] = STATUS_BAD_ESCAPE
                        return
                tail, pos, code, rng = rc_bits(buf, pos, code, rng, nz)
                r = big_r + ((np.int64(1) << nz) | tail)
                if sign == 1:
                    r = -r
            else:
                r = s - big_r
            v = mu + r
            if v > MAX_LATENT or v < -MAX_LATENT:
                st[ST_STATUS] = STATUS_RANGE
                return
            yp[i + PAD, t - slope * i + PAD] = v
        if pos > buf.size + MAX_OVERREAD:
            st[ST_STATUS] = STATUS_OVERREAD
            return
    st[ST_POS], st[ST_CODE], st[ST_RANGE] = pos, code, rng
    for i in range(n_rows):
        for j in range(w):
            y_grid[r0 + i, j] = yp[i + PAD, j + PAD]


@njit
def _decode_grid_serial(data, starts, ends, states, bounds, y_grid, w, ifce, n_ifce, canon, dys, dxs, slope,
                        wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, cum, offset, half_width):
    for s in range(states.shape[0]):
        _decode_stripe(data[starts[s]:ends[s]], states[s], y_grid, bounds[s, 0], bounds[s, 1], w, ifce, n_ifce, canon,
                       dys, dxs, slope, wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, cum, offset, half_width)


@njit(parallel=True)
def _decode_grid_parallel(data, starts, ends, states, bounds, y_grid, w, ifce, n_ifce, canon, dys, dxs, slope,
                          wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, cum, offset, half_width):
    for s in nb.prange(states.shape[0]):
        _decode_stripe(data[starts[s]:ends[s]], states[s], y_grid, bounds[s, 0], bounds[s, 1], w, ifce, n_ifce, canon,
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


def canonical_features(arm: IntArm, grid) -> np.ndarray:
    """IFCE features of an all-zero source neighbourhood (zeros for grids without IFCE)."""
    canon = np.zeros(max(arm.n_ifce, 1), dtype=np.int64)
    if grid.ifce_source >= 0 and arm.n_ifce:
        out = np.empty((arm.n_ifce, 1), dtype=np.int64)
        ifce_forward(np.zeros((1, 1), dtype=np.int32), 0, 1, 1, arm.w_ifce, arm.b_ifce, arm.shift_ifce, arm.n_ifce, out)
        canon[: arm.n_ifce] = out[:, 0]
    return canon


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
    # One parallel launch at a time in the process (see the module docstring);
    # a caller that finds one running decodes its stripes serially, which
    # gives the same latents.
    args = (arch, arm, data, starts, ends, states, dys, dxs, slope, tables)
    if threads == 1 or not _parallel_launch.acquire(blocking=False):
        return _decode_grids(*args, parallel=False)
    try:
        # set_num_threads is per calling thread in numba: give the caller its own back.
        caller_threads = nb.get_num_threads()
        nb.set_num_threads(threads)
        try:
            return _decode_grids(*args, parallel=True)
        finally:
            nb.set_num_threads(caller_threads)
    finally:
        _parallel_launch.release()


def _decode_grids(arch, arm, data, starts, ends, states, dys, dxs, slope, tables, parallel) -> List[np.ndarray]:
    n_sub = states.shape[0]
    run = _decode_grid_parallel if parallel else _decode_grid_serial
    decoded: List[np.ndarray] = []
    for g in arch.coded_grids():
        y_grid = np.zeros((g.h, g.w), dtype=np.int32)
        ifce = grid_ifce(arch, arm, g, decoded)
        n_ifce = arm.n_ifce if g.ifce_source >= 0 else 0
        bounds = np.array(stripe_bounds(g.h, n_sub), dtype=np.int64).reshape(n_sub, 2)
        run(data, starts, ends, states, bounds, y_grid, g.w, ifce, n_ifce, canonical_features(arm, g), dys, dxs, slope,
            arm.w_hidden, arm.b_hidden, arm.w_out, arm.w_stab, arm.b_out, arm.shift, arm.n_hidden,
            arm.n_context, arm.dim_in, tables.cum, tables.offset, tables.half_width)
        bad = states[:, ST_STATUS]
        if np.any(bad != STATUS_OK):
            code = int(bad[bad != STATUS_OK][0])
            raise BitstreamError(f"grid {g.index} (level {g.level}): {_STATUS_TEXT.get(code, 'decoding failed')}")
        decoded.append(y_grid)
    return decoded


def decode_latents(bs, threads: int = 1) -> List[np.ndarray]:
    """Decode the latents of a parsed bitstream (``bitstream.read_bitstream``)."""
    arm = build_int_arm(bs.arch, bs.q_params, bs.shifts)
    return decode_latent_grids(bs.arch, arm, bs.substreams, threads)
