"""Integer ARM and IFCE: the fixed-point networks that drive the entropy coder.

Network weights travel as integers ``q`` with a power-of-two step ``2^-s``, so
the decoder can evaluate the ARM exactly in fixed point (8 fractional bits,
int64, arithmetic shifts, clamps after every layer): no floating point lies
between the bits and the decoded latents, and every CPU, numba or numpy
version computes the same ``(mu_int, frac, k)`` for every latent.  The same
kernels serve the encoder (export/) and the decoder (latent_codec.py).
See docs/architecture.md, section 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .arch import DecoderArch, param_layout
from .errors import BitstreamError
from .jit import njit
from .prob_tables import MU_FRAC_BITS, N_SCALE

FRAC = 8
ACT_MAX = 1 << 24  # activations are clamped to [-ACT_MAX, ACT_MAX] after every layer
MAX_SHIFT = 16
MAX_ABS_PARAM = (1 << 15) - 1
MAX_LATENT = (1 << 14) - 1  # |latent| bound of the format
INT32_MAX = (1 << 31) - 1
# Scale index: ln b = out1 - 4 on a grid -4.5 + k/8 -> k = round((out1 + 0.5) * 8)
_K_OFFSET = (1 << FRAC) // 2 + (1 << (FRAC - 3)) // 2  # +0.5 and the rounding half-step
_K_SHIFT = FRAC - 3


def align_bias(q_b: int, shift_w: int, shift_b: int) -> int:
    """Bias ``q_b * 2^-shift_b`` in the accumulator's 2^-(FRAC + shift_w) units."""
    n = FRAC + shift_w - shift_b
    if n >= 0:
        return q_b << n
    return (q_b + (1 << (-n - 1))) >> -n


class ArmNet(NamedTuple):
    """ARM weights of one integer width, laid out for :func:`arm_forward`.

    Input columns are padded with zero weights to ``dim``, a multiple of
    ``GROUP``, so that the kernels read inputs four at a time.
    """

    wh: np.ndarray  # [max(L,1), C, dim], hidden layers (layer 0 reads dim inputs, later ones C)
    bh: np.ndarray  # [max(L,1), C], aligned biases
    wo: np.ndarray  # [2, dim]; columns beyond C zero when L > 0
    ws: np.ndarray  # [2, dim], zeros without stabiliser
    bo: np.ndarray  # [2], aligned
    shift: int
    n_hidden: int
    n_ctx: int
    dim: int


class ArmScratch(NamedTuple):
    """Work arrays of :func:`arm_forward` for up to ``cap`` pixels, of the net's integer type."""

    h0: np.ndarray  # [C, cap]
    h1: np.ndarray  # [C, cap]
    acc0: np.ndarray  # [cap]
    acc1: np.ndarray  # [cap]


