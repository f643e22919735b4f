"""Training a large frame in bounded memory: the loss and its gradient, tile by tile.

The training loss (``loss.py``) is a sum over output samples and over coded
latent values,

    L = (1 / n_samples) sum_bands sum_{(c, y, x) in band} (x_hat - x)^2
        + (lambda / (H W)) sum_chunks sum_{v in chunk} R(y_hat_v),

and the upsampling and synthesis are local. So with the quantized latents
``y_hat = Q(gain * y)`` computed once and held as a detached leaf:

* each band of output rows ``[y0, y1)`` runs upsampling and synthesis on the
  latent rows its receptive field needs (``decoder_runtime.tiling.plan_rows``,
  the decoder's own tiles), backpropagates its part of the distortion and
  adds its latent rows' gradient into ``dL/dy_hat``;
* each chunk of coded values runs the ARM and backpropagates its rate
  (``arm_chunks.rate_backward``);
* finally ``y_hat.backward(dL/dy_hat)`` carries the sum back through the
  quantizer to the latent parameters.

The networks' gradients accumulate across bands and chunks: the result is
the whole-frame gradient up to float summation order, while the memory
that grows with the frame is a few copies of the latents and of the image
(see :func:`whole_frame_training_bytes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from coolchic.decoder_runtime.arch import DecoderArch
from coolchic.decoder_runtime.tiling import RowWindow, can_split, plan_rows, synthesis_halo, tile_bounds

# Working set of one band or one ARM chunk: big enough that per-call overhead
# and halos cost little, small enough to fit any machine.
TILE_WORKING_SET = 384 << 20
MIN_WORKING_SET = 1 << 20
# Default --max-memory: this fraction of the machine's RAM.
DEFAULT_MEMORY_FRACTION = 0.5


@dataclass(frozen=True)
class TilePlan:
    """Output row bands of the distortion and coded values per ARM chunk."""

    rows: Tuple[Tuple[int, int], ...]
    chunk_values: int

    def describe(self, arch: DecoderArch) -> str:
        h, w = arch.img_size
        n = len(self.rows)
        return (f"training in {n} band{'s' if n > 1 else ''} of {self.rows[0][1] - self.rows[0][0]} rows "
                f"and ARM chunks of about {self.chunk_values} values ({h}x{w})")


# ---- memory model ---------------------------------------------------------
def _synthesis_floats_per_pixel(arch: DecoderArch) -> int:
    """Floats that training keeps per output pixel for the upsampling and synthesis."""
    n_grids = len(arch.latent_grid_sizes())
    cr = 2 if arch.flag_common_randomness else 1
    ups = 6 * n_grids * cr  # per level: padded input, two filtered passes, transposes
    syn = 0
    cin = arch.synthesis_in_channels
    for layer in arch.layers_synthesis:
        # input padded, output, relu output, and the gradients of each in backward
        syn += 2 * cin + 3 * layer.out_channels
        cin = layer.out_channels
    return ups + 2 * syn


def _arm_floats_per_value(arch: DecoderArch) -> int:
    """Floats (and int32 indices) the ARM keeps per coded value in training."""
    c, d = arch.spatial_context_arm, arch.arm_input_dim
    layers = arch.n_hidden_layers_arm
    # input and its gradient, gather indices (both ways), hidden activations
    # and their gradients, outputs and rate terms
    return 2 * d + d + c + 3 * c * layers + 16


def whole_frame_training_bytes(arch: DecoderArch) -> int:
    """Bytes a whole-frame training iteration may take: an upper bound by this
    model. Measured peaks (mop, 2 threads, resident memory above the process's
    start) were 72 % of it at 512x768 (650 of 899 MB) and 59-70 % at 1024x1536
    (2.1-2.5 of 3.6 GB)."""
    h, w = arch.img_size
    n = arch.n_latent_values()
    return 4 * (h * w * (_synthesis_floats_per_pixel(arch) + 3 * arch.n_out) + n * (_arm_floats_per_value(arch) + 24))


def tiled_fixed_bytes(arch: DecoderArch) -> int:
    """Bytes that do not shrink with tiles: latents with their gradient, optimizer
    state, best copy and quantizer intermediates; target and output images."""
    h, w = arch.img_size
    return 4 * (24 * arch.n_latent_values() + 3 * arch.n_out * h * w)


def default_max_memory() -> int:
    """:data:`DEFAULT_MEMORY_FRACTION` of the machine's physical memory (4 GiB if unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total * DEFAULT_MEMORY_FRACTION)


