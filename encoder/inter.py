"""InterCodingModule: the torch twin of ``decoder_runtime/inter.py``, whose
docstring gives the formulas (motion compensation by bilinear warping with
border replication, blending by beta, masking by alpha, plus the residue).

The same operations in the same order, so that the encoder's reconstruction
and the runtime's agree to float rounding; the warp is differentiable in the
motion (through the interpolation weights) and in the references.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from coolchic.decoder_runtime.arch import inter_channels
from coolchic.decoder_runtime.inter import MOTION_SCALE


def warp(ref: Tensor, flow: Tensor) -> Tensor:
    """``ref`` (1, C, H, W) sampled at each pixel plus ``flow`` (1, 2, H, W) = (dx, dy) in pixels."""
    _, c, h, w = ref.shape
    xs = torch.clamp(torch.arange(w, dtype=ref.dtype, device=ref.device)[None, :] + flow[0, 0], 0, w - 1)
    ys = torch.clamp(torch.arange(h, dtype=ref.dtype, device=ref.device)[:, None] + flow[0, 1], 0, h - 1)
    x0f = torch.floor(xs).detach()
    y0f = torch.floor(ys).detach()
    wx = xs - x0f
    wy = ys - y0f
    x0 = x0f.long()
    y0 = y0f.long()
    x1 = torch.clamp(x0 + 1, max=w - 1)
    y1 = torch.clamp(y0 + 1, max=h - 1)
    flat = ref.reshape(c, h * w)

    def at(yi: Tensor, xi: Tensor) -> Tensor:
        return flat[:, (yi * w + xi).reshape(-1)].reshape(c, h, w)

    top = (1 - wx) * at(y0, x0) + wx * at(y0, x1)
    bot = (1 - wx) * at(y1, x0) + wx * at(y1, x1)
    return ((1 - wy) * top + wy * bot)[None]


class InterCodingModule(nn.Module):
    """Turns the synthesis output of a P or B frame and its references into the decoded frame."""

    def __init__(self, frame_type: str):
        super().__init__()
        if frame_type not in ("P", "B"):
            raise ValueError(f"InterCodingModule is for P and B frames, not {frame_type!r}")
        self.frame_type = frame_type
        # (1, 2 or 4, H, W) pixels added to the motion: a B frame's derived motion
        # (decoder_runtime/direct.py), whose correction alone the Cool-chic codes; None: none.
        self.motion_offset: Optional[Tensor] = None

    def split(self, raw_out: Tensor) -> Dict[str, Tensor]:
        """The named channels of the synthesis output, the motion in pixels."""
        n = raw_out.shape[1] - inter_channels(self.frame_type)
        flows = self.flows(raw_out)
        parts = {"residue": raw_out[:, :n], "alpha": torch.clamp(raw_out[:, n:n + 1] + 0.5, 0, 1),
                 "flow_0": flows[:, 0:2]}
        if self.frame_type == "B":
            parts["flow_1"] = flows[:, 2:4]
            parts["beta"] = torch.clamp(raw_out[:, n + 5:n + 6] + 0.5, 0, 1)
        return parts

    def flows(self, raw_out: Tensor) -> Tensor:
        """(1, 2 or 4, H, W): the motion fields in pixels, ``16 m`` (``+ motion_offset``)."""
        n = raw_out.shape[1] - inter_channels(self.frame_type)
        v = (raw_out[:, n + 1:n + 3] if self.frame_type == "P" else raw_out[:, n + 1:n + 5]) * MOTION_SCALE
        return v if self.motion_offset is None else v + self.motion_offset

    def forward(self, raw_out: Tensor, references: Sequence[Tensor]) -> Tensor:
        parts = self.split(raw_out)
        pred = warp(references[0], parts["flow_0"])
        if self.frame_type == "B":
            beta = parts["beta"]
            pred = beta * pred + (1 - beta) * warp(references[1], parts["flow_1"])
        return parts["alpha"] * pred + parts["residue"]
