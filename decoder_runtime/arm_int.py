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

    Every layer, hidden (``h = clamp(relu(round_shift(w src + b) + src[:C]))``)
    or output (``w h + ws x + b``), runs the one dense loop below: two outputs
    share each load of an input row, inputs go four at a time, pixels
    innermost, so that LLVM vectorises the pixel loop (16 int32 lanes on
    AVX-512). Any partial sum is bounded by ``sum |w| |src|``, which is what
    :func:`int32_safe_latent_bound` bounds. One copy of that loop, no inlined
    helpers, clamps as conditional expressions (numba compiles ``min`` and
    ``max`` as functions of their own): numba compiles this kernel in under a
    second (see bench/cold_start.py).
    """
    nh = net.n_hidden
    n_ctx = net.n_ctx
    shift = net.shift
    half = (1 << (shift - 1)) if shift > 0 else 0
    acc0, acc1 = scr.acc0, scr.acc1
    src = x
    for layer in range(nh + 1):
        head = layer == nh
        if head:
            w, b, n_out = net.wo, net.bo, 2
        else:
            w, b, n_out = net.wh[layer], net.bh[layer], n_ctx
        dst = scr.h0 if layer % 2 == 0 else scr.h1
        for o in range(0, n_out, 2):
            b0, b1 = b[o], b[o + 1]
            for p in range(n):
                acc0[p] = b0
                acc1[p] = b1
            # The output layer also adds the stabiliser (ws) on the ARM's input x.
            for term in range(2 if head else 1):
                if term == 0:
                    s, ws, din = src, w, (net.dim if layer == 0 else n_ctx)
                else:
                    s, ws, din = x, net.ws, net.dim
                for k in range(0, din, GROUP):
                    a0, a1, a2, a3 = ws[o, k], ws[o, k + 1], ws[o, k + 2], ws[o, k + 3]
                    c0, c1, c2, c3 = ws[o + 1, k], ws[o + 1, k + 1], ws[o + 1, k + 2], ws[o + 1, k + 3]
                    if a0 == 0 and a1 == 0 and a2 == 0 and a3 == 0 and c0 == 0 and c1 == 0 and c2 == 0 and c3 == 0:
                        continue
                    s0, s1, s2, s3 = s[k], s[k + 1], s[k + 2], s[k + 3]
                    for p in range(n):
                        v0, v1, v2, v3 = s0[p], s1[p], s2[p], s3[p]
                        acc0[p] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
                        acc1[p] += c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3
            if head:
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
            else:
                s0, s1, d0, d1 = src[o], src[o + 1], dst[o], dst[o + 1]
                for p in range(n):
                    v = ((acc0[p] + half) >> shift) + s0[p]
                    d0[p] = ACT_MAX if v > ACT_MAX else (0 if v < 0 else v)
                    v = ((acc1[p] + half) >> shift) + s1[p]
                    d1[p] = ACT_MAX if v > ACT_MAX else (0 if v < 0 else v)
        src = dst


@njit
def arm_forward_py(x, n, net, scr, mu_int, frac, kidx):
    """:func:`arm_forward` called from Python (tests): the kernel itself is
    compiled without the Python wrapper that would unbox its fifteen arrays,
    compile time that no decode uses."""
    arm_forward(x, n, net, scr, mu_int, frac, kidx)


def _fits_int32(net: ArmNet, in_bound: np.ndarray) -> bool:
    """Whether every partial sum and activation of the ARM fits int32 for inputs bounded by ``in_bound``.

    Interval arithmetic on |values|: an accumulator is at most
    ``|b| + sum |w| B + 2^(shift-1)`` in magnitude, a rounded shift at most
    ``(A >> shift) + 1``, an activation that plus its residual input,
    clamped to ACT_MAX. Every term stays below 2^46: int64 holds them exactly.
    """
    shift = net.shift
    half = (1 << (shift - 1)) if shift > 0 else 0
    bnd = in_bound
    for layer in range(net.n_hidden):
        din = net.dim if layer == 0 else net.n_ctx
        a = np.abs(net.bh[layer]) + half + np.abs(net.wh[layer][:, :din]) @ bnd[:din]
        if a.max() > INT32_MAX:
            return False
        v = (a >> shift) + 1 + bnd[:net.n_ctx]
        if v.max() > INT32_MAX:
            return False
        bnd = np.minimum(v, ACT_MAX)
    din = net.dim if net.n_hidden == 0 else net.n_ctx
    a = np.abs(net.bo) + half + np.abs(net.wo[:, :din]) @ bnd[:din] + np.abs(net.ws) @ in_bound
    return bool(a.max() <= INT32_MAX)


def int32_safe_latent_bound(net: ArmNet, feat_bound: int) -> int:
    """Largest L <= MAX_LATENT such that, with context latents in [-L, L] and
    features in [0, feat_bound], :func:`arm_forward` on ``net32`` computes in
    int32 exactly what it computes on ``net64``; -1 if none.

    ``net`` is the int64 net. The bound only grows with L, so a binary search
    finds it (numpy, microseconds: no kernel to compile).
    """
    net = ArmNet(*(np.asarray(a, dtype=np.int64) for a in net[:5]), *net[5:])
    b = np.full(net.dim, min(int(feat_bound), 1 << 40), dtype=np.int64)
    lo, hi = -1, MAX_LATENT
    while lo < hi:
        mid = (lo + hi + 1) // 2
        b[:net.n_ctx] = mid << FRAC
        if _fits_int32(net, b):
            lo = mid
        else:
            hi = mid - 1
    return lo


def ifce_forward(src: np.ndarray, w_ifce: np.ndarray, b_ifce: np.ndarray, shift: int, n_feat: int,
                 out: np.ndarray) -> None:
    """IFCE features of every pixel of the source grid ``src``, into ``out`` [>= F, sh, sw].

    Source pixel (y, x) reads its 3x3 neighbourhood, edges replicated. A
    pixel of the grid being decoded reads the features of its source pixel
    (see :func:`feature_pixel`), so they are computed once per source pixel.
    Integer numpy (int64: |w| < 2^15, |src| << FRAC < 2^22, nine terms).
    """
    sh, sw = src.shape
    pad = np.pad(np.asarray(src, dtype=np.int64) << FRAC, 1, mode="edge")
    for f in range(n_feat):
        acc = np.full((sh, sw), int(b_ifce[f]), dtype=np.int64)
        t = 0
        for dy in range(3):
            for dx in range(3):
                acc += int(w_ifce[f, t]) * pad[dy:dy + sh, dx:dx + sw]
                t += 1
        out[f, :sh, :sw] = np.clip(_round_shift(acc, shift), 0, ACT_MAX)
