"""Plain-numpy reference of upsampling, synthesis and output (float64).

Written straight from ``docs/architecture.md`` with no concern for speed, so
that the ONNX graph of :mod:`decoder_runtime.onnx_graph` (and the torch
modules of the encoder) can be checked against an independent reading of the
maths. Not used on the decoding path.
"""

from __future__ import annotations

import math
from typing import List, Mapping, Sequence

import numpy as np

from .arch import DecoderArch
from .common_randomness import common_randomness_grids
from .upsampling_kernels import BICUBIC_A, arch_upsampling_kernels


def up2_1d(x: np.ndarray, t: np.ndarray, axis: int) -> np.ndarray:
    """One 2x transposed-convolution step along ``axis``, uncropped length ``2n`` kept."""
    k = len(t)
    pad = math.ceil(k / 4)
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    xp = np.concatenate([np.repeat(x[..., :1], pad, -1), x, np.repeat(x[..., -1:], pad, -1)], -1)
    y = np.zeros(x.shape[:-1] + (2 * (xp.shape[-1] - 1) + k,))
    for j in range(k):
        # y[m] = sum_i xp[i] t[m - 2i]: tap j of input i lands on m = 2i + j.
        y[..., j:j + 2 * xp.shape[-1]:2] += t[j] * xp
    c = k // 2 - 1 + 2 * pad
    return np.moveaxis(y[..., c:c + 2 * n], -1, axis)


def up2(x: np.ndarray, t: np.ndarray, size) -> np.ndarray:
    """2-D 2x upsampling of a (C, h, w) stack, H then W, cropped to ``size``."""
    y = up2_1d(up2_1d(x, t, 1), t, 2)
    return y[:, : size[0], : size[1]]


def correlate_1d(x: np.ndarray, p: np.ndarray, axis: int) -> np.ndarray:
    r = len(p) // 2
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    xp = np.concatenate([np.repeat(x[..., :1], r, -1), x, np.repeat(x[..., -1:], r, -1)], -1)
    y = sum(p[j] * xp[..., j:j + n] for j in range(len(p)))
    return np.moveaxis(y, -1, axis)


def preconcat_filter(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    return correlate_1d(correlate_1d(x, p, 0), p, 1)


def upsample(grids: Sequence[np.ndarray], kernels) -> np.ndarray:
    """Dense (N, h0, w0) tensor from grids finest first, with kernels[l] = (t_l, p_l)."""
    x = np.asarray(grids[-1], np.float64)[None]
    for lv in range(len(grids) - 2, -1, -1):
        t, p = (np.asarray(k, np.float64) for k in kernels[lv])
        g = np.asarray(grids[lv], np.float64)
        x = up2(x, t, g.shape)
        x = np.concatenate([preconcat_filter(g, p)[None], x], 0)
    return x


def _cubic_weights(frac: np.ndarray) -> np.ndarray:
    a = BICUBIC_A
    d = np.stack([frac + 1, frac, 1 - frac, 2 - frac], -1)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far)


def resize_axis(x: np.ndarray, out: int, axis: int, mode: str) -> np.ndarray:
    """torch ``F.interpolate(..., align_corners=False)`` along one axis (separable)."""
    n = x.shape[axis]
    dst = np.arange(out)
    if mode == "nearest":
        # torch: floor(dst * (float)in/out) in float32, clamped.
        scale = np.float32(n) / np.float32(out)
        idx = np.minimum(np.floor(dst.astype(np.float32) * scale).astype(np.int64), n - 1)
        return np.take(x, idx, axis)
    src = (dst + 0.5) * (n / out) - 0.5
    if mode == "bilinear":
        src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(np.int64)
        lam = src - i0
        i1 = np.minimum(i0 + 1, n - 1)
        shape = [1] * x.ndim
        shape[axis] = out
        lam = lam.reshape(shape)
        return np.take(x, i0, axis) * (1 - lam) + np.take(x, i1, axis) * lam
    i0 = np.floor(src).astype(np.int64)
    w = _cubic_weights(src - i0)
    y = 0.0
    for j in range(4):
        idx = np.clip(i0 - 1 + j, 0, n - 1)
        shape = [1] * x.ndim
        shape[axis] = out
        y = y + np.take(x, idx, axis) * w[:, j].reshape(shape)
    return y


def resize(x: np.ndarray, size, mode: str) -> np.ndarray:
    return resize_axis(resize_axis(x, size[0], 1, mode), size[1], 2, mode)


def conv2d_replicate(x: np.ndarray, w: np.ndarray, b) -> np.ndarray:
    """Replicate-pad by k//2 then a valid 2-D correlation: (C, H, W) -> (O, H, W)."""
    k = w.shape[-1]
    r = k // 2
    xp = np.pad(x, ((0, 0), (r, r), (r, r)), mode="edge")
    h, wd = x.shape[1:]
    y = np.zeros((w.shape[0], h, wd))
    for dy in range(k):
        for dx in range(k):
            y += np.einsum("oc,chw->ohw", w[:, :, dy, dx], xp[:, dy:dy + h, dx:dx + wd])
    if b is not None:
        y += np.asarray(b, np.float64)[:, None, None]
    return y


def synthesis(arch: DecoderArch, params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    inp = x
    for i, layer in enumerate(arch.layers_synthesis):
        y = conv2d_replicate(
            x, np.asarray(params[f"synthesis.layers.{i}.weight"], np.float64), params[f"synthesis.layers.{i}.bias"]
        )
        if layer.residual:
            y = y + x
        x = np.maximum(y, 0) if layer.relu else y
    if arch.linear_stabiliser_synth:
        x = x + conv2d_replicate(inp, np.asarray(params["synthesis.stabiliser.weight"], np.float64), None)
    return x


def reference_forward(arch: DecoderArch, params: Mapping[str, np.ndarray], latents: Sequence[np.ndarray]) -> np.ndarray:
    """Synthesis output clamped to [0, 1], (n_out, H, W) float64, latents finest first."""
    kernels = arch_upsampling_kernels(arch, params)
    x = upsample(latents, kernels)
    noise = common_randomness_grids(arch)
    if noise:
        x = np.concatenate([x, upsample(noise, kernels)], 0)
    if arch.latent_resolution[0] > 0:
        x = resize(x, arch.img_size, arch.final_upsampling_type)
    return np.clip(synthesis(arch, params, x), 0.0, 1.0)


def to_code_values(x: np.ndarray, bitdepth: int) -> List[np.ndarray]:
    """Per-plane integer code values ``round(clip(x, 0, 1) * (2^bitdepth - 1))``."""
    m = (1 << bitdepth) - 1
    return [np.round(np.clip(p, 0, 1) * m).astype(np.int64) for p in x]
