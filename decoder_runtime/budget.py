"""Decoding resource budget: the memory a bitstream's header commits a decoder to.

``max_pixels`` bounds pixels, not memory: a file of about 100 KB can describe a
256-channel synthesis on 16 Mpixels (tens of GB of activations) or tens of
millions of network parameters. :func:`estimate_memory` computes, from the
architecture alone and before anything is allocated in proportion to it, an
upper bound of the memory one decode needs; :func:`check_memory` refuses a
bitstream whose bound exceeds the caller's ``max_memory`` with a
:class:`ResourceLimitError` naming the figures.

The bound follows the stages of a decode, each counted at its peak:

* the file itself (the bytes, the substreams cut out of them, and the
  latent decoder's joined buffer);
* the network parameters, from the integers in the parameter section to the
  weights fed to the onnxruntime session (graph inputs; initializers in an
  exported model);
* latent decoding: every decoded grid (int32), plus for the grid being decoded
  its zero-bordered int64 copy, its int64 IFCE features, and the decoder's work
  arrays (the stripes' skewed copies: ``rows * (w + slope * rows)`` values a
  stripe, so one substream on a tall, narrow grid costs far more than its
  latents);
* upsampling and synthesis: the float32 inputs fed to onnxruntime, then the
  largest set of tensors alive at once in the graph of ``onnx_graph.py``
  (with onnxruntime's unfolding buffer of a transposed convolution), then the
  output and its conversion to integer planes.

The graph walk mirrors :func:`decoder_runtime.onnx_graph.build_decoder_model_bytes`
(stripes of the leading 1x1 layers, padding, residual adds); the measured
peaks it bounds are in ``bench/decode_memory.py``. A change in the graph's
structure must be reflected here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Optional, Union

from .arch import DecoderArch, param_layout
from .errors import ConfigError, ResourceLimitError

# 4 GiB: a 16.7 Mpixel frame (the default max_pixels) with any of the shipped
# decoder configurations (vlop .. vhop) stays below it; see README "Decode".
DEFAULT_MAX_MEMORY = 4 << 30
F32 = 4
# Bytes held per network parameter at the peak: int32 in the parameter
# section's decode, float32 dequantized, float32 in the weight feed (the
# tiled path: in the serialized model, and a transient copy while it is
# joined), and onnxruntime's copies of a graph input or initializer. Counted
# as for initializers, the larger case.
PARAM_BYTES = 28
# The file's bytes, the substreams sliced out of them, and the joined buffer
# of the latent decoder.
STREAM_COPIES = 3
# onnxruntime's CPU arena grows by regions of doubling size, so the memory it
# touches can reach twice the tensors alive at once. Measured without the
# arena, the graph's peaks match the walk below within 2 %; with it, they
# are 1.1 to 1.5 times the walk (bench/decode_memory.py).
GRAPH_SLACK = 2.0
# Allocations of a decode that do not grow with the frame: the session's
# kernels and plan, the latent decoder's small buffers, Python objects.
# (Not counted: the ~190 MB of numba, onnxruntime and numpy themselves, loaded
# once per process.)
FIXED_BYTES = 8 << 20


@dataclass(frozen=True)
class MemoryEstimate:
    """Upper bounds, in bytes, of what one decode of an architecture holds."""

    total: int
    stream: int  # the file's bytes and their copies
    params: int  # network parameters in all their forms
    latents: int  # peak of the latent decoding stage
    graph: int  # peak of the upsampling and synthesis stage
    n_params: int
    n_latents: int
    widest: int  # largest channel count of a tensor of the graph
    pixels: int

    def describe(self) -> str:
        return (
            f"about {format_bytes(self.total)} ({self.pixels} pixels, up to {self.widest} channels: "
            f"{format_bytes(self.graph)} for upsampling and synthesis, {format_bytes(self.latents)} for "
            f"{self.n_latents} latents; {self.n_params} network parameters: {format_bytes(self.params)}; "
            f"file and copies: {format_bytes(self.stream)})"
        )


def format_bytes(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: Union[str, int]) -> int:
    """Bytes from ``"4G"``, ``"512M"``, ``"1.5GiB"``, ``"300000"`` or an int.

    Suffixes K, M, G, T are powers of 1024, with or without a trailing ``B``
    or ``iB``. :class:`ConfigError` on anything else or on a value below 1.
    """
    if isinstance(text, bool):
        raise ConfigError(f"a memory size must be a number of bytes or a string like '4G', got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ConfigError(f"memory size {text!r}: expected bytes or a number with K, M, G or T (e.g. 512M, 4G)")
        mult = 1 << (10 * " kmgt".index(m.group(2).lower() or " "))
        value = int(float(m.group(1)) * mult)
    if value < 1:
        raise ConfigError(f"memory size must be at least 1 byte, got {text!r}")
    return value


def _walk_graph(arch: DecoderArch, stripe_rows: int):
    """Peak float32 elements alive at once in the decoder graph, and the widest tensor's channels.

    Each step lists the tensors that one node of the graph reads and writes
    while ``held`` ones stay alive too. The inputs themselves are the
    caller's numpy arrays, counted apart.
    """
    b = 2 if arch.flag_common_randomness else 1
    sizes = arch.latent_grid_sizes()
    n = len(sizes)
    hw = [h * w for h, w in sizes]
    # With common randomness, each level's latent and noise are first
    # concatenated into a batch of two, all levels before the upsampling.
    held = 2 * sum(hw) if b == 2 else 0
    peak = held
    widest = 1
    k = arch.ups_k_size
    kp = arch.ups_preconcat_k_size
    for lv in range(n - 2, -1, -1):
        c = n - 1 - lv
        h, w = sizes[lv + 1]
        p = math.ceil(k / 4)
        hp, wp = h + 2 * p, w + 2 * p
        th = 2 * (hp - 1) + k  # rows after the vertical transposed convolution
        tw = 2 * (wp - 1) + k
        x = b * c * h * w
        xp = b * c * hp * wp
        t_h = b * c * th * wp
        t_w = b * c * th * tw
        # onnxruntime's ConvTranspose unfolds one group's input times the kernel.
        col_h = k * hp * wp
        col_w = k * th * wp
        r = kp // 2
        pre = 3 * b * (sizes[lv][0] + 2 * r) * (sizes[lv][1] + 2 * r)
        sl = b * c * hw[lv]
        cat = b * (c + 1) * hw[lv]
        peak = max(peak, held + x + xp, held + xp + t_h + col_h, held + t_h + t_w + col_w, held + t_w + sl,
                   held + sl + pre + cat)
        widest = max(widest, c + 1)
    cin = arch.synthesis_in_channels
    img_h, img_w = arch.img_size
    pix = img_h * img_w
    x = cin * hw[0]
    if arch.latent_resolution[0] > 0:
        peak = max(peak, held + x + cin * pix)
    x = cin * pix
    widest = max(widest, cin)
    # The synthesis input stays alive to the end with a stabiliser.
    keep = x if arch.linear_stabiliser_synth else 0
    layers = list(arch.layers_synthesis)
    n_pw = 0
    while n_pw < len(layers) and layers[n_pw].kernel_size == 1:
        n_pw += 1
    if stripe_rows and n_pw and img_h > stripe_rows:
        # Split copies the input into stripes at once; stripe outputs pile up
        # until the Concat, while each stripe's chain needs its own temporaries.
        chain, c_in = 0, cin
        for layer in layers[:n_pw]:
            chain = max(chain, (2 * c_in + 2 * layer.out_channels) * stripe_rows * img_w)
            c_in = layer.out_channels
            widest = max(widest, c_in)
        c_np = c_in
        peak = max(peak, held + keep + x + max(cin, c_np) * pix + chain, held + keep + 2 * c_np * pix)
        x = c_np * pix
        prev = x  # the stripes the Concat joined
        c_cur = c_np
        layers = layers[n_pw:]
    else:
        prev = 0
        c_cur = cin
    for layer in layers:
        r = layer.kernel_size // 2
        padded = c_cur * (img_h + 2 * r) * (img_w + 2 * r) if r else 0
        y = layer.out_channels * pix
        if layer.residual:
            # Measured: the input (kept for the add), its padded copy, the
            # convolution's output and the add's are alive at once.
            live = x + padded + 2 * y
        else:
            # The input dies once padded; a ReLU runs in place.
            live = max(x + padded, padded + y) if r else x + y
        # Measured: onnxruntime may keep the tensor x was made from (e.g. the
        # stripes a Concat joined) alive through the next layer.
        peak = max(peak, held + keep + prev + live)
        prev = x
        x = y
        c_cur = layer.out_channels
        widest = max(widest, c_cur)
    if arch.linear_stabiliser_synth:
        peak = max(peak, held + keep + x + 2 * arch.n_out * pix)
    peak = max(peak, held + x + arch.n_out * pix)  # Clip
    return peak, widest


def graph_bytes(arch: DecoderArch, stripe_rows: Optional[int] = None) -> int:
    """Upper bound of what onnxruntime holds running the whole frame's graph (arena slack included)."""
    if stripe_rows is None:
        from .onnx_graph import STRIPE_ROWS

        stripe_rows = STRIPE_ROWS
    graph_el, _ = _walk_graph(arch, stripe_rows)
    return int(GRAPH_SLACK * F32 * graph_el)


