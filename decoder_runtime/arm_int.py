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

import numpy as np

from .arch import DecoderArch
from .errors import BitstreamError
from .jit import njit
from .prob_tables import MU_FRAC_BITS, N_SCALE

FRAC = 8
ACT_MAX = 1 << 24  # activations are clamped to [-ACT_MAX, ACT_MAX] after every layer
MAX_SHIFT = 16
MAX_ABS_PARAM = (1 << 15) - 1
# Scale index: ln b = out1 - 4 on a grid -4.5 + k/8 -> k = round((out1 + 0.5) * 8)
_K_OFFSET = (1 << FRAC) // 2 + (1 << (FRAC - 3)) // 2  # +0.5 and the rounding half-step
_K_SHIFT = FRAC - 3


def align_bias(q_b: int, shift_w: int, shift_b: int) -> int:
    """Bias ``q_b * 2^-shift_b`` in the accumulator's 2^-(FRAC + shift_w) units."""
    n = FRAC + shift_w - shift_b
    if n >= 0:
        return q_b << n
    return (q_b + (1 << (-n - 1))) >> -n


@dataclass(frozen=True)
class IntArm:
    """Integer ARM (+ IFCE) weights laid out for the numba kernels."""

    n_context: int
    n_hidden: int
    dim_in: int  # context + IFCE features
    w_hidden: np.ndarray  # int64 [max(L,1), C, D]
    b_hidden: np.ndarray  # int64 [max(L,1), C], aligned
    w_out: np.ndarray  # int64 [2, D]; columns beyond C unused when L > 0
    w_stab: np.ndarray  # int64 [2, D], zeros without stabiliser
    b_out: np.ndarray  # int64 [2], aligned
    shift: int
    n_ifce: int
    w_ifce: np.ndarray  # int64 [F, 9]  (F >= 1 for numba typing; unused when n_ifce = 0)
    b_ifce: np.ndarray  # int64 [F], aligned
    shift_ifce: int


def build_int_arm(arch: DecoderArch, q_params: dict, shifts: dict) -> IntArm:
    """Lay out integer parameters (names of arch.param_layout) for the kernels."""
    c, d, nl = arch.spatial_context_arm, arch.arm_input_dim, arch.n_hidden_layers_arm
    sw, sb = shifts[("arm", "weight")], shifts[("arm", "bias")]
    for s in (sw, sb):
        if not 0 <= s <= MAX_SHIFT:
            raise BitstreamError(f"ARM quantization shift {s} outside [0, {MAX_SHIFT}]")
    wh = np.zeros((max(nl, 1), c, d), dtype=np.int64)
    bh = np.zeros((max(nl, 1), c), dtype=np.int64)
    for i in range(nl):
        w = np.asarray(q_params[f"arm.mlp.{i}.weight"], dtype=np.int64)
        wh[i, :, : w.shape[1]] = w
        bh[i] = [align_bias(int(v), sw, sb) for v in q_params[f"arm.mlp.{i}.bias"]]
    wo = np.zeros((2, d), dtype=np.int64)
    w = np.asarray(q_params[f"arm.mlp.{nl}.weight"], dtype=np.int64)
    wo[:, : w.shape[1]] = w
    bo = np.array([align_bias(int(v), sw, sb) for v in q_params[f"arm.mlp.{nl}.bias"]], dtype=np.int64)
    ws = np.zeros((2, d), dtype=np.int64)
    if arch.linear_stabiliser_arm:
        ws[:] = np.asarray(q_params["arm.stabiliser.weight"], dtype=np.int64)
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
    return IntArm(c, nl, d, wh, bh, wo, ws, bo, sw, f, wi, bi, si)


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


@njit
def arm_forward(x, n, wh, bh, wo, ws, bo, shift, n_hidden, n_ctx, dim_in, h0, h1, acc, acc2, mu_int, frac, kidx):
    """Run the ARM on the first ``n`` columns of ``x`` ([dim_in, >= n], FRAC bits).

    ``h0``, ``h1`` ([n_ctx, >= n]), ``acc`` and ``acc2`` ([>= n]) are scratch.
    Writes ``mu_int`` (floor of mu), ``frac`` (mu's 1/16 part) and ``kidx``
    (scale index) for each column.  Loops run over pixels innermost so that
    LLVM vectorises them.
    """
    src = x
    din = dim_in
    for layer in range(n_hidden):
        dst = h0 if layer % 2 == 0 else h1
        for o in range(n_ctx):
            b = bh[layer, o]
            for p in range(n):
                acc[p] = b
            for k in range(din):
                w = wh[layer, o, k]
                if w != 0:
                    for p in range(n):
                        acc[p] += w * src[k, p]
            for p in range(n):
                v = _round_shift(acc[p], shift) + src[o, p]
                if v < 0:
                    v = 0
                dst[o, p] = _clamp(v)
        src = dst
        din = n_ctx
    out_mu = acc2
    out_ls = acc
    for o in range(2):
        tgt = out_mu if o == 0 else out_ls
        b = bo[o]
        for p in range(n):
            tgt[p] = b
        for k in range(din):
            w = wo[o, k]
            if w != 0:
                for p in range(n):
                    tgt[p] += w * src[k, p]
        for k in range(dim_in):
            w = ws[o, k]
            if w != 0:
                for p in range(n):
                    tgt[p] += w * x[k, p]
        for p in range(n):
            tgt[p] = _clamp(_round_shift(tgt[p], shift))
    for p in range(n):
        mq = (out_mu[p] + (1 << (FRAC - MU_FRAC_BITS - 1))) >> (FRAC - MU_FRAC_BITS)
        mu_int[p] = mq >> MU_FRAC_BITS
        frac[p] = mq & ((1 << MU_FRAC_BITS) - 1)
        kk = (out_ls[p] + _K_OFFSET) >> _K_SHIFT
        if kk < 0:
            kk = 0
        elif kk > N_SCALE - 1:
            kk = N_SCALE - 1
        kidx[p] = kk


@njit
def ifce_forward(src, shift_down, h, w, w_ifce, b_ifce, shift, n_feat, out):
    """IFCE features of every pixel of an ``h x w`` grid, into ``out`` [F, h*w].

    ``src`` is the previously decoded grid; pixel (y, x) reads the 3x3
    neighbourhood of source pixel (y >> shift_down, x >> shift_down), edges
    replicated.
    """
    sh, sw = src.shape
    v = np.empty(9, dtype=np.int64)
    for y in range(h):
        cy = min(y >> shift_down, sh - 1)
        for x in range(w):
            cx = min(x >> shift_down, sw - 1)
            t = 0
            for dy in range(-1, 2):
                yy = min(max(cy + dy, 0), sh - 1)
                for dx in range(-1, 2):
                    xx = min(max(cx + dx, 0), sw - 1)
                    v[t] = np.int64(src[yy, xx]) << FRAC
                    t += 1
            for f in range(n_feat):
                acc = b_ifce[f]
                for t in range(9):
                    acc += w_ifce[f, t] * v[t]
                r = _round_shift(acc, shift)
                if r < 0:
                    r = 0
                out[f, y * w + x] = _clamp(r)
