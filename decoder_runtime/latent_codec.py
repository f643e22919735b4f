"""Latent decoding: range decoder + integer ARM, wave by wave.

Grids are decoded coarsest first (``arch.coded_grids()``).  Each grid is cut
into horizontal stripes, one per substream; a stripe's context stops at its
first row, so substreams decode independently.  Inside a stripe, pixels
are coded in wavefront order: pixel (i, j) at step ``j + K*i`` where K is
``arch.wavefront_slope`` — every context pixel of a wave is already decoded,
so the ARM runs once per wave on all its pixels (vectorised integer
arithmetic) instead of once per pixel.  A thread decodes a group of stripes
in lockstep (all of them with one thread; ``threads`` groups otherwise, one
Python thread each: the kernel releases the GIL): one ARM call per wave for
the whole group.  The encoder (export/latent_encoder.py) uses these very
kernels and this order.

Threads. :func:`decode_latent_grids` may be called from several Python
threads at once (``decoder_runtime.decode`` is thread-safe): the kernels are
pure functions of their arguments and every decode has its own work arrays.
Groups of stripes run in parallel on a pool of Python threads, not in a numba
``parallel=True`` kernel: no numba threading layer is involved (numba's
``workqueue`` layer aborts the process on concurrent parallel launches, and
a ``prange`` kernel took seconds more to compile on a cold cache).

Kernels are declared with :func:`decoder_runtime.jit.njit`: disk-cached, with
a cache keyed on the source of every kernel module (a change in
``range_coder.py`` or ``arm_int.py`` recompiles ``_decode_stripes``, which
inlines or calls their code), and a fallback to a temp directory or to no
cache when the install and home directories are read-only.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import List, NamedTuple, Sequence

import numpy as np

from .arch import DecoderArch, arm_context_offsets, ifce_grids, stripe_bounds, wavefront_slope
from .arm_int import (
    FRAC,
    MAX_LATENT,
    ArmNet,
    ArmScratch,
    IntArm,
    arm_forward,
    build_int_arm,
    ifce_forward,
    int32_safe_latent_bound,
    padded_count,
    padded_dim,
)
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
    TOP,
    bisect_symbol,
    decoder_init,
    rc_narrow,
    rc_shift_in,
    rc_target,
)
from .prob_tables import MU_FRAC_BITS

MAX_ESCAPE_PREFIX = 16
# Status of a stripe that _decode_stripes stopped at a latent beyond the int32
# ARM's bound (range_coder's statuses are 0..3): its group is decoded again on int64.
STATUS_WIDE = 4
PAD = 4  # context reaches 4 rows up and 4 columns left/right (9x9 window)


class Context(NamedTuple):
    """Where the ARM's context pixels lie and the coding order (``arch``)."""

    dys: np.ndarray  # int64 [C]
    dxs: np.ndarray  # int64 [C]
    slope: int  # wavefront slope K: pixel (i, j) at step j + K*i


class GridFeatures(NamedTuple):
    """IFCE features of one coded grid, stored at its source's resolution.

    Pixel (y, x) reads ``feat[:, min(y >> shift_down, sh-1), min(x >> shift_down, sw-1)]``
    (all zeros, 1x1, for a grid without IFCE). Rows beyond the ARM's F
    features, up to its padded input dimension, are zero.
    """

    feat: np.ndarray  # int32 [dim - C, sh, sw]
    shift_down: int
    canon: np.ndarray  # int32 [dim - C]: the features of an all-zero source neighbourhood
    bound: int  # max of feat and canon: the features' bound for int32_safe_latent_bound


class Coder(NamedTuple):
    """Probability tables of the range coder (``prob_tables.ProbTables``)."""

    cum: np.ndarray
    offset: np.ndarray
    half_width: np.ndarray


@njit(inline="always")
def stripe_layout(n_rows, w, slope):
    """(hs, cpad, size) of a stripe's skewed copy (see :func:`skew_index`)."""
    hs = n_rows + PAD
    cpad = PAD * (1 + slope)
    return hs, cpad, (cpad + w + PAD + slope * (n_rows - 1)) * hs