def estimate_memory(arch: DecoderArch, n_bytes: int = 0, stripe_rows: Optional[int] = None,
                    n_substreams: int = 1) -> MemoryEstimate:
    """Upper bound of the bytes a decode of ``arch`` from a file of ``n_bytes`` in
    ``n_substreams`` latent substreams holds at its peak.

    A frame large enough to be computed in tiles of rows (``tiling.py``) is
    counted as such: the graph, its inputs and its float output are a tile's,
    the integer output planes the whole frame's.
    """
    from .latent_codec import workspace_bytes_bound
    from .tiling import TILE_GRAPH_BUDGET, synthesis_halo, tile_rows_for

    if stripe_rows is None:
        from .onnx_graph import STRIPE_ROWS

        stripe_rows = STRIPE_ROWS
    h, w = arch.img_size
    pix = h * w
    n_params = sum(p.size for p in param_layout(arch))
    grids = arch.coded_grids()
    n_latents = sum(g.h * g.w for g in grids)
    stream = STREAM_COPIES * int(n_bytes)
    params = PARAM_BYTES * n_params
    decoded = 4 * n_latents  # int32 grids, referenced until the end of decode()
    # The grid being decoded: its int64 bordered copies (a stripe each, 4
    # rows and 8 columns of border) and its int64 IFCE features, while the
    # previous grid's features are still referenced (measured: two grids'
    # worth at level 0).
    n_sub_rows = 4 * 64  # at most 64 substreams, 4 border rows each
    lat_stage = decoded + max(8 * (g.h + n_sub_rows) * (g.w + 8) for g in grids) + 2 * max(
        8 * arch.ifce_features * g.h * g.w + 4 * len(g.ifce_stack) * g.h * g.w for g in grids
    )
    # The latent decoder's work arrays: the stripes' skewed copies grow with the
    # square of a stripe's rows (latent_codec.workspace_bytes_bound).
    lat_stage += workspace_bytes_bound(arch, n_substreams)
    _, widest = _walk_graph(arch, stripe_rows)
    tile_rows = tile_rows_for(arch, TILE_GRAPH_BUDGET)
    # What the graph runs on: the whole frame, or a tile with its halo (the
    # coarse grids' rows reach a little further: 2 strides of the coarsest).
    run = arch
    planes = 0
    if tile_rows:
        halo = 2 * synthesis_halo(arch) + 2 * (1 << max(arch.latent_levels))
        run = replace(arch, img_size=(min(h, tile_rows + halo), w))
        # The integer planes, filled tile by tile.
        planes = (1 if arch.bitdepth <= 8 else 2) * pix * arch.n_out
    run_pix = run.img_size[0] * run.img_size[1]
    # The float32 inputs (latents and noise), held by the caller through the run.
    feed = F32 * sum(a * b for a, b in run.latent_grid_sizes()) * (2 if arch.flag_common_randomness else 1)
    # Common randomness: the generator's uint64 counters and temporaries on the largest grid.
    noise = 40 * run_pix if arch.flag_common_randomness else 0
    out = F32 * arch.n_out * run_pix
    # After the run: the output, its clipped float32 copy and the integer planes.
    post = 2 * out + 2 * arch.n_out * run_pix
    graph_stage = decoded + planes + feed + max(noise, graph_bytes(run, stripe_rows), out + post)
    total = FIXED_BYTES + stream + params + max(lat_stage, graph_stage)
    return MemoryEstimate(total, stream, params, lat_stage, graph_stage, n_params, n_latents, widest, pix)


