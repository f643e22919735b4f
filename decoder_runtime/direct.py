"""Direct B frames (sequence format version 5): a B frame sent as a blend
weight alone, its motion derived from the motion one of its references
already carries (docs/bitstream.md, "Direct B frames").

A B frame at display time ``t`` with references at ``t0 < t < t1`` needs a
motion field towards each. When one of its references, the *source*, was
itself coded with motion towards the other one, and objects move at constant
speed over ``[t0, t1]``, the source's field says where each of its pixels
lies on the other reference, and the B frame lies on the way:
``s0 = (t - t0) / (t1 - t0)`` of it from ``t0``, ``s1 = (t1 - t) / (t1 - t0)``
from ``t1``. With ``f`` the source's field in pixels:

* source ``t1`` (``SOURCE_FUTURE``), ``f``: ``t1 -> t0``:
  ``g = warp(f, -s1 f)``, ``v0 = s0 g``, ``v1 = -s1 g``;
* source ``t0`` (``SOURCE_PAST``), ``f``: ``t0 -> t1``:
  ``g = warp(f, -s0 f)``, ``v0 = -s0 g``, ``v1 = s1 g``.

``g`` is the source's field read where the B frame's pixel lies on the
source (one fixed-point step of ``p = y - s f(p)``) rather than at the same
position: it follows the moving objects (docs/video.md, "Direct B frames").
The frame is then ``beta warp(R0, v0) + (1 - beta) warp(R1, v1)`` with
``beta = k / DIRECT_BETA_STEPS``: the B frame formula of ``inter.py`` with
``alpha = 1`` and no residue, computed by the same kernel, then clamped and
rounded like any frame. A direct frame's own motion (``v0``, ``v1``) can be
the source of a later direct frame.

A B frame *with derived motion* (also version 5) is a coded B frame whose
motion is ``v = 16 m + o``: its Cool-chic codes only the correction ``m`` to
the derived motion ``o = (v0, v1)`` above (``inter.combine``'s
``motion_offset``). Its training starts from the derived motion instead of
an optical-flow estimate, and its motion latents shrink (docs/video.md).

Every step is a float32 product, a float32 quotient or the warp kernel, so
an encoder and a decoder given the same fields compute the same frame. The
encoder takes the fields from the runtime's decoding of the frames it wrote
(``encoder/video.py``), as the decoder does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .arch import inter_channels
from .errors import BitstreamError
from .inter import MOTION_SCALE, combine, warp

DIRECT_BETA_STEPS = 8  # beta = k / 8, k in 0..8: the blend weight of the past reference
SOURCE_FUTURE = 0  # the future reference's motion towards the past one
SOURCE_PAST = 1  # the past reference's motion towards the future one
SOURCE_NAMES = ("future", "past")

# Motion fields of decoded frames: display index -> {reference display index: (2, H, W) float32 (dx, dy)}.
MotionFields = Mapping[int, Mapping[int, np.ndarray]]


@dataclass(frozen=True)
class DirectParams:
    """What a direct B frame's section holds besides its display index and references."""

    beta_k: int  # 0..DIRECT_BETA_STEPS
    source: int  # SOURCE_FUTURE or SOURCE_PAST


def motion_fields(raw: np.ndarray, frame_type: str, refs: Sequence[int],
                  offset: Optional[np.ndarray] = None) -> Dict[int, np.ndarray]:
    """The motion in pixels of a P or B frame's synthesis output ``raw`` (C, H, W), by reference:
    ``v = MOTION_SCALE * m`` (``+ offset``, its derived motion) in float32, as ``inter.combine``
    computes it per pixel."""
    n = raw.shape[0] - inter_channels(frame_type)
    scale = np.float32(MOTION_SCALE)
    out = {}
    for i, r in enumerate(refs):
        v = np.asarray(raw[n + 1 + 2 * i:n + 3 + 2 * i], np.float32) * scale
        out[r] = v if offset is None else v + offset[2 * i:2 * i + 2]
    return out


def derived_motion(motion: MotionFields, t: int, refs: Sequence[int], source: int) -> np.ndarray:
    """``(4, H, W)``: ``v0`` then ``v1`` of a frame at ``t`` derived from its ``source``
    reference's motion (:func:`source_field`, :func:`direct_motion`)."""
    v0, v1 = direct_motion(t, refs, source, source_field(motion, t, refs, source))
    return np.concatenate([v0, v1])


def source_field(motion: MotionFields, t: int, refs: Sequence[int], source: int) -> np.ndarray:
    """The field a direct frame at ``t`` derives its motion from; BitstreamError when its
    source reference carries no motion towards the other reference."""
    t0, t1 = refs
    src, other = (t1, t0) if source == SOURCE_FUTURE else (t0, t1)
    field = motion.get(src, {}).get(other)
    if field is None:
        raise BitstreamError(f"frame {t} is a direct B frame from the motion of frame {src} towards frame {other}, "
                             f"which frame {src} does not carry")
    return field


def direct_motion(t: int, refs: Sequence[int], source: int, field: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(v0, v1)``: the motion of a direct frame at ``t`` towards its references (module docstring)."""
    t0, t1 = refs
    if not t0 < t < t1:
        raise BitstreamError(f"a direct B frame at {t} needs references on both sides, got {t0} and {t1}")
    span = np.float32(t1 - t0)
    s0 = np.float32(t - t0) / span
    s1 = np.float32(t1 - t) / span
    f = np.ascontiguousarray(field, dtype=np.float32)
    if source == SOURCE_FUTURE:
        g = warp(f, -s1 * f)
        return s0 * g, -s1 * g
    g = warp(f, -s0 * f)
    return -s0 * g, s1 * g


def direct_prediction(refs: Sequence[np.ndarray], v0: np.ndarray, v1: np.ndarray, beta_k: int,
                      chroma_step: int = 1) -> np.ndarray:
    """The direct frame (dense planes, not yet clamped) from its two dense references.

    The synthesis output of a B frame with no residue, ``a = 1/2`` (alpha 1),
    ``m = v / MOTION_SCALE`` (exact: a power of two) and ``b = beta - 1/2``,
    through ``inter.combine``."""
    n_planes, h, w = refs[0].shape
    raw = np.zeros((n_planes + inter_channels("B"), h, w), np.float32)
    scale = np.float32(MOTION_SCALE)
    raw[n_planes] = 0.5
    raw[n_planes + 1:n_planes + 3] = v0 / scale
    raw[n_planes + 3:n_planes + 5] = v1 / scale
    raw[n_planes + 5] = np.float32(beta_k) / np.float32(DIRECT_BETA_STEPS) - np.float32(0.5)
    return combine(raw, "B", refs, chroma_step)