@njit(inline="always")
def skew_index(i, j, hs, cpad, slope):
    """Flat index of stripe pixel (i, j) in the stripe's skewed copy.

    Column ``j + slope*i`` (shifted by ``cpad``), row ``i`` (shifted by
    ``PAD``), columns of ``hs`` values: the pixels of a wave are contiguous,
    and a context neighbour (dy, dx) lies at the constant distance
    ``(dx + slope*dy)*hs + dy``, so a wave's context loads are plain vector
    loads. Cells of rows above the stripe or columns outside the grid are
    never written and read 0, as the format requires.
    """
    return (j + slope * i + cpad) * hs + i + PAD


@njit(inline="always")
def skewed_stripe(y_grid, r0, r1, slope):
    """The skewed copy of rows r0..r1-1 of a decoded grid (the encoder's view of a stripe)."""
    w = y_grid.shape[1]
    hs, cpad, size = stripe_layout(r1 - r0, w, slope)
    yp = np.zeros(size, dtype=np.int32)
    for i in range(r1 - r0):
        for j in range(w):
            yp[skew_index(i, j, hs, cpad, slope)] = y_grid[r0 + i, j]
    return yp


@njit(inline="always")
def context_offsets(ctx, hs):
    """Distances of the context pixels in a skewed stripe of columns of ``hs`` values."""
    offs = np.empty(ctx.dys.size, dtype=np.int64)
    for c in range(ctx.dys.size):
        offs[c] = (ctx.dxs[c] + ctx.slope * ctx.dys[c]) * hs + ctx.dys[c]
    return offs


@njit(inline="always")
def gather_run(yp, base, step, n, offs, gf, row0, di, j0, dj, x, nz, c0):
    """ARM inputs of ``n`` pixels (row0 + di*p, j0 + dj*p) into columns ``c0..c0+n-1`` of ``x``.

    The pixels lie at flat indices ``base + step*p`` of the padded stripe
    ``yp``. Sets ``nz[c0 + p]`` to whether pixel p's inputs differ from the
    all-zero context's and returns how many do. Pixels run innermost, one
    input at a time: the stores and tests vectorise.
    """
    n_ctx = offs.size
    nz = nz[c0:c0 + n]
    for p in range(n):
        nz[p] = 0
    for c in range(n_ctx):
        o = base + offs[c]
        xc = x[c, c0:c0 + n]
        # Views read with indices from range(): numba then knows them
        # non-negative and drops the wraparound test of ``yp[o + p]``, which
        # kept LLVM from vectorising the loop (10x slower); the decoder's
        # waves (step 1) get a contiguous view, the encoder's rows a strided one.
        if step == 1:
            src = yp[o:o + n]
            for p in range(n):
                v = src[p]
                xc[p] = v << FRAC
                nz[p] |= v != 0
        else:
            srs = yp[o:o + step * (n - 1) + 1:step]
            for p in range(n):
                v = srs[p]
                xc[p] = v << FRAC
                nz[p] |= v != 0
    # Features: a gather from the source grid, one source index per pixel for
    # all features (unsigned: the pixels' coordinates are never negative, and
    # numba then skips its negative-index fix on every load).
    feat = gf.feat
    n_feat, sh, sw = feat.shape
    flat = feat.reshape(n_feat, sh * sw)
    canon = gf.canon
    sd = gf.shift_down
    for p in range(n):
        fy, fx = (row0 + di * p) >> sd, (j0 + dj * p) >> sd
        idx = np.uint64((fy if fy < sh - 1 else sh - 1) * sw + (fx if fx < sw - 1 else sw - 1))
        d = False
        for f in range(n_feat):
            v = flat[f, idx]
            x[n_ctx + f, c0 + p] = v
            d |= v != canon[f]
        nz[p] |= d
    m = 0
    for p in range(n):
        m += nz[p]
    return m


