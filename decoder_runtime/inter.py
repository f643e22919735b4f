"""Inter frames: the synthesis output of a P or B frame combined with its
decoded references (docs/bitstream.md, "Inter frames"). The encoder's twin is
``encoder/inter.py``; both compute, in float32 on the frame's dense planes
(values in [0, 1], yuv420 chroma repeated 2x2 to full resolution):

* channels of the synthesis output, in order: the residue ``r`` (one per
  plane), ``a``, the motion ``m0``, and for a B frame ``m1`` and ``b``; the
  motion in pixels is ``v = MOTION_SCALE * m`` (a shift of a few pixels is a
  small output, as the networks' initialisation and learning rates expect),
  plus, in a B frame with derived motion, that motion ``o`` in pixels:
  ``v = MOTION_SCALE * m + o`` (``direct.py``);
* ``alpha = clip(a + 1/2, 0, 1)``, ``beta = clip(b + 1/2, 0, 1)``;
* ``warp(R, v)(y, x)``: bilinear interpolation of ``R`` at
  ``(clip(x + dx, 0, W-1), clip(y + dy, 0, H-1))``, the four neighbours
  ``(x0, y0)``, ``(x0 + 1, y0)``... with ``x0 = floor``, and indices past the
  last column or row clamped to it (border replication);
* prediction ``p = warp(R0, v0)`` (P) or
  ``p = beta * warp(R0, v0) + (1 - beta) * warp(R1, v1)`` (B);
* decoded frame ``x = alpha * p + r``, then clamped to [0, 1] and rounded to
  the bit depth like an intra frame.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .arch import N_REFERENCES, inter_channels
from .errors import BitstreamError
from .jit import njit

MOTION_SCALE = 16.0  # pixels per unit of the motion channels (docs/bitstream.md, "Inter frames")


def dense_reference(planes: Sequence[np.ndarray], bitdepth: int) -> np.ndarray:
    """Integer planes of a decoded frame -> ``(C, H, W)`` float32 in [0, 1], chroma at full resolution."""
    scale = np.float32(1.0 / ((1 << bitdepth) - 1))
    h, w = planes[0].shape
    out = np.empty((len(planes), h, w), np.float32)
    for c, p in enumerate(planes):
        if p.shape != (h, w):  # yuv420 chroma: each sample covers 2x2 luma positions
            p = np.repeat(np.repeat(p, 2, axis=0), 2, axis=1)
        np.multiply(p, scale, out=out[c], dtype=np.float32)
    return out


@njit(inline="always")
def _position(v, size):
    """``clip(v, 0, size - 1)`` in float32; NaN (only a hostile file's synthesis makes one) reads as 0."""
    hi = np.float32(size - 1)
    if not v > np.float32(0):
        return np.float32(0)
    return hi if v > hi else v


@njit(inline="always")
def _taps(xs, ys, w, h):
    """The four neighbours and weights of the bilinear sample at (xs, ys), borders replicated."""
    x0f = np.floor(xs)
    y0f = np.floor(ys)
    x0, y0 = int(x0f), int(y0f)
    return x0, (x0 + 1 if x0 + 1 < w else w - 1), y0, (y0 + 1 if y0 + 1 < h else h - 1), xs - x0f, ys - y0f


@njit(inline="always")
def _bilinear(p, x0, x1, y0, y1, wx, wy):
    one = np.float32(1)
    top = (one - wx) * p[y0, x0] + wx * p[y0, x1]
    bot = (one - wx) * p[y1, x0] + wx * p[y1, x1]
    return (one - wy) * top + wy * bot


@njit(nogil=True)
def _warp_kernel(ref, flow, out):
    c, h, w = ref.shape
    for y in range(h):
        for x in range(w):
            x0, x1, y0, y1, wx, wy = _taps(_position(np.float32(x) + flow[0, y, x], w),
                                           _position(np.float32(y) + flow[1, y, x], h), w, h)
            for k in range(c):
                out[k, y, x] = _bilinear(ref[k], x0, x1, y0, y1, wx, wy)


@njit(nogil=True)
def _combine_kernel(raw, n_planes, two_refs, ref0, ref1, chroma_step, off, has_off, out):
    """:func:`combine` in one pass over the pixels; ``ref1`` is ignored unless ``two_refs``,
    ``off`` unless ``has_off``."""
    _, h, w = raw.shape
    half, zero, one, scale = np.float32(0.5), np.float32(0), np.float32(1), np.float32(MOTION_SCALE)
    n = n_planes
    for y in range(h):
        for x in range(w):
            a = raw[n, y, x] + half
            alpha = zero if a < zero else (one if a > one else a)
            fx, fy = np.float32(x), np.float32(y)
            mx, my = raw[n + 1, y, x] * scale, raw[n + 2, y, x] * scale
            if has_off:
                mx, my = mx + off[0, y, x], my + off[1, y, x]
            x0, x1, y0, y1, wx, wy = _taps(_position(fx + mx, w), _position(fy + my, h), w, h)
            beta = zero
            u0, u1, v0, v1, ux, uy = x0, x1, y0, y1, wx, wy
            if two_refs:
                mx, my = raw[n + 3, y, x] * scale, raw[n + 4, y, x] * scale
                if has_off:
                    mx, my = mx + off[2, y, x], my + off[3, y, x]
                u0, u1, v0, v1, ux, uy = _taps(_position(fx + mx, w), _position(fy + my, h), w, h)
                b = raw[n + 5, y, x] + half
                beta = zero if b < zero else (one if b > one else b)
            # Planes past the first only where chroma_step divides both coordinates.
            n_k = n if (y | x) & (chroma_step - 1) == 0 else 1
            for k in range(n_k):
                pred = _bilinear(ref0[k], x0, x1, y0, y1, wx, wy)
                if two_refs:
                    pred = beta * pred + (one - beta) * _bilinear(ref1[k], u0, u1, v0, v1, ux, uy)
                out[k, y, x] = alpha * pred + raw[k, y, x]


def warp(ref: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` reference sampled at each pixel's position plus ``flow`` ``(2, H, W)`` (dx, dy)."""
    ref = np.ascontiguousarray(ref, dtype=np.float32)
    out = np.empty_like(ref)
    _warp_kernel(ref, np.ascontiguousarray(flow, dtype=np.float32), out)
    return out


def combine(raw: np.ndarray, frame_type: str, refs: Sequence[np.ndarray], chroma_step: int = 1,
            motion_offset: Optional[np.ndarray] = None) -> np.ndarray:
    """The decoded dense frame ``(planes, H, W)`` (not yet clamped) of a P or B frame's synthesis output.

    One numba pass over the pixels (``_combine_kernel``): per pixel, the
    operations of the module docstring in float32, in that order, no fused
    multiply-add, so that it agrees bit for bit with the encoder's torch twin.
    ``chroma_step`` 2: the planes past the first are computed only at even
    rows and columns, the samples a yuv420 frame keeps (its other values are
    left undefined): the kernel of a 640x272 B frame takes 4.5 ms instead of
    5.5 (medians of 5 rounds, random motion of about a pixel).
    ``motion_offset`` ``(2 or 4, H, W)``: pixels added to the motion, ``v = 16 m + o``
    (a B frame with derived motion, ``direct.py``).
    """
    if chroma_step not in (1, 2):
        raise ValueError(f"chroma_step must be 1 or 2, got {chroma_step}")
    n_refs = N_REFERENCES[frame_type]
    if len(refs) != n_refs:
        raise BitstreamError(f"a {frame_type} frame needs {n_refs} reference frame(s), got {len(refs)}")
    n_planes = raw.shape[0] - inter_channels(frame_type)
    for r in refs:
        if r.shape != (n_planes, *raw.shape[1:]):
            raise BitstreamError(f"a reference frame is {r.shape}, the frame is {(n_planes, *raw.shape[1:])}")
    raw = np.ascontiguousarray(raw, dtype=np.float32)
    ref0 = np.ascontiguousarray(refs[0], dtype=np.float32)
    ref1 = np.ascontiguousarray(refs[-1], dtype=np.float32)
    out = np.empty((n_planes, *raw.shape[1:]), np.float32)
    if motion_offset is None:
        off = np.zeros((1, 1, 1), np.float32)
    else:
        off = np.ascontiguousarray(motion_offset, dtype=np.float32)
        if off.shape != (2 * n_refs, *raw.shape[1:]):
            raise BitstreamError(f"a motion offset of shape {off.shape} for a {frame_type} frame of {raw.shape[1:]}")
    _combine_kernel(raw, n_planes, frame_type == "B", ref0, ref1, chroma_step, off, motion_offset is not None, out)
    return out