def plan_tiles(arch: DecoderArch, max_memory: Optional[int], working_set: int = TILE_WORKING_SET,
               force: bool = False) -> Optional[TilePlan]:
    """None (whole frame) when a whole-frame iteration fits ``max_memory``
    (None: the default), else bands and chunks of about ``working_set`` bytes each.

    Frames with a final resize cannot be cut in bands (``tiling.can_split``).
    """
    limit = default_max_memory() if max_memory is None else max_memory
    if not force and whole_frame_training_bytes(arch) <= limit:
        return None
    if not can_split(arch):
        return None
    h, w = arch.img_size
    # Bands share the budget with what they cannot shrink; a tight budget gets small bands.
    working_set = min(working_set, max(MIN_WORKING_SET, (limit - tiled_fixed_bytes(arch)) // 2))
    align = 1 << max(arch.latent_levels)
    row_bytes = 4 * w * (_synthesis_floats_per_pixel(arch) + 3 * arch.n_out)
    rows = max(align, (working_set // max(1, row_bytes)) // align * align)
    # The ARM's autograd keeps more than _arm_floats_per_value per value (laplace_rate's
    # intermediates): a quarter of the working set keeps a chunk inside it.
    chunk = max(1024, working_set // (16 * _arm_floats_per_value(arch)))
    return TilePlan(tuple(tile_bounds(h, rows, align)), int(chunk))


# ---- one band ---------------------------------------------------------------
def band_windows(arch: DecoderArch, plan: TilePlan) -> List[RowWindow]:
    return [plan_rows(arch, y0, y1) for y0, y1 in plan.rows]


def target_rows(planes: Sequence[Tensor], frame_data_type: str, y0: int, y1: int) -> Tuple[Tensor, ...]:
    """Rows ``[y0, y1)`` of FrameData-style plane groups (yuv420 chroma: rows y0/2 to y1/2)."""
    if frame_data_type == "yuv420":
        return (planes[0][..., y0:y1, :], planes[1][..., y0 // 2 : (y1 + 1) // 2, :])
    return (planes[0][..., y0:y1, :],)


def n_samples(planes: Sequence[Tensor]) -> int:
    return sum(p.numel() for p in planes)


def synthesize_rows(cc, dense_rows: Tensor, window: RowWindow) -> Tensor:
    """Synthesis output rows ``window.out_rows`` from the dense rows ``window.dense_rows[0]``."""
    s = window.dense_rows[0][0]
    y0, y1 = window.out_rows
    return cc.synthesis(dense_rows)[:, :, y0 - s : y1 - s]


def synthesize_banded(cc, dense: Tensor, plan: TilePlan) -> Tensor:
    """``cc.synthesis(dense)`` computed band by band (no gradient)."""
    hs = synthesis_halo(cc.arch)
    h, w = dense.shape[-2:]
    out = dense.new_empty(1, cc.arch.n_out, h, w)
    with torch.no_grad():
        for y0, y1 in plan.rows:
            s, e = max(0, y0 - hs), min(h, y1 + hs)
            out[:, :, y0:y1] = cc.synthesis(dense[:, :, s:e])[:, :, y0 - s : y1 - s]
    return out


def render_banded(cc, flat: Tensor, plan: TilePlan) -> Tensor:
    """Synthesis output (1, n_out, H, W) of the flat latents, band by band (no gradient)."""
    grids = cc.synthesis_grids(flat)
    h, w = cc.arch.img_size
    out = flat.new_empty(1, cc.arch.n_out, h, w)
    with torch.no_grad():
        for win in band_windows(cc.arch, plan):
            rows = [g[a:b] for g, (a, b) in zip(grids, win.latent_rows)]
            y0, y1 = win.out_rows
            out[:, :, y0:y1] = synthesize_rows(cc, cc.dense_from_rows(rows, win), win)
    return out


# ---- one training step ------------------------------------------------------
def _rng_state(cc):
    dev = cc._device()
    return torch.cuda.get_rng_state(dev) if dev.type == "cuda" else torch.get_rng_state()


def _set_rng_state(cc, state) -> None:
    dev = cc._device()
    if dev.type == "cuda":
        torch.cuda.set_rng_state(state, dev)
    else:
        torch.set_rng_state(state)


@dataclass(frozen=True)
class TiledStep:
    loss: float
    mse: float
    rate_latent_bits: float


def tiled_backward(frame_encoder, target_planes: Sequence[Tensor], lmbda: float, plan: TilePlan,
                   quantizer_noise_type: str, quantizer_type: str, soft_round_temperature,
                   noise_parameter) -> TiledStep:
    """One training step's forward and backward, band by band and chunk by chunk.

    Accumulates into ``.grad`` what ``loss_function(...).loss.backward()`` would
    (without the network rate term) and returns the loss's parts.
    """
    cc = frame_encoder.coolchic_encoder
    arch = cc.arch
    h, w = arch.img_size
    quant = (quantizer_noise_type, quantizer_type, soft_round_temperature, noise_parameter)
    # The quantizer's graph holds about ten copies of the latents: compute y_hat
    # without it now, and again with it (same noise) for the last backward.
    rng = _rng_state(cc)
    with torch.no_grad():
        y = cc.quantized_flat_latents(*quant)
    grad = torch.zeros_like(y)
    bits = cc.rate_backward(y, lmbda / (h * w), grad)

    n_tot = n_samples(target_planes)
    grids = cc.synthesis_grids(y)
    grid_grads = cc.synthesis_grids(grad)  # views into grad
    sse_total = 0.0
    for win in band_windows(arch, plan):
        rows = [g[a:b].clone().requires_grad_() for g, (a, b) in zip(grids, win.latent_rows)]
        raw = synthesize_rows(cc, cc.dense_from_rows(rows, win), win)
        planes = frame_encoder.postprocess(raw, raw.new_zeros(0)).decoded_planes
        tgt = target_rows(target_planes, arch.frame_data_type, *win.out_rows)
        sse = sum(torch.sum((d - t) ** 2) for d, t in zip(planes, tgt))
        (sse / n_tot).backward()
        sse_total += float(sse.detach())
        for r, gg, (a, b) in zip(rows, grid_grads, win.latent_rows):
            if r.grad is not None:
                gg[a:b] += r.grad
    del grids, grid_grads
    after = _rng_state(cc)
    _set_rng_state(cc, rng)
    flat_hat = cc.quantized_flat_latents(*quant)
    _set_rng_state(cc, after)
    if flat_hat.requires_grad:
        flat_hat.backward(grad)
    mse = sse_total / n_tot
    return TiledStep(mse + lmbda * bits / (h * w), mse, bits)