@njit(inline="always")
def compact_columns(x, n, nz, batch_of):
    """Move the columns with ``nz`` set to the front of ``x``; ``batch_of[p]``: pixel p's column, or -1."""
    m = 0
    for p in range(n):
        if nz[p]:
            if m != p:
                for r in range(x.shape[0]):
                    x[r, m] = x[r, p]
            batch_of[p] = m
            m += 1
        else:
            batch_of[p] = -1
    return m


@njit(inline="always")
def wave_rows(t, n_rows, w, slope):
    """First and last stripe row of wave ``t``."""
    lo = 0
    if t > w - 1:
        lo = (t - (w - 1) + slope - 1) // slope
    hi = t // slope
    if hi > n_rows - 1:
        hi = n_rows - 1
    return lo, hi


class StripeWork(NamedTuple):
    """Work arrays of :func:`_decode_stripes` for a group of up to ``G`` stripes,
    allocated by the caller (:class:`_Workspace`).

    The kernel allocates nothing: numba compiles an implementation of every
    ``np.zeros``/``np.empty`` a kernel calls, a tenth of a second each on a
    cold cache. :class:`_Workspace` holds one per thread that decodes stripes.
    """

    x: np.ndarray  # [dim, cap], the net's type: ARM inputs of a wave of every stripe of the group
    h0: np.ndarray  # [C, cap]: the ArmScratch of the net, flat
    h1: np.ndarray  # [C, cap]
    acc0: np.ndarray  # [cap]
    acc1: np.ndarray  # [cap]
    mu_int: np.ndarray  # int64 [cap]
    frac: np.ndarray  # int64 [cap]
    kidx: np.ndarray  # int64 [cap]
    nz: np.ndarray  # uint8 [cap]
    batch_of: np.ndarray  # int64 [cap]
    yp: np.ndarray  # int32 [G, >= size], zeros: each stripe's skewed copy (stripe_layout)
    offs: np.ndarray  # int64 [G, C]: context_offsets of each stripe
    coder_state: np.ndarray  # int64 [G, 3]: each stripe's range decoder (pos, code, range) during a decode
    runs: np.ndarray  # int64 [G, 3]: each stripe's part of the current wave (first column, count, flat index)