@dataclass(frozen=True)
class IntArm:
    """Integer ARM (+ IFCE) weights laid out for the numba kernels.

    ``net64`` is the ARM on int64, valid for every input; ``net32`` the same
    integers on int32, for the inputs :func:`int32_safe_latent_bound` admits.
    """

    n_context: int
    n_hidden: int
    dim_in: int  # context + IFCE features (unpadded)
    net64: ArmNet
    net32: ArmNet
    n_ifce: int
    # One (weight, bias) per grid with an IFCE, in decoding order (``arch.ifce_stack``),
    # or a single pair that every such grid shares. Weight int64 [F, 9 + E] (F >= 1
    # for numba typing; unused when n_ifce = 0), bias int64 [F], aligned.
    w_ifce: Tuple[np.ndarray, ...]
    b_ifce: Tuple[np.ndarray, ...]
    shift_ifce: int

    def ifce_layer(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(weight, bias) of the k-th grid with an IFCE (decoding order)."""
        k = k if len(self.w_ifce) > 1 else 0
        return self.w_ifce[k], self.b_ifce[k]


GROUP = 4  # inputs per step of the dense kernel
# Pixels per step of the dense kernel's vector loop (int32 lanes of the 256-bit
# vectors LLVM picks here, with or without AVX-512). A caller that rounds n up
# to a multiple of LANES (see padded_count) never runs the scalar remainder
# loop, several times slower per pixel, that follows the vector loop of each
# of the kernel's ~80 passes: its arrays then hold that many columns, and the
# extra columns compute values that nobody reads (from inputs that were once
# real ones, or zeros, so within the bounds int32_safe_latent_bound checks).
LANES = 8


def padded_dim(d: int) -> int:
    return -(-d // GROUP) * GROUP


@njit(inline="always")
def padded_count(n):
    """``n`` rounded up to a multiple of :data:`LANES`."""
    return (n + LANES - 1) // LANES * LANES


def build_int_arm(arch: DecoderArch, q_params: dict, shifts: dict) -> IntArm:
    """Lay out integer parameters (names of arch.param_layout) for the kernels."""
    c, d, nl = arch.spatial_context_arm, arch.arm_input_dim, arch.n_hidden_layers_arm
    dp = padded_dim(d)
    sw, sb = shifts[("arm", "weight")], shifts[("arm", "bias")]
    for s in (sw, sb):
        if not 0 <= s <= MAX_SHIFT:
            raise BitstreamError(f"ARM quantization shift {s} outside [0, {MAX_SHIFT}]")
    wh = np.zeros((max(nl, 1), c, dp), dtype=np.int64)
    bh = np.zeros((max(nl, 1), c), dtype=np.int64)
    for i in range(nl):
        w = np.asarray(q_params[f"arm.mlp.{i}.weight"], dtype=np.int64)
        wh[i, :, : w.shape[1]] = w
        bh[i] = [align_bias(int(v), sw, sb) for v in q_params[f"arm.mlp.{i}.bias"]]
    wo = np.zeros((2, dp), dtype=np.int64)
    w = np.asarray(q_params[f"arm.mlp.{nl}.weight"], dtype=np.int64)
    wo[:, : w.shape[1]] = w
    bo = np.array([align_bias(int(v), sw, sb) for v in q_params[f"arm.mlp.{nl}.bias"]], dtype=np.int64)
    ws = np.zeros((2, dp), dtype=np.int64)
    if arch.linear_stabiliser_arm:
        ws[:, :d] = np.asarray(q_params["arm.stabiliser.weight"], dtype=np.int64)
    net64 = ArmNet(wh, bh, wo, ws, bo, sw, nl, c, dp)
    # |q| <= 2^15 and aligned biases <= 2^15 << (FRAC + MAX_SHIFT) would not fit
    # int32: such a net32 is never used (int32_safe_latent_bound returns -1).
    net32 = ArmNet(*(a.astype(np.int32) for a in (wh, bh, wo, ws)),
                   np.clip(bo, -INT32_MAX, INT32_MAX).astype(np.int32), sw, nl, c, dp)
    f = arch.ifce_features
    ws_i, bs_i = [np.zeros((1, 9), dtype=np.int64)], [np.zeros(1, dtype=np.int64)]
    si = 0
    if f:
        si, sib = shifts[("ifce", "weight")], shifts[("ifce", "bias")]
        for s in (si, sib):
            if not 0 <= s <= MAX_SHIFT:
                raise BitstreamError(f"IFCE quantization shift {s} outside [0, {MAX_SHIFT}]")
        names = [(spec.name, spec.name[: -len("weight")] + "bias")
                 for spec in param_layout(arch) if spec.module == "ifce" and spec.kind == "weight"]
        ws_i = [np.asarray(q_params[wn], dtype=np.int64).reshape(f, -1) for wn, _ in names]
        bs_i = [np.array([align_bias(int(v), si, sib) for v in q_params[bn]], dtype=np.int64) for _, bn in names]
    return IntArm(c, nl, d, net64, net32, f, tuple(ws_i), tuple(bs_i), si)


def arm_scratch(net: ArmNet, cap: int) -> ArmScratch:
    """Scratch arrays for ``cap`` pixels, of ``net``'s integer type (numpy side; kernels use their own)."""
    dt = net.wh.dtype
    return ArmScratch(np.zeros((net.n_ctx, cap), dt), np.zeros((net.n_ctx, cap), dt),
                      np.zeros(cap, dt), np.zeros(cap, dt))


@njit(inline="always")
def new_scratch(net, cap):
    """:func:`arm_scratch` inside a kernel."""
    dt = net.wh.dtype
    return ArmScratch(np.zeros((net.n_ctx, cap), dt), np.zeros((net.n_ctx, cap), dt),
                      np.zeros(cap, dt), np.zeros(cap, dt))


def _round_shift(acc, s):
    """``acc * 2^-s`` rounded half up (numpy or Python integers)."""
    if s == 0:
        return acc
    return (acc + (1 << (s - 1))) >> s


@njit(no_cpython_wrapper=True, no_cfunc_wrapper=True)
def arm_forward(x, n, net, scr, mu_int, frac, kidx):
    """Run the ARM on the first ``n`` columns of ``x`` ([net.dim, >= n], FRAC bits).

    ``net`` is an :class:`ArmNet`, ``scr`` its :class:`ArmScratch`, ``x`` of
    the net's integer type. Writes ``mu_int`` (floor of mu), ``frac`` (mu's
    1/16 part) and ``kidx`` (scale index) of each column. With ``net64``
    every input is exact; with ``net32`` the caller guarantees the int32
    bound (same integers then). Callable from kernels only; from Python,
    :func:`arm_forward_py`.

    Hidden layers (``h = clamp(relu(round_shift(w src + b) + src[:C]))``) and
    the output layer (``w h + ws x + b``) run dense loops: two outputs share
    each load of an input row, pixels innermost, so that LLVM vectorises the
    pixel loop (:data:`LANES`). Hidden layers read inputs eight at a time
    (then four for a remainder): each pass over the pixels loads and stores
    the two accumulators once for sixteen products (eight at a time: 49-50
    against 55-56 ms for kodim01's latents; sixteen: 53-54 ms, more than the
    registers hold). Any partial sum is bounded by ``sum |w| |src|``, which
    is what :func:`int32_safe_latent_bound` bounds. No inlined helpers
    (numba's ``inline="always"`` copies cost seconds of compile time), clamps
    as conditional expressions (numba compiles ``min`` and ``max`` as
    functions of their own): numba compiles this kernel in about a second
    (see bench/cold_start.py). One loop for every layer compiles 0.2 s faster
    but runs 5-20 % slower (its per-layer branches).
    """
    nh = net.n_hidden
    n_ctx = net.n_ctx
    shift = net.shift
    half = (1 << (shift - 1)) if shift > 0 else 0
    acc0, acc1 = scr.acc0, scr.acc1
    src = x
    for layer in range(nh):
        w, b = net.wh[layer], net.bh[layer]
        din = net.dim if layer == 0 else n_ctx
        dst = scr.h0 if layer % 2 == 0 else scr.h1
        for o in range(0, n_ctx, 2):
            b0, b1 = b[o], b[o + 1]
            for p in range(n):
                acc0[p] = b0
                acc1[p] = b1
            k8 = din - din % (2 * GROUP)
            for k in range(0, k8, 2 * GROUP):
                a0, a1, a2, a3 = w[o, k], w[o, k + 1], w[o, k + 2], w[o, k + 3]
                a4, a5, a6, a7 = w[o, k + 4], w[o, k + 5], w[o, k + 6], w[o, k + 7]
                c0, c1, c2, c3 = w[o + 1, k], w[o + 1, k + 1], w[o + 1, k + 2], w[o + 1, k + 3]
                c4, c5, c6, c7 = w[o + 1, k + 4], w[o + 1, k + 5], w[o + 1, k + 6], w[o + 1, k + 7]
                s0, s1, s2, s3 = src[k], src[k + 1], src[k + 2], src[k + 3]
                s4, s5, s6, s7 = src[k + 4], src[k + 5], src[k + 6], src[k + 7]
                for p in range(n):
                    v0, v1, v2, v3 = s0[p], s1[p], s2[p], s3[p]
                    v4, v5, v6, v7 = s4[p], s5[p], s6[p], s7[p]
                    acc0[p] += (a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3) + (a4 * v4 + a5 * v5 + a6 * v6 + a7 * v7)
                    acc1[p] += (c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3) + (c4 * v4 + c5 * v5 + c6 * v6 + c7 * v7)
            for k in range(k8, din, GROUP):
                a0, a1, a2, a3 = w[o, k], w[o, k + 1], w[o, k + 2], w[o, k + 3]
                c0, c1, c2, c3 = w[o + 1, k], w[o + 1, k + 1], w[o + 1, k + 2], w[o + 1, k + 3]
                s0, s1, s2, s3 = src[k], src[k + 1], src[k + 2], src[k + 3]
                for p in range(n):
                    v0, v1, v2, v3 = s0[p], s1[p], s2[p], s3[p]
                    acc0[p] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
                    acc1[p] += c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3
            s0, s1, d0, d1 = src[o], src[o + 1], dst[o], dst[o + 1]
            for p in range(n):
                v = ((acc0[p] + half) >> shift) + s0[p]
                d0[p] = ACT_MAX if v > ACT_MAX else (0 if v < 0 else v)
                v = ((acc1[p] + half) >> shift) + s1[p]
                d1[p] = ACT_MAX if v > ACT_MAX else (0 if v < 0 else v)
        src = dst
    b0, b1 = net.bo[0], net.bo[1]
    for p in range(n):
        acc0[p] = b0
        acc1[p] = b1
    # Output layer on the last activations, then the stabiliser on x: one loop for both.
    din = net.dim if nh == 0 else n_ctx
    for term in range(2):
        s = src if term == 0 else x
        w = net.wo if term == 0 else net.ws
        d = din if term == 0 else net.dim
        for k in range(0, d, GROUP):
            a0, a1, a2, a3 = w[0, k], w[0, k + 1], w[0, k + 2], w[0, k + 3]
            c0, c1, c2, c3 = w[1, k], w[1, k + 1], w[1, k + 2], w[1, k + 3]
            if a0 == 0 and a1 == 0 and a2 == 0 and a3 == 0 and c0 == 0 and c1 == 0 and c2 == 0 and c3 == 0:
                continue
            s0, s1, s2, s3 = s[k], s[k + 1], s[k + 2], s[k + 3]
            for p in range(n):
                v0, v1, v2, v3 = s0[p], s1[p], s2[p], s3[p]
                acc0[p] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
                acc1[p] += c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3
    for p in range(n):
        mu_fix = (acc0[p] + half) >> shift
        mu_fix = ACT_MAX if mu_fix > ACT_MAX else (-ACT_MAX if mu_fix < -ACT_MAX else mu_fix)
        ls_fix = (acc1[p] + half) >> shift
        ls_fix = ACT_MAX if ls_fix > ACT_MAX else (-ACT_MAX if ls_fix < -ACT_MAX else ls_fix)
        mq = (mu_fix + (1 << (FRAC - MU_FRAC_BITS - 1))) >> (FRAC - MU_FRAC_BITS)
        mu_int[p] = mq >> MU_FRAC_BITS
        frac[p] = mq & ((1 << MU_FRAC_BITS) - 1)
        kk = (ls_fix + _K_OFFSET) >> _K_SHIFT
        kidx[p] = N_SCALE - 1 if kk > N_SCALE - 1 else (0 if kk < 0 else kk)


@njit
def arm_forward_py(x, n, net, scr, mu_int, frac, kidx):
    """:func:`arm_forward` called from Python (tests): the kernel itself is
    compiled without the Python wrapper that would unbox its fifteen arrays,
    compile time that no decode uses."""
    arm_forward(x, n, net, scr, mu_int, frac, kidx)


def _fits_int32(absnet: ArmNet, in_bound: np.ndarray) -> np.ndarray:
    """Whether every partial sum and activation of the ARM fits int32, for each column of
    ``in_bound`` ([dim, m]: bounds of |input|, one candidate per column).

    ``absnet``: the int64 net with every weight and bias replaced by its
    absolute value. Interval arithmetic on |values|: an accumulator is at
    most ``|b| + sum |w| B + 2^(shift-1)`` in magnitude, a rounded shift at
    most ``(A >> shift) + 1``, an activation that plus its residual input,
    clamped to ACT_MAX. Every term stays below 2^50: int64 holds them exactly.
    """
    shift = absnet.shift
    half = (1 << (shift - 1)) if shift > 0 else 0
    ok = np.ones(in_bound.shape[1], dtype=bool)
    bnd = in_bound
    for layer in range(absnet.n_hidden):
        din = absnet.dim if layer == 0 else absnet.n_ctx
        a = absnet.bh[layer][:, None] + half + absnet.wh[layer][:, :din] @ bnd[:din]
        v = (a >> shift) + 1 + bnd[:absnet.n_ctx]
        ok &= (a.max(axis=0) <= INT32_MAX) & (v.max(axis=0) <= INT32_MAX)
        bnd = np.minimum(v, ACT_MAX)
    din = absnet.dim if absnet.n_hidden == 0 else absnet.n_ctx
    a = absnet.bo[:, None] + half + absnet.wo[:, :din] @ bnd[:din] + absnet.ws @ in_bound
    return ok & (a.max(axis=0) <= INT32_MAX)


def int32_safe_latent_bound(net: ArmNet, feat_bound: int, hint: Optional[int] = None) -> int:
    """Largest L <= MAX_LATENT such that, with context latents in [-L, L] and
    features in [0, feat_bound], :func:`arm_forward` on ``net32`` computes in
    int32 exactly what it computes on ``net64``; -1 if none.

    ``net`` is the int64 net. The bound only grows with L: a search that
    tries up to 16 candidates at once (numpy, no kernel to compile) finds it
    in at most five steps, a fraction of a millisecond; in one when ``hint``
    (the bound of a nearby feature bound) is within 7 of it.
    """
    absnet = ArmNet(*(np.abs(np.asarray(a, dtype=np.int64)) for a in net[:5]), *net[5:])
    fb = min(int(feat_bound), 1 << 40)
    lo, hi = -1, MAX_LATENT  # lo fits (or is -1); nothing above hi does
    first = hint is not None and -1 <= hint <= MAX_LATENT
    while lo < hi:
        if first:  # the 16 values around the hint
            cand = np.arange(max(hint - 7, 0), min(hint + 9, MAX_LATENT + 1), dtype=np.int64)
            first = False
        else:
            step = -(-(hi - lo) // 16)
            cand = np.arange(hi, lo, -step, dtype=np.int64)[::-1]  # ascending, ends at hi
        b = np.full((absnet.dim, cand.size), fb, dtype=np.int64)
        b[:absnet.n_ctx] = cand << FRAC
        ok = _fits_int32(absnet, b)  # True then False: the bound only grows with L
        n_ok = int(ok.sum())
        if n_ok > 0:
            lo = int(cand[n_ok - 1])
        if n_ok < cand.size:
            hi = int(cand[n_ok]) - 1
    return lo


@njit(nogil=True)
def ifce_forward(src, extra, w_ifce, b_ifce, shift, n_feat, out):
    """IFCE features of every pixel of the source grid ``src``, into ``out`` [>= F, sh, sw]; returns their maximum.

    Source pixel (y, x) reads its 3x3 neighbourhood, edges replicated, then
    ``extra[e, y, x]`` for each of the E planes of ``extra`` [E, sh, sw] (the
    coarser grids' values at that position; E = 0 without ``ifce_stack``):
    ``v = [3x3 patch, extra]``, ``w_ifce`` [F, 9 + E]. A pixel of the grid
    being decoded reads the features of its source pixel (see
    :func:`feature_pixel`), so they are computed once per source pixel:
    ``clamp((b + (sum_t w_t v_t << FRAC) + half) >> shift, 0, ACT_MAX)``,
    on int64 (|w| < 2^15, |v| < 2^14, at most 9 + 2 * 13 terms: each sum
    below 2^35, shifted below 2^43). A row at a time: the three source rows
    it reads, edge-padded, then per feature one multiply-add per tap over the
    row (contiguous views, which LLVM vectorises). Rows of ``out`` beyond
    ``n_feat`` are left as they are.
    """
    sh, sw = src.shape
    n_extra = extra.shape[0]
    top = np.int64(0)
    if n_feat == 0 or sh == 0 or sw == 0:
        return top
    half = (np.int64(1) << (shift - 1)) if shift > 0 else np.int64(0)
    rows = np.empty((3, sw + 2), np.int64)
    acc = np.empty(sw, np.int64)
    for y in range(sh):
        for dy in range(3):
            yy = y + dy - 1
            yy = 0 if yy < 0 else (sh - 1 if yy > sh - 1 else yy)
            r = rows[dy]
            s_row = src[yy]
            for p in range(sw):
                r[p + 1] = s_row[p]
            r[0] = s_row[0]
            r[sw + 1] = s_row[sw - 1]
        for f in range(n_feat):
            for p in range(sw):
                acc[p] = 0
            for t in range(9):
                wt = np.int64(w_ifce[f, t])
                if wt != 0:
                    r = rows[t // 3, t % 3:t % 3 + sw]
                    for p in range(sw):
                        acc[p] += wt * r[p]
            for e in range(n_extra):
                wt = np.int64(w_ifce[f, 9 + e])
                if wt != 0:
                    x_row = extra[e, y]
                    for p in range(sw):
                        acc[p] += wt * np.int64(x_row[p])
            bf = np.int64(b_ifce[f]) + half
            o = out[f, y]
            for p in range(sw):
                v = ((acc[p] << FRAC) + bf) >> shift
                v = ACT_MAX if v > ACT_MAX else (0 if v < 0 else v)
                o[p] = v
                top = v if v > top else top
    return top