def check_memory(arch: DecoderArch, n_bytes: int, max_memory: Optional[int], n_substreams: int = 1,
                 held: int = 0) -> MemoryEstimate:
    """:func:`estimate_memory`, refused with :class:`ResourceLimitError` above ``max_memory`` (None: no limit).

    ``held``: bytes the caller already holds and keeps through this decode (what
    ``video.decode_video`` keeps of earlier frames), counted against the same limit."""
    est = estimate_memory(arch, n_bytes, n_substreams=n_substreams)
    if max_memory is not None and est.total + held > max_memory:
        raise ResourceLimitError(
            f"decoding this {arch.img_size[0]}x{arch.img_size[1]} bitstream needs {est.describe()}"
            f"{_held_clause(held)}, above the memory limit of {format_bytes(max_memory)} (raise it with "
            f"decode(..., max_memory=...) or coolchic-decode --max-memory, e.g. --max-memory "
            f"{_suggest(est.total + held)})"
        )
    return est


def _held_clause(held: int) -> str:
    return f", and {format_bytes(held)} more for the frames a sequence decoder keeps and this frame's motion" \
        if held else ""


# float32 planes per pixel of a P or B frame's motion towards each of its references, which
# the sequence decoder keeps for later direct B frames and B frames with derived motion
# (decoder_runtime/video.py; a dense reference adds one plane per output plane).
MOTION_F32_PLANES_PER_REF = 2
# float32 planes per pixel of a B frame's derived motion (decoder_runtime/direct.py: v0 and v1),
# held through that frame's decode.
DERIVED_MOTION_F32_PLANES = 4