def _stripe_shape(n_rows: int, w: int, slope: int):
    """(cap, size, hs) of a stripe of ``n_rows`` rows: ARM columns, skewed copy length, column height."""
    hs, _, size = stripe_layout.py_func(max(n_rows, 1), w, slope)
    return padded_count.py_func(max(1, min(n_rows, w // slope + 1))), size, hs


def stripe_groups(n_sub: int, threads: int) -> List[range]:
    """The substreams each thread decodes together (:func:`_decode_stripes`): ``threads`` runs of consecutive ones."""
    threads = max(1, min(threads, n_sub))
    edges = [n_sub * i // threads for i in range(threads + 1)]
    return [range(edges[i], edges[i + 1]) for i in range(threads)]


# A decode's work arrays up to this size stay allocated for the next decode
# on the same thread with the same shapes (a benchmark's repeats, a video's
# frames, a batch of images): allocated afresh, their first touch costs page
# faults every time (0.9 ms of kodim01's 46 ms). Larger ones are freed.
WORKSPACE_KEEP_BYTES = 16 << 20
_kept = threading.local()


def _workspace_bytes(k: int, g: int, cap: int, size: int, dim: int, n_ctx: int) -> int:
    """Bytes of a :class:`_Workspace`'s arrays when both integer types of the net are
    allocated: the net-typed ones on 4 + 8 bytes, the others twice."""
    per_type = cap * (4 * 8 + 1) + g * size * 4
    return k * (cap * (dim + 2 * n_ctx + 2) * 12 + 2 * per_type)


def workspace_bytes_bound(arch: DecoderArch, n_sub: int) -> int:
    """Upper bound of the work arrays a decode of ``arch`` in ``n_sub`` substreams
    allocates, whatever the thread count (``budget.py`` counts it before anything
    is allocated).

    A stripe's skewed copy grows as ``rows * (w + slope * rows)``: a tall stripe
    (one substream on 4 097 rows of 12 columns) needs hundreds of MB for a grid
    of 49 000 latents. Threads split the stripes into ``k`` groups of at most
    ``g``, ``k * g <= 2 * n_sub - 1``, each stripe at most the tallest one.
    """
    slope = wavefront_slope(arch.spatial_context_arm)
    cap = size = 0
    for grid in arch.coded_grids():
        c, z, _ = _stripe_shape(-(-grid.h // n_sub), grid.w, slope)  # cap and size grow with the rows
        cap, size = max(cap, c), max(size, z)
    stripes = 2 * n_sub - 1
    return _workspace_bytes(1, stripes, stripes * cap, size, padded_dim(arch.arm_input_dim), arch.spatial_context_arm)


def _workspace(arch: DecoderArch, ctx: Context, n_sub: int, groups: Sequence[range], net: ArmNet) -> "_Workspace":
    """The :class:`_Workspace` of a decode: this thread's previous one when the shapes match."""
    work = _Workspace(arch, ctx, n_sub, groups)
    key = (work.cap, work.size, work.k, work.g, net.dim, net.n_ctx, ctx.dys.tobytes(), ctx.dxs.tobytes())
    kept = getattr(_kept, "work", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    n_bytes = _workspace_bytes(work.k, work.g, work.cap, work.size, net.dim, net.n_ctx)
    _kept.work = (key, work) if n_bytes <= WORKSPACE_KEEP_BYTES else None
    return work


class _Workspace:
    """The :class:`StripeWork` of one decode, per integer type of the net: allocated
    once, for the largest group of stripes of every grid, ``k`` of them (one per
    thread that decodes a group at a time), and prepared for each group."""

    def __init__(self, arch: DecoderArch, ctx: Context, n_sub: int, groups: Sequence[range]):
        self.g = max(len(r) for r in groups)
        caps, sizes = [0], [0]
        for g in arch.coded_grids():
            bounds = stripe_bounds(g.h, n_sub)
            for r in groups:
                shapes = [_stripe_shape(bounds[s][1] - bounds[s][0], g.w, ctx.slope) for s in r]
                caps.append(sum(c for c, _, _ in shapes))
                sizes.extend(z for _, z, _ in shapes)
        self.cap = max(caps)
        self.size = max(sizes)
        self.k = len(groups)
        self.ctx = ctx
        self._work = {}
        self._lock = threading.Lock()

    def group(self, net: ArmNet, i: int, rows: Sequence[int], w: int) -> StripeWork:
        """Work ``i`` (< k) for a group of stripes of ``rows`` rows each, of a grid ``w``
        wide: their skewed copies zeroed, their context offsets set."""
        dt = np.dtype(net.wh.dtype)
        with self._lock:
            if dt not in self._work:
                k, cap, g = self.k, self.cap, self.g
                self._work[dt] = StripeWork(
                    np.zeros((k, net.dim, cap), dt), np.zeros((k, net.n_ctx, cap), dt),
                    np.zeros((k, net.n_ctx, cap), dt), np.zeros((k, cap), dt), np.zeros((k, cap), dt),
                    np.zeros((k, cap), np.int64), np.zeros((k, cap), np.int64), np.zeros((k, cap), np.int64),
                    np.zeros((k, cap), np.uint8), np.zeros((k, cap), np.int64),
                    np.zeros((k, g, self.size), np.int32), np.zeros((k, g, self.ctx.dys.size), np.int64),
                    np.zeros((k, g, 3), np.int64), np.zeros((k, g, 3), np.int64))
            wk = self._work[dt]
        ctx = self.ctx
        for j, n_rows in enumerate(rows):
            _, size, hs = _stripe_shape(n_rows, w, ctx.slope)
            wk.yp[i, j, :size] = 0  # cells never written read 0 (see skew_index)
            wk.offs[i, j] = (ctx.dxs + ctx.slope * ctx.dys) * hs + ctx.dys  # context_offsets
        return StripeWork(*(a[i] for a in wk))


@njit(no_cfunc_wrapper=True, nogil=True)
def _decode_stripes(data, starts, ends, sts, r0s, r1s, w, gf, slope, net, l_safe, coder, wk):
    """Decode a group of stripes of a grid ``w`` wide, ARM on ``net``: stripe j holds rows
    r0s[j]..r1s[j]-1, its substream is ``data[starts[j]:ends[j]]``, its state ``sts[j]``.

    The stripes advance wave by wave together: the ARM runs once per wave on
    the pixels of every stripe (longer runs of its vector loops, one call
    where there were as many as stripes), and the range decoders of the
    stripes, independent chains, follow each other. Stripe j's latents land in ``wk.yp[j]``, its skewed
    copy (the caller copies them out, :func:`_copy_out`). With ``net32``,
    ``l_safe`` is :func:`int32_safe_latent_bound`: the first latent beyond it
    stops the group with ``STATUS_WIDE`` and the caller decodes the group again
    on ``net64`` (``l_safe = MAX_LATENT``). The group is restartable: ``sts``
    is written only at its end (a status on failure). Nothing in the bits
    depends on the net's width or on the grouping: every grouping decodes the
    same latents. ``wk``: a :class:`StripeWork` of the net's type, its ``yp``
    zeroed and ``offs`` set for these stripes (its other arrays are written
    before they are read).

    Compile time (a cold numba cache compiles this kernel and arm_forward, see
    bench/cold_start.py) grows with every inlined call: one call site each of
    arm_forward and gather_run, and one copy of the range decoder's step
    (symbols and escape bits alike).
    """
    n_grp = r0s.size
    n_ctx = net.n_ctx
    x, mu_int, frac, kidx, nz, batch_of = wk.x, wk.mu_int, wk.frac, wk.kidx, wk.nz, wk.batch_of
    cur, runs = wk.coder_state, wk.runs
    scr = ArmScratch(wk.h0, wk.h1, wk.acc0, wk.acc1)
    cum, offset, half_width = coder.cum, coder.offset, coder.half_width
    n_waves = 0
    for j in range(n_grp):
        cur[j, 0], cur[j, 1], cur[j, 2] = sts[j, ST_POS], sts[j, ST_CODE], sts[j, ST_RANGE]
        n_rows = r1s[j] - r0s[j]
        if n_rows > 0:
            n_waves = max(n_waves, (w - 1) + slope * (n_rows - 1) + 1)
    mu0, frac0, k0 = np.int64(0), np.int64(0), np.int64(0)
    for t in range(-1, n_waves):
        if t < 0:
            # Contexts that are all zero (most of a fine grid's at low rates)
            # all give the ARM output of the all-zero context, computed once
            # here: when they are at least half of a wave, the ARM runs on the
            # others only. Identical integer inputs give identical outputs, so
            # this changes the speed, not a single decoded value.
            # (GridFeatures.bound covers the canonical features, so net32 is
            # exact on this input when l_safe >= 0.)
            for c in range(n_ctx):
                x[c, 0] = 0
            for f in range(net.dim - n_ctx):
                x[n_ctx + f, 0] = gf.canon[f]
            n, m, dense = 0, 1, True
            for j in range(n_grp):
                runs[j, 1] = 0
        else:
            n, m = 0, 0
            for j in range(n_grp):
                n_rows = r1s[j] - r0s[j]
                runs[j, 0], runs[j, 1] = n, 0
                if n_rows <= 0 or t >= (w - 1) + slope * (n_rows - 1) + 1:
                    continue
                hs, cpad, _ = stripe_layout(n_rows, w, slope)
                lo, hi = wave_rows(t, n_rows, w, slope)
                base0 = skew_index(lo, t - slope * lo, hs, cpad, slope)
                m += gather_run(wk.yp[j], base0, 1, hi - lo + 1, wk.offs[j], gf, r0s[j] + lo, 1, t - slope * lo,
                                -slope, x, nz, n)
                runs[j, 1], runs[j, 2] = hi - lo + 1, base0
                n += hi - lo + 1
            dense = 2 * m > n
            if dense:
                m = n
            else:
                m = compact_columns(x, n, nz, batch_of)
        if m > 0:
            arm_forward(x, padded_count(m), net, scr, mu_int, frac, kidx)
        if t < 0:
            mu0, frac0, k0 = mu_int[0], frac[0], kidx[0]
        for j in range(n_grp):
            if runs[j, 1] == 0:
                continue
            buf = data[starts[j]:ends[j]]
            yp = wk.yp[j]
            pos, code, rng = cur[j, 0], cur[j, 1], cur[j, 2]
            col0, base = runs[j, 0], runs[j, 2]
            for p in range(col0, col0 + runs[j, 1]):
                b = p if dense else batch_of[p]
                if b < 0:
                    mu, fr, k = mu0, frac0, k0
                else:
                    mu, fr, k = mu_int[b], frac[b], kidx[b]
                big_r = half_width[k]
                off = offset[fr, k]
                esc = 2 * big_r + 1
                # A symbol; the escape symbol is followed by a sign bit, a unary
                # prefix (zeros ended by a one) and ``prefix`` tail bits.
                nbits = -1
                phase = 0
                sign = 0
                prefix = 0
                while True:
                    # range_coder.rc_step's helpers in this loop (see rc_step:
                    # calling it would add reference counting to every symbol).
                    unit, target = rc_target(code, rng, nbits)
                    if nbits < 0:
                        # The mode of the residual first (0, or 1 when mu's
                        # fraction is at least 1/2): it holds 84 % of kodim01's
                        # symbols at 0.89 bpp, more at lower rates.
                        s = big_r + (fr >> (MU_FRAC_BITS - 1))
                        if not (cum[off + s] <= target < cum[off + s + 1]):
                            s = bisect_symbol(cum, off, 0, esc + 1, target)
                        c0 = np.int64(cum[off + s])
                        width = np.int64(cum[off + s + 1]) - c0
                    else:
                        s, c0, width = target, target, np.int64(1)
                    code, rng = rc_narrow(code, unit, c0, width)
                    while rng < TOP:
                        code, rng = rc_shift_in(code, rng, np.int64(buf[pos]) if pos < buf.size else np.int64(0))
                        pos += 1
                    if phase == 0:
                        if s != esc:
                            r = s - big_r
                            break
                        phase = 1
                        nbits = 1
                    elif phase == 1:
                        sign = s
                        phase = 2
                    elif phase == 2:
                        if s == 1:
                            phase = 3
                            nbits = prefix
                        else:
                            prefix += 1
                            if prefix > MAX_ESCAPE_PREFIX:
                                sts[j, ST_STATUS] = STATUS_BAD_ESCAPE
                                return
                    else:
                        r = big_r + ((np.int64(1) << prefix) | s)
                        if sign == 1:
                            r = -r
                        break
                v = mu + r
                a = v if v >= 0 else -v
                if a > l_safe:
                    sts[j, ST_STATUS] = STATUS_RANGE if a > MAX_LATENT else STATUS_WIDE
                    return
                yp[base] = v
                base += 1
            if pos > buf.size + MAX_OVERREAD:
                sts[j, ST_STATUS] = STATUS_OVERREAD
                return
            cur[j, 0], cur[j, 1], cur[j, 2] = pos, code, rng
    for j in range(n_grp):
        sts[j, ST_POS], sts[j, ST_CODE], sts[j, ST_RANGE] = cur[j, 0], cur[j, 1], cur[j, 2]


def _copy_out(yp: np.ndarray, y_grid: np.ndarray, r0: int, r1: int, slope: int) -> None:
    """Rows r0..r1-1 of ``y_grid`` from the stripe's skewed copy ``yp`` (see :func:`skew_index`):
    pixel (i, j) at ``cpad*hs + PAD + i*(slope*hs + 1) + j*hs``, one strided numpy copy."""
    n_rows, w = r1 - r0, y_grid.shape[1]
    if n_rows <= 0:
        return
    hs, cpad, _ = stripe_layout.py_func(n_rows, w, slope)
    step = yp.itemsize
    y_grid[r0:r1] = np.lib.stride_tricks.as_strided(
        yp[cpad * hs + PAD:], shape=(n_rows, w), strides=((slope * hs + 1) * step, hs * step), writeable=False)


def grid_features(arch: DecoderArch, arm: IntArm, grid, decoded: Sequence[np.ndarray]) -> GridFeatures:
    """The IFCE features a coded grid reads (``decoded``: the grids decoded before it)."""
    n_rows = arm.net64.dim - arm.n_context
    canon = np.zeros(n_rows, dtype=np.int32)
    if grid.ifce_source < 0 or arm.n_ifce == 0:
        return GridFeatures(np.zeros((n_rows, 1, 1), dtype=np.int32), 0, canon, 0)
    grids = arch.coded_grids()
    src_grid = grids[grid.ifce_source]
    src = decoded[grid.ifce_source]
    w, b = arm.ifce_layer([g.index for g in ifce_grids(arch)].index(grid.index))
    extra = ifce_extra_planes(grids, src_grid, grid.ifce_stack, decoded)
    feat = np.zeros((n_rows, *src.shape), dtype=np.int32)
    top = ifce_forward(src, extra, w, b, arm.shift_ifce, arm.n_ifce, feat)
    zero = np.zeros((n_rows, 1, 1), dtype=np.int32)
    top0 = ifce_forward(np.zeros((1, 1), dtype=np.int32), np.zeros((len(grid.ifce_stack), 1, 1), dtype=np.int32),
                        w, b, arm.shift_ifce, arm.n_ifce, zero)
    canon[:] = zero[:, 0, 0]
    return GridFeatures(feat, src_grid.level - grid.level, canon, max(int(top), int(top0)))


def ifce_extra_planes(grids, src_grid, stack: Sequence[int], decoded: Sequence[np.ndarray]) -> np.ndarray:
    """int32 [E, sh, sw]: for each grid j of ``stack``, its value at the source
    pixel's position, ``grid_j[y >> (l_j - l_s), x >> (l_j - l_s)]`` (``arch.ifce_stack``).

    Grid sizes are ceilings (``ceil(ceil(H / 2^a) / 2^k) = ceil(H / 2^(a+k))``), so
    grid j repeated ``2^k`` times along each axis covers the source: a crop,
    never a clamp (and 5x faster than fancy indexing at 256x384).
    """
    sh, sw = src_grid.h, src_grid.w
    extra = np.empty((len(stack), sh, sw), dtype=np.int32)
    for e, j in enumerate(stack):
        f = 1 << (grids[j].level - src_grid.level)
        extra[e] = np.repeat(np.repeat(decoded[j], f, axis=0)[:sh], f, axis=1)[:, :sw]
    return extra


def context_arrays(arch: DecoderArch) -> Context:
    offs = arm_context_offsets(arch.spatial_context_arm)
    dys = np.array([o[0] for o in offs], dtype=np.int64)
    dxs = np.array([o[1] for o in offs], dtype=np.int64)
    return Context(dys, dxs, wavefront_slope(arch.spatial_context_arm))


def coder_tables() -> Coder:
    t = get_tables()
    return Coder(t.cum, t.offset, t.half_width)


_STATUS_TEXT = {
    STATUS_OVERREAD: "a latent substream ends before its last symbol",
    STATUS_BAD_ESCAPE: "a latent substream holds an invalid escape code",
    STATUS_RANGE: f"a decoded latent exceeds the format's bound of {MAX_LATENT}",
}


def decode_latent_grids(arch: DecoderArch, arm: IntArm, substreams: Sequence[bytes], threads: int = 1) -> List[np.ndarray]:
    """Decode every coded grid (``arch.coded_grids()`` order) as int32 arrays.

    ``threads`` > 1: the stripes of a grid on that many Python threads (at
    most one per substream and per CPU); same latents, bit for bit.
    """
    n_sub = len(substreams)
    data = np.frombuffer(b"".join(bytes(s) for s in substreams), dtype=np.uint8)
    lengths = np.array([len(s) for s in substreams], dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    states = np.zeros((n_sub, 4), dtype=np.int64)
    for s in range(n_sub):
        # The kernel's Python source: four bytes, not worth a kernel to compile.
        decoder_init.py_func(data[starts[s]:ends[s]], states[s])
    threads = max(1, min(int(threads), n_sub, os.cpu_count() or 1))
    if threads == 1:
        return _decode_grids(arch, arm, data, starts, ends, states, None, 1)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="coolchic-latents") as pool:
        return _decode_grids(arch, arm, data, starts, ends, states, pool, threads)


def _decode_grids(arch, arm, data, starts, ends, states, pool, threads) -> List[np.ndarray]:
    n_sub = states.shape[0]
    ctx, coder = context_arrays(arch), coder_tables()
    slope = ctx.slope
    groups = stripe_groups(n_sub, threads)
    work = _workspace(arch, ctx, n_sub, groups, arm.net64)
    decoded: List[np.ndarray] = []
    l_safe_of = {}
    for g in arch.coded_grids():
        y_grid = np.zeros((g.h, g.w), dtype=np.int32)
        gf = grid_features(arch, arm, g, decoded)
        if gf.bound not in l_safe_of:  # grids without IFCE share theirs; the last one is a good first guess
            hint = next(reversed(l_safe_of.values())) if l_safe_of else None
            l_safe_of[gf.bound] = int32_safe_latent_bound(arm.net64, gf.bound, hint)
        l_safe = l_safe_of[gf.bound]
        # Row bounds as two contiguous arrays: the kernel's argument types (hence
        # its compiled specialization) must not depend on the number of stripes.
        r0_all, r1_all = (np.ascontiguousarray(a) for a in
                          np.array(stripe_bounds(g.h, n_sub), dtype=np.int64).reshape(n_sub, 2).T)
        # The int32 ARM where the bound allows it; the int64 kernel is compiled
        # and run only for the groups that hold a latent beyond the bound.
        net, l_net = (arm.net32, l_safe) if l_safe >= 0 else (arm.net64, MAX_LATENT)

        def decode_group(i, g=g, y_grid=y_grid, gf=gf, net=net, l_net=l_net):
            r = groups[i]
            sl = slice(r.start, r.stop)
            r0s, r1s, sts = r0_all[sl], r1_all[sl], states[sl]
            rows = list(r1s - r0s)
            wk = work.group(net, i, rows, g.w)
            _decode_stripes(data, starts[sl], ends[sl], sts, r0s, r1s, g.w, gf, slope, net, l_net, coder, wk)
            if np.any(sts[:, ST_STATUS] == STATUS_WIDE):
                sts[:, ST_STATUS] = np.where(sts[:, ST_STATUS] == STATUS_WIDE, STATUS_OK, sts[:, ST_STATUS])
                if np.all(sts[:, ST_STATUS] == STATUS_OK):
                    wk = work.group(arm.net64, i, rows, g.w)
                    _decode_stripes(data, starts[sl], ends[sl], sts, r0s, r1s, g.w, gf, slope, arm.net64,
                                    MAX_LATENT, coder, wk)
            if np.all(sts[:, ST_STATUS] == STATUS_OK):
                for j in range(len(r)):
                    _copy_out(wk.yp[j], y_grid, int(r0s[j]), int(r1s[j]), slope)

        if pool is None:
            for i in range(len(groups)):
                decode_group(i)
        else:
            list(pool.map(decode_group, range(len(groups))))
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
