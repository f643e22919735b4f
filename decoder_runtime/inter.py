"""Inter frames: the synthesis output of a P or B frame combined with its
decoded references (docs/bitstream.md, "Inter frames"). The encoder's twin is
``encoder/inter.py``; both compute, in float32 on the frame's dense planes
(values in [0, 1], yuv420 chroma repeated 2x2 to full resolution):

* channels of the synthesis output, in order: the residue ``r`` (one per
  plane), ``a``, the motion ``m0``, and for a B frame ``m1`` and ``b``; the
  motion in pixels is ``v = MOTION_SCALE * m`` (a shift of a few pixels is a
  small output, as the networks' initialisation and learning rates expect);
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

from typing import Sequence

import numpy as np

from .errors import BitstreamError

MOTION_SCALE = 16.0  # pixels per unit of the motion channels (docs/bitstream.md, "Inter frames")


def n_motion_fields(frame_type: str) -> int:
    return {"P": 1, "B": 2}[frame_type]


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


def warp(ref: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` reference sampled at each pixel's position plus ``flow`` ``(2, H, W)`` (dx, dy)."""
    c, h, w = ref.shape
    f32 = np.float32
    xs = np.clip(np.arange(w, dtype=f32)[None, :] + flow[0], f32(0), f32(w - 1))
    ys = np.clip(np.arange(h, dtype=f32)[:, None] + flow[1], f32(0), f32(h - 1))
    x0f = np.floor(xs)
    y0f = np.floor(ys)
    wx = xs - x0f
    wy = ys - y0f
    x0 = x0f.astype(np.intp)
    y0 = y0f.astype(np.intp)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    flat = ref.reshape(c, h * w)
    i00, i01, i10, i11 = y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1
    out = np.empty_like(ref)
    one = f32(1)
    for k in range(c):
        p = flat[k]
        top = (one - wx) * p[i00] + wx * p[i01]
        bot = (one - wx) * p[i10] + wx * p[i11]
        out[k] = (one - wy) * top + wy * bot
    return out


def combine(raw: np.ndarray, frame_type: str, refs: Sequence[np.ndarray]) -> np.ndarray:
    """The decoded dense frame ``(planes, H, W)`` (not yet clamped) of a P or B frame's synthesis output."""
    n_refs = n_motion_fields(frame_type)
    if len(refs) != n_refs:
        raise BitstreamError(f"a {frame_type} frame needs {n_refs} reference frame(s), got {len(refs)}")
    n_planes = raw.shape[0] - (3 if frame_type == "P" else 6)
    for r in refs:
        if r.shape != (n_planes, *raw.shape[1:]):
            raise BitstreamError(f"a reference frame is {r.shape}, the frame is {(n_planes, *raw.shape[1:])}")
    half, zero, one = np.float32(0.5), np.float32(0), np.float32(1)
    residue = raw[:n_planes]
    alpha = np.clip(raw[n_planes] + half, zero, one)
    scale = np.float32(MOTION_SCALE)
    pred = warp(refs[0], raw[n_planes + 1:n_planes + 3] * scale)
    if frame_type == "B":
        beta = np.clip(raw[n_planes + 5] + half, zero, one)
        pred = beta * pred + (one - beta) * warp(refs[1], raw[n_planes + 3:n_planes + 5] * scale)
    return alpha * pred + residue
