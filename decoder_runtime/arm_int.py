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
from typing import NamedTuple

import numpy as np

from .arch import DecoderArch
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
    w_ifce: np.ndarray  # int64 [F, 9]  (F >= 1 for numba typing; unused when n_ifce = 0)
    b_ifce: np.ndarray  # int64 [F], aligned
    shift_ifce: int


GROUP = 4  # inputs per step of the dense kernel
# Pixels per step of the dense kernel: a whole vector, no scalar remainder
# loop (waves are often short). Scratch and input arrays hold a multiple of
# LANES columns; columns past n compute garbage that nobody reads.
LANES = 16


def padded_dim(d: int) -> int:
    return -(-d // GROUP) * GROUP


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
    wi = np.zeros((max(f, 1), 9), dtype=np.int64)
    bi = np.zeros(max(f, 1), dtype=np.int64)
    si = 0
    if f:
        si, sib = shifts[("ifce", "weight")], shifts[("ifce", "bias")]
        for s in (si, sib):
            if not 0 <= s <= MAX_SHIFT:
                raise BitstreamError(f"IFCE quantization shift {s} outside [0, {MAX_SHIFT}]")
        wi[:] = np.asarray(q_params["ifce.weight"], dtype=np.int64)
        bi[:] = [align_bias(int(v), si, sib) for v in q_params["ifce.bias"]]
    return IntArm(c, nl, d, net64, net32, f, wi, bi, si)


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


@njit(inline="always")
def _round_shift(acc, s):
    if s == 0:
        return acc
    return (acc + (1 << (s - 1))) >> s


@njit(inline="always")
def _clamp(v):
    if v > ACT_MAX:
        return ACT_MAX
    if v < -ACT_MAX:
        return -ACT_MAX
    return v


@njit(inline="always")
def _dense_pair(src, din, n, w, o, acc0, acc1):
    """``acc0 += w[o] . src``, ``acc1 += w[o+1] . src`` on the first ``n`` columns.

    Two outputs share each load of ``src``, inputs go four at a time, pixels
    innermost: LLVM vectorises the pixel loop (16 int32 lanes on AVX-512).
    Any partial sum is bounded by ``sum |w| |src|``, which is what
    :func:`int32_safe_latent_bound` bounds.
    """
    for k in range(0, din, GROUP):
        a0, a1, a2, a3 = w[o, k], w[o, k + 1], w[o, k + 2], w[o, k + 3]
        b0, b1, b2, b3 = w[o + 1, k], w[o + 1, k + 1], w[o + 1, k + 2], w[o + 1, k + 3]
        if a0 == 0 and a1 == 0 and a2 == 0 and a3 == 0 and b0 == 0 and b1 == 0 and b2 == 0 and b3 == 0:
            continue
        s0, s1, s2, s3 = src[k], src[k + 1], src[k + 2], src[k + 3]
        for p in range(n):
            v0, v1, v2, v3 = s0[p], s1[p], s2[p], s3[p]
            acc0[p] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
            acc1[p] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3


@njit(inline="always")
def _hidden_layer(src, din, n, w, b, shift, n_ctx, dst, acc0, acc1):
    """``dst = clamp(relu(round_shift(w src + b) + src[:C]))`` for C outputs (C even)."""
    for o in range(0, n_ctx, 2):
        b0, b1 = b[o], b[o + 1]
        for p in range(n):
            acc0[p] = b0
            acc1[p] = b1
        _dense_pair(src, din, n, w, o, acc0, acc1)
        for p in range(n):
            v = _round_shift(acc0[p], shift) + src[o, p]
            dst[o, p] = _clamp(v if v > 0 else 0)
            v = _round_shift(acc1[p], shift) + src[o + 1, p]
            dst[o + 1, p] = _clamp(v if v > 0 else 0)


@njit(inline="always")
def _head(h, dh, x, n, net, acc0, acc1, mu_int, frac, kidx):
    """Output layer on ``h`` (``dh`` inputs) plus the stabiliser on ``x``, then (mu_int, frac, k)."""
    b0, b1 = net.bo[0], net.bo[1]
    for p in range(n):
        acc0[p] = b0
        acc1[p] = b1
    _dense_pair(h, dh, n, net.wo, 0, acc0, acc1)
    _dense_pair(x, net.dim, n, net.ws, 0, acc0, acc1)
    shift = net.shift
    for p in range(n):
        mu_fix = _clamp(_round_shift(acc0[p], shift))
        ls_fix = _clamp(_round_shift(acc1[p], shift))
        mq = (mu_fix + (1 << (FRAC - MU_FRAC_BITS - 1))) >> (FRAC - MU_FRAC_BITS)
        mu_int[p] = mq >> MU_FRAC_BITS
        frac[p] = mq & ((1 << MU_FRAC_BITS) - 1)
        kk = (ls_fix + _K_OFFSET) >> _K_SHIFT
        if kk < 0:
            kk = 0
        elif kk > N_SCALE - 1:
            kk = N_SCALE - 1
        kidx[p] = kk


@njit
def arm_forward(x, n, net, scr, mu_int, frac, kidx):
    """Run the ARM on the first ``n`` columns of ``x`` ([net.dim, >= n], FRAC bits).

    ``net`` is an :class:`ArmNet`, ``scr`` its :class:`ArmScratch`. Writes
    ``mu_int`` (floor of mu), ``frac`` (mu's 1/16 part) and ``kidx`` (scale
    index) of each column. With ``net64`` every input is exact; with
    ``net32`` the caller guarantees the int32 bound (same integers then).
    """
    nh = net.n_hidden
    if nh == 0:
        _head(x, net.dim, x, n, net, scr.acc0, scr.acc1, mu_int, frac, kidx)
        return
    _hidden_layer(x, net.dim, n, net.wh[0], net.bh[0], net.shift, net.n_ctx, scr.h0, scr.acc0, scr.acc1)
    for layer in range(1, nh):
        src = scr.h0 if layer % 2 == 1 else scr.h1
        dst = scr.h1 if layer % 2 == 1 else scr.h0
        _hidden_layer(src, net.n_ctx, n, net.wh[layer], net.bh[layer], net.shift, net.n_ctx, dst,
                      scr.acc0, scr.acc1)
    last = scr.h0 if nh % 2 == 1 else scr.h1
    _head(last, net.n_ctx, x, n, net, scr.acc0, scr.acc1, mu_int, frac, kidx)


@njit
def _fits_int32(wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim, in_bound):
    """Whether every partial sum and activation of the ARM fits int32 for inputs bounded by ``in_bound``.

    Interval arithmetic on |values|: an accumulator is at most
    ``|b| + sum |w| B + 2^(shift-1)`` in magnitude, a rounded shift at most
    ``(A >> shift) + 1``, an activation that plus its residual input,
    clamped to ACT_MAX.
    """
    half = (1 << (shift - 1)) if shift > 0 else 0
    bnd = in_bound.copy()
    nxt = np.zeros(n_ctx, dtype=np.int64)
    for layer in range(n_hidden):
        din = dim if layer == 0 else n_ctx
        for o in range(n_ctx):
            a = abs(bh[layer, o]) + half
            for k in range(din):
                a += abs(wh[layer, o, k]) * bnd[k]
            if a > INT32_MAX:
                return False
            v = (a >> shift) + 1 + bnd[o]
            if v > INT32_MAX:
                return False
            nxt[o] = min(v, ACT_MAX)
        bnd = nxt.copy()
    din = dim if n_hidden == 0 else n_ctx
    for o in range(2):
        a = abs(bo[o]) + half
        for k in range(din):
            a += abs(wo[o, k]) * bnd[k]
        for k in range(dim):
            a += abs(ws[o, k]) * in_bound[k]
        if a > INT32_MAX:
            return False
    return True


@njit
def int32_safe_latent_bound(net, feat_bound):
    """Largest L <= MAX_LATENT such that, with context latents in [-L, L] and
    features in [0, feat_bound], :func:`arm_forward` on ``net32`` computes in
    int32 exactly what it computes on ``net64``; -1 if none.

    The bound only grows with L, so a binary search finds it.
    """
    b = np.zeros(net.dim, dtype=np.int64)
    lo, hi = -1, MAX_LATENT
    while lo < hi:
        mid = (lo + hi + 1) // 2
        for k in range(net.dim):
            b[k] = (np.int64(mid) << FRAC) if k < net.n_ctx else feat_bound
        if _fits_int32(net.wh, net.bh, net.wo, net.ws, net.bo, net.shift, net.n_hidden, net.n_ctx, net.dim, b):
            lo = mid
        else:
            hi = mid - 1
    return lo


@njit
def ifce_forward(src, w_ifce, b_ifce, shift, n_feat, out):
    """IFCE features of every pixel of the source grid ``src``, into ``out`` [>= F, sh, sw].

    Source pixel (y, x) reads its 3x3 neighbourhood, edges replicated. A
    pixel of the grid being decoded reads the features of its source pixel
    (see :func:`feature_pixel`), so they are computed once per source pixel.
    """
    sh, sw = src.shape
    for y in range(sh):
        for x in range(sw):
            for f in range(n_feat):
                acc = b_ifce[f]
                t = 0
                for dy in range(-1, 2):
                    yy = min(max(y + dy, 0), sh - 1)
                    for dx in range(-1, 2):
                        xx = min(max(x + dx, 0), sw - 1)
                        acc += w_ifce[f, t] * (np.int64(src[yy, xx]) << FRAC)
                        t += 1
                r = _round_shift(acc, shift)
                out[f, y, x] = _clamp(r if r > 0 else 0)