def inter_frame_extra_bytes(height: int, width: int, n_planes: int, n_refs: int, n_new_dense: int,
                            derived: bool) -> int:
    """Bytes a P or B frame's decode allocates beyond its graph's estimate: the dense copies of
    ``n_new_dense`` references not yet held, its motion towards its ``n_refs`` references, and a
    derived motion offset."""
    planes = n_planes * n_new_dense + MOTION_F32_PLANES_PER_REF * n_refs
    planes += DERIVED_MOTION_F32_PLANES if derived else 0
    return F32 * height * width * planes


# float32 planes a direct B frame holds per pixel at its peak (decoder_runtime/direct.py):
# the source's field and its scaled copy, g, v0 and v1 (2 each), the B frame's synthesis
# output (planes + 6) and the combined frame (planes), then its integer planes (1 each).
DIRECT_FRAME_F32_PLANES = 10


def check_direct_frame_memory(height: int, width: int, n_planes: int, max_memory: Optional[int],
                              held: int = 0) -> int:
    """The bytes one direct B frame's decode holds, refused above ``max_memory`` (None: no limit)
    with the ``held`` bytes of the frames the sequence decoder keeps (:func:`check_memory`)."""
    n = height * width * F32 * (DIRECT_FRAME_F32_PLANES + 3 * n_planes)
    if max_memory is not None and n + held > max_memory:
        raise ResourceLimitError(
            f"decoding a {height}x{width} direct B frame needs about {format_bytes(n)}{_held_clause(held)}, "
            f"above the memory limit of {format_bytes(max_memory)} (raise it with decode_video(..., "
            f"max_memory=...) or coolchic-decode --max-memory, e.g. --max-memory {_suggest(n + held)})"
        )
    return n


def _suggest(n: int) -> str:
    g = -(-n // (1 << 30))
    return f"{g}G"
