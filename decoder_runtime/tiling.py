"""Tiles of rows: upsampling and synthesis of a large frame, a band of rows at a time.

The graph of ``onnx_graph.py`` is local: an output row depends on a few rows
of the synthesis input, which depend on a few rows of each latent grid. A
tile of output rows ``[y0, y1)`` is computed exactly, without the rest of
the frame, by a graph fed with the rows of each grid it needs, computing at
each level only the rows the next finer level needs. Memory then grows with
the tile, not with the frame.

Rows needed, from the finest level down (full-width tiles: columns are
untouched). With ``hs = sum(kernel // 2)`` over the synthesis layers, the
synthesis input (the dense tensor of level 0) needs rows

    D_0 = [y0 - hs, y1 + hs)

and, for a dense range ``D_i = [s, e)`` of level ``i``, the preconcatenation
filter (radius ``r = kp // 2``) needs latent rows ``[s - r, e + r)`` of grid
``i``, and the transposed convolution of level ``i + 1`` (kernel ``k``, edge
padding ``p = ceil(k / 4)``, crop ``c = k // 2 - 1 + 2p``) needs dense rows

    D_{i+1} = [ceil((s + c - k + 1) / 2) - p, floor((e - 1 + c) / 2) - p + 1)

since output row ``o`` of a stride-2 transposed convolution reads the padded
input rows ``j`` with ``2j <= o + c <= 2j + k - 1``. Every range is clipped to
its grid: where a tile reaches the frame's edge, its own edge padding is the
frame's, so the values agree there too. Inside the graph, the upsampled
rows of a dense range starting at ``S`` are cut from offset ``s + c - 2S``.

With a final resize (``latent_resolution`` low above 0) the resize's scale
depends on the frame's size, so such frames are not split.

Up to float summation order (onnxruntime may pick another convolution
algorithm for another shape) a tile's values are the whole frame's: the
integer output differs by at most one code value, where a value sits on a
rounding boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .arch import DecoderArch

Rows = Tuple[int, int]


@dataclass(frozen=True)
class RowWindow:
    """The rows one tile's graph reads and computes, per latent grid (finest first).

    ``latent_rows[i]``: rows of grid ``i`` fed to the graph; ``dense_rows[i]``:
    rows of level ``i``'s dense tensor it computes (``dense_rows[0]`` is the
    synthesis input); ``out_rows``: the output rows kept.
    """

    latent_rows: Tuple[Rows, ...]
    dense_rows: Tuple[Rows, ...]
    out_rows: Rows

    @property
    def is_whole(self) -> bool:
        return all(d == l for d, l in zip(self.dense_rows, self.latent_rows)) and self.out_rows == self.dense_rows[0]


def synthesis_halo(arch: DecoderArch) -> int:
    """Rows of synthesis input an output row depends on, on each side."""
    return sum(layer.kernel_size // 2 for layer in arch.layers_synthesis)


def can_split(arch: DecoderArch) -> bool:
    """Whether the frame may be computed in tiles (no final resize: see the module docstring)."""
    return arch.latent_resolution[0] == 0


def plan_rows(arch: DecoderArch, y0: int, y1: int) -> RowWindow:
    """The :class:`RowWindow` of output rows ``[y0, y1)``."""
    sizes = arch.latent_grid_sizes()
    n = len(sizes)
    h0 = sizes[0][0]
    if not (can_split(arch) and 0 <= y0 < y1 <= h0):
        raise ValueError(f"rows [{y0}, {y1}) of a {arch.img_size} frame cannot be a tile")
    k = arch.ups_k_size
    pad = math.ceil(k / 4)
    c = k // 2 - 1 + 2 * pad
    r = arch.ups_preconcat_k_size // 2
    hs = synthesis_halo(arch)
    s, e = max(0, y0 - hs), min(h0, y1 + hs)
    dense: List[Rows] = []
    latent: List[Rows] = []
    for i in range(n):
        h = sizes[i][0]
        dense.append((s, e))
        if i == n - 1:
            latent.append((s, e))  # the coarsest grid is its own dense tensor
            break
        latent.append((max(0, s - r), min(h, e + r)))
        h_next = sizes[i + 1][0]
        s, e = (max(0, -(-(s + c - k + 1) // 2) - pad), min(h_next, (e - 1 + c) // 2 - pad + 1))
    return RowWindow(tuple(latent), tuple(dense), (y0, y1))


def whole_window(arch: DecoderArch) -> RowWindow:
    """The window of the whole frame: every grid whole."""
    rows = tuple((0, h) for h, _ in arch.latent_grid_sizes())
    return RowWindow(rows, rows, (0, arch.latent_grid_sizes()[0][0]))


def tile_bounds(height: int, rows: int, align: int) -> List[Rows]:
    """Output tiles of ``rows`` rows (rounded up to ``align``, the last one shorter)."""
    rows = max(align, -(-rows // align) * align)
    return [(y, min(height, y + rows)) for y in range(0, height, rows)]


# Rows of the smallest band reconstruct_bands gives a thread, so that the halo
# (kodim01 mop: 2 rows of synthesis input and 3 of the next level per band
# edge, fewer rows at coarser levels) stays a small part of a band's work.
# Not tuned: bands measured so far are of 256 rows.
MIN_BAND_ROWS = 128


def parallel_bands(arch: DecoderArch, n: int) -> List[Rows]:
    """Output rows of up to ``n`` bands of about equal height for ``n`` threads, or [] (one band).

    Bands are multiples of the coarsest grid's stride (:func:`tile_bounds`)
    and at least :data:`MIN_BAND_ROWS` rows.
    """
    h = arch.img_size[0]
    if n < 2 or not can_split(arch):
        return []
    align = 1 << max(arch.latent_levels)
    n = min(n, h // max(MIN_BAND_ROWS, align))
    if n < 2:
        return []
    bands = tile_bounds(h, -(-h // n), align)
    return bands if len(bands) > 1 and all(b - a >= MIN_BAND_ROWS for a, b in bands) else []


def tile_rows_for(arch: DecoderArch, budget_bytes: int) -> Optional[int]:
    """Output rows per tile so that a tile's graph stays within ``budget_bytes``, or None (whole frame).

    The graph's memory per row is that of the whole frame
    (:func:`decoder_runtime.budget.graph_bytes`); rows are a multiple of the
    coarsest grid's stride, so that every tile but the first and the last
    has the same graph.
    """
    from .budget import graph_bytes

    h, w = arch.img_size
    if not can_split(arch):
        return None
    whole = graph_bytes(arch)
    if whole <= budget_bytes:
        return None
    align = 1 << max(arch.latent_levels)
    n = -(-whole // budget_bytes)  # tiles, then rows shared evenly among them
    rows = -(-h // n)
    return -(-rows // align) * align


# The graph of a tile may hold this much before a frame is split: a 512x768
# mop frame (about 110 MiB by budget.py) stays whole, a 6 Mpixel one is split.
TILE_GRAPH_BUDGET = 192 << 20


def tile_key(arch: DecoderArch, w: RowWindow) -> tuple:
    """Windows with equal keys have equal graphs: rows relative to the tile's start at each level."""
    y0 = w.out_rows[0]
    rel = []
    for i, lv in enumerate(arch.latent_levels):
        base = y0 >> lv
        rel.append((w.latent_rows[i][0] - base, w.latent_rows[i][1] - base,
                    w.dense_rows[i][0] - base, w.dense_rows[i][1] - base))
    return tuple(rel), w.out_rows[1] - y0


def tile_feed(arch: DecoderArch, w: RowWindow, latents, noise_seed: Optional[int]) -> dict:
    """The graph inputs of one tile: the window's rows of each grid (and of its noise)."""
    import numpy as np

    from .common_randomness import noise_rows
    from .onnx_graph import cr_input_names, latent_input_names

    sizes = arch.latent_grid_sizes()
    names = latent_input_names(len(sizes))
    feed = {}
    for i, ((a, b), (_, gw)) in enumerate(zip(w.latent_rows, sizes)):
        feed[names[i]] = np.ascontiguousarray(latents[i][a:b], np.float32).reshape(1, 1, b - a, gw)
    if noise_seed is not None:
        for i, (name, (a, b), (_, gw)) in enumerate(zip(cr_input_names(len(sizes)), w.latent_rows, sizes)):
            feed[name] = noise_rows(noise_seed, i, gw, a, b).reshape(1, 1, b - a, gw)
    return feed
