"""The ONNX graph of upsampling, synthesis and output clamp for one bitstream.

Built from the architecture in the header and the dequantized weights. Every
shape is static, so onnxruntime plans the whole frame once. The weights (and
the upsampling kernels made from them) are initializers in an exported model;
the runtime builds them as graph inputs instead (``weights_as_inputs``), so
that the graph depends on the architecture and the frame size only and one
onnxruntime session serves every file of that shape: a new file skips the
session's creation and its slower first run. Inputs ``latent_0 .. latent_{N-1}`` (float32 ``[1, 1, h_i, w_i]``,
0 = finest) and, with common randomness, ``cr_0 .. cr_{N-1}``; output
``image``, float32 ``[1, n_out, H, W]`` clamped to [0, 1] (an inter frame: not clamped,
see inter.py).
The maths is ``docs/architecture.md`` sections 3 to 5;
:mod:`decoder_runtime.reference_numpy` is its plain-numpy twin.
"""

from __future__ import annotations

import math
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import onnx_proto
from .arch import DecoderArch, param_layout
from .errors import ConfigError
from .upsampling_kernels import BICUBIC_A, arch_upsampling_kernels

OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17: readable by onnxruntime >= 1.13
PRODUCER = "coolchic.decoder_runtime"


def latent_input_names(n: int) -> List[str]:
    return [f"latent_{i}" for i in range(n)]


def cr_input_names(n: int) -> List[str]:
    return [f"cr_{i}" for i in range(n)]


def check_params(arch: DecoderArch, params: Mapping[str, np.ndarray]) -> None:
    """The upsampling and synthesis tensors of ``arch.param_layout()``, no more, no less."""
    for spec in param_layout(arch):
        if spec.module not in ("upsampling", "synthesis"):
            continue
        if spec.name not in params:
            raise ConfigError(f"parameter {spec.name} is missing")
        shape = tuple(np.shape(params[spec.name]))
        if shape != spec.shape:
            raise ConfigError(f"parameter {spec.name} has shape {shape}, the architecture says {spec.shape}")


class _GraphBuilder:
    """Serialised nodes and initializers, with generated unique names.

    ``weights_as_inputs``: what :meth:`weight` makes are graph inputs
    (``weight_inputs``) whose values go to ``weight_feed``. ``serialize=False``
    only names things (the same names, made in the same order) and fills
    ``weight_feed``: for a graph whose bytes are already known.
    """

    def __init__(self, weights_as_inputs: bool = False, serialize: bool = True) -> None:
        self.nodes: List[bytes] = []
        self.inits: List[bytes] = []
        self.weights_as_inputs = weights_as_inputs
        self.serialize = serialize
        self.weight_inputs: List[bytes] = []
        self.weight_feed: Dict[str, np.ndarray] = {}
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem: str, value, dtype=np.float32) -> str:
        name = self.name(stem)
        if self.serialize:
            self.inits.append(onnx_proto.tensor(name, np.asarray(value, dtype)))
        return name

    def weight(self, stem: str, value) -> str:
        """A float32 tensor made from the bitstream's weights: an initializer, or a graph input."""
        if not self.weights_as_inputs:
            return self.const(stem, value)
        name = self.name(stem)
        a = np.ascontiguousarray(value, np.float32)
        if self.serialize:
            self.weight_inputs.append(onnx_proto.value_info(name, a.shape))
        self.weight_feed[name] = a
        return name

    def op(self, op_type: str, inputs: Sequence[str], stem: Optional[str] = None, **attrs) -> str:
        out = self.name(stem or op_type.lower())
        if self.serialize:
            self.nodes.append(onnx_proto.node(op_type, inputs, [out], out, attrs))
        return out

    def op_multi(self, op_type: str, inputs: Sequence[str], stem: str, n_out: int, **attrs) -> List[str]:
        outs = [self.name(stem) for _ in range(n_out)]
        if self.serialize:
            self.nodes.append(onnx_proto.node(op_type, inputs, outs, outs[0] + "_op", attrs))
        return outs

    # ---- building blocks ---------------------------------------------------
    def pad_edge(self, x: str, top: int, bottom: int, left: int, right: int) -> str:
        if top == bottom == left == right == 0:
            return x
        pads = self.const("pads", [0, 0, top, left, 0, 0, bottom, right], np.int64)
        return self.op("Pad", [x, pads], "pad", mode="edge")

    def slice_hw(self, x: str, h0: int, h: int, w0: int, w: int) -> str:
        starts = self.const("starts", [h0, w0], np.int64)
        ends = self.const("ends", [h0 + h, w0 + w], np.int64)
        axes = self.const("axes", [2, 3], np.int64)
        return self.op("Slice", [x, starts, ends, axes], "crop")


def _depthwise(kernel_1d: np.ndarray, channels: int, vertical: bool) -> np.ndarray:
    k = np.asarray(kernel_1d, np.float32)
    w = k.reshape(1, 1, -1, 1) if vertical else k.reshape(1, 1, 1, -1)
    return np.repeat(w, channels, axis=0)


def _tconv_w_polyphase(g: _GraphBuilder, x: str, channels: int, t: np.ndarray) -> str:
    """The transposed convolution of ``x`` along W, stride 2, kernel ``t`` (even size K), as its two phases.

    ``y[2j + f] = sum_m x[j - m] t[2m + f]`` (m < K/2): for each phase f, a
    Conv (a correlation) with ``reverse(t[f::2])`` on x padded with K/2 - 1
    zeros each side; then the phases interleaved (Unsqueeze, Concat on a new
    last axis, Reshape). The same products, summed in another order (results
    within 1e-6 of ConvTranspose's: kodim01's decoded pixels move by one
    code value at 2 to 5 of 1.18 M places). onnxruntime's ConvTranspose along
    W is 3x slower than along H (its col2im); this form took 8.4-8.6 ms
    against 11.4-11.6 ms for the H and W passes of a 6-channel 512x768
    output, one thread; a new file's session and first run of kodim01's mop
    graph 46.3 against 51.8 ms (medians of 15, interleaved in one process).
    Used on the finest step only it measured the same. The H pass stays a
    ConvTranspose: in polyphase form (two Convs, rows interleaved) the last
    step's H pass took 1.75-1.97 against 2.46-2.52 ms in isolation (6
    channels, 260x388 -> 526x388), about a millisecond a decode, which did
    not pay for moving a few decoded pixels by one code value.
    """
    half = len(t) // 2
    t = np.asarray(t, np.float32)
    axis = g.const("axis", [4], np.int64)
    phases = []
    for f in (0, 1):
        w = g.weight("tconv_w", _depthwise(t[f::2][::-1], channels, False))
        y = g.op("Conv", [x, w], "tconv_w", group=channels, pads=[0, half - 1, 0, half - 1])
        phases.append(g.op("Unsqueeze", [y, axis], "phase"))
    y = g.op("Concat", phases, "interleave", axis=4)
    return g.op("Reshape", [y, g.const("shape", [0, 0, 0, -1], np.int64)], "interleave")


def _upsample_step(g: _GraphBuilder, x: str, channels: int, t: np.ndarray, dst_hw, row_shift: int = 0) -> str:
    """crop(up2(x, t)) for a [B, channels, h, w] tensor, one kernel for all channels.

    ``row_shift``: rows to skip beyond the frame's crop, for a tile
    (``decoder_runtime.tiling``).
    """
    k = len(t)
    pad = math.ceil(k / 4)
    # Padding both axes before both passes equals pad-H/conv-H/pad-W/conv-W:
    # the W-padding columns are copies of the edge column either way.
    x = g.pad_edge(x, pad, pad, pad, pad)
    wh = g.weight("tconv_h", _depthwise(t, channels, True))
    x = g.op("ConvTranspose", [x, wh], "tconv_h", strides=[2, 1], group=channels)
    x = _tconv_w_polyphase(g, x, channels, t)
    c = k // 2 - 1 + 2 * pad
    return g.slice_hw(x, c + row_shift, dst_hw[0], c, dst_hw[1])


def _preconcat(g: _GraphBuilder, x: str, p: np.ndarray) -> str:
    if len(p) == 1:
        # A 1-tap kernel applied along H then W is a gain of p^2.
        gain = np.float32(p[0]) * np.float32(p[0])
        if gain == 1.0 and not g.weights_as_inputs:  # a graph for any weights keeps the Mul
            return x
        return g.op("Mul", [x, g.weight("preconcat_gain", gain)], "preconcat")
    r = len(p) // 2
    x = g.pad_edge(x, r, r, r, r)
    x = g.op("Conv", [x, g.weight("preconcat_h", _depthwise(p, 1, True))], "preconcat_h")
    return g.op("Conv", [x, g.weight("preconcat_w", _depthwise(p, 1, False))], "preconcat_w")


def _final_resize(g: _GraphBuilder, x: str, channels: int, src_hw, dst_hw, mode: str) -> str:
    if mode == "nearest":
        # torch's nearest is floor(dst * (float)in/out); gathering with indices
        # computed here in float32 reproduces it exactly, which Resize's own
        # coordinate arithmetic does not promise.
        for axis, (n, out) in ((2, (src_hw[0], dst_hw[0])), (3, (src_hw[1], dst_hw[1]))):
            scale = np.float32(n) / np.float32(out)
            idx = np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64), n - 1)
            x = g.op("Gather", [x, g.const("nearest_idx", idx, np.int64)], "nearest", axis=axis)
        return x
    sizes = g.const("sizes", [1, channels, dst_hw[0], dst_hw[1]], np.int64)
    return g.op(
        "Resize",
        [x, "", "", sizes],
        "resize",
        mode="linear" if mode == "bilinear" else "cubic",
        coordinate_transformation_mode="half_pixel",
        cubic_coeff_a=BICUBIC_A,
        exclude_outside=0,
    )


# Rows per stripe of the leading 1x1 synthesis layers. Measured on the mop
# graph at 512x768, one thread: whole frame 62 ms first run / 26 ms warm;
# 64-row stripes 39 / 22 ms (8 to 128 rows all within 2 ms of that).
STRIPE_ROWS = 64


def _layer(g: _GraphBuilder, weights: Dict[int, tuple], params, i: int, layer, x: str) -> str:
    r = layer.kernel_size // 2
    if i not in weights:  # one initializer per layer, however many stripes use it
        w = params[f"synthesis.layers.{i}.weight"]
        if layer.residual:
            # conv(x, W) + x = conv(x, W + I at the centre tap): one pass fewer
            # over the frame (an Add per residual layer: 2.3 and 1.5 ms of a
            # 640x272 B frame's 37.6), and the Relu fuses into the Conv. The
            # sum's order changes, within float32 rounding.
            w = np.array(w, np.float32)
            c = np.arange(w.shape[0])
            w[c, c, r, r] += np.float32(1.0)
        weights[i] = (
            g.weight(f"synthesis_{i}_weight", w),
            g.weight(f"synthesis_{i}_bias", params[f"synthesis.layers.{i}.bias"]),
        )
    y = g.op("Conv", [g.pad_edge(x, r, r, r, r), *weights[i]], f"synthesis_{i}")
    if layer.relu:
        y = g.op("Relu", [y], f"relu_{i}")
    return y


def _synthesis(g: _GraphBuilder, arch: DecoderArch, params: Mapping[str, np.ndarray], x: str, height: int) -> str:
    inp = x
    weights: Dict[int, tuple] = {}
    layers = list(enumerate(arch.layers_synthesis))
    n_pointwise = 0
    while n_pointwise < len(layers) and layers[n_pointwise][1].kernel_size == 1:
        n_pointwise += 1
    if STRIPE_ROWS and n_pointwise and height > STRIPE_ROWS:
        # The leading 1x1 layers are the widest (e.g. 32 channels) and need no
        # neighbours: run them stripe by stripe, so that their activations stay
        # small and reused instead of a full-frame tensor that a one-shot
        # decode must page-fault in (50 MB at 512x768).
        rows = [STRIPE_ROWS] * (height // STRIPE_ROWS) + ([height % STRIPE_ROWS] if height % STRIPE_ROWS else [])
        parts = g.op_multi("Split", [x, g.const("split", rows, np.int64)], "stripe", len(rows), axis=2)
        outs = []
        for part in parts:
            for i, layer in layers[:n_pointwise]:
                part = _layer(g, weights, params, i, layer, part)
            outs.append(part)
        x = g.op("Concat", outs, "stripes", axis=2)
        layers = layers[n_pointwise:]
    for i, layer in layers:
        x = _layer(g, weights, params, i, layer, x)
    if arch.linear_stabiliser_synth:
        w = g.weight("stabiliser_weight", params["synthesis.stabiliser.weight"])
        s = g.op("Conv", [inp, w], "stabiliser")
        x = g.op("Add", [x, s], "stabilised")
    return x


# Serialised graphs with the weights as inputs, by (architecture, window):
# as many as the session cache holds (ort_session), oldest dropped first.
_MODEL_BYTES_KEPT = 8
_model_bytes: Dict[tuple, bytes] = {}
_model_bytes_lock = threading.Lock()


def build_decoder_model_bytes(arch: DecoderArch, params: Mapping[str, np.ndarray], window=None) -> bytes:
    """The serialised ModelProto of :func:`build_decoder_model`, built without ``onnx``.

    ``window``: a :class:`decoder_runtime.tiling.RowWindow`, for the graph of
    one tile of rows (inputs: the window's latent rows; output: its
    ``out_rows``); None for the whole frame.
    """
    return build_decoder_graph(arch, params, window)[0]


def build_decoder_graph(arch: DecoderArch, params: Mapping[str, np.ndarray], window=None,
                        weights_as_inputs: bool = False) -> Tuple[bytes, Dict[str, np.ndarray]]:
    """:func:`build_decoder_model_bytes`, and the feed of the weight inputs.

    With ``weights_as_inputs`` the weights are graph inputs, returned as the
    feed to add to :func:`input_feed`'s: the bytes then depend only on the
    architecture and ``window``, never on the weights, and are serialised once
    per (architecture, window) (the serialisation is most of the 2.7 ms a
    build of kodim01's mop graph takes). Otherwise they are initializers and
    the feed is empty.
    """
    from .tiling import whole_window

    check_params(arch, params)
    key = (arch, window)
    known = _model_bytes.get(key) if weights_as_inputs else None
    g = _GraphBuilder(weights_as_inputs, serialize=known is None)
    full = arch.latent_grid_sizes()
    n = len(full)
    win = whole_window(arch) if window is None else window
    if len(win.latent_rows) != n:
        raise ConfigError(f"a window of {len(win.latent_rows)} grids for {n} latent grids")
    sizes = [(b - a, w) for (a, b), (_, w) in zip(win.latent_rows, full)]
    dense = [(b - a, w) for (a, b), (_, w) in zip(win.dense_rows, full)]
    cr = arch.flag_common_randomness
    lat_names = latent_input_names(n)
    inputs = [onnx_proto.value_info(nm, [1, 1, *sz]) for nm, sz in zip(lat_names, sizes)]
    if cr:
        cr_names = cr_input_names(n)
        inputs += [onnx_proto.value_info(nm, [1, 1, *sz]) for nm, sz in zip(cr_names, sizes)]
        # Latents and noise share every kernel: run them as a batch of two.
        grids = [g.op("Concat", [a, b], "with_cr", axis=0) for a, b in zip(lat_names, cr_names)]
    else:
        grids = list(lat_names)

    kernels = arch_upsampling_kernels(arch, params)
    x = grids[-1]
    for lv in range(n - 2, -1, -1):
        t, p = kernels[lv]
        # Row offsets of a tile (all zero for the whole frame): tiling.py.
        s, e = win.dense_rows[lv]
        x = _upsample_step(g, x, n - 1 - lv, t, dense[lv], s - 2 * win.dense_rows[lv + 1][0])
        pre = _preconcat(g, grids[lv], p)
        if (s, e) != win.latent_rows[lv]:
            pre = g.slice_hw(pre, s - win.latent_rows[lv][0], e - s, 0, dense[lv][1])
        x = g.op("Concat", [pre, x], f"dense_{lv}", axis=1)
    if cr:
        # [2, N, h, w] -> [1, 2N, h, w]: latent channels first, then the noise.
        shape = g.const("shape", [1, 2 * n, *dense[0]], np.int64)
        x = g.op("Reshape", [x, shape], "dense")
    out_hw = arch.img_size
    if arch.latent_resolution[0] > 0:
        if window is not None:
            raise ConfigError("a frame with a final resize is not split into tiles")
        x = _final_resize(g, x, arch.synthesis_in_channels, sizes[0], arch.img_size, arch.final_upsampling_type)
        x = _synthesis(g, arch, params, x, arch.img_size[0])
    else:
        x = _synthesis(g, arch, params, x, dense[0][0])
        y0, y1 = win.out_rows
        out_hw = (y1 - y0, arch.img_size[1])
        if (y0, y1) != win.dense_rows[0]:
            x = g.slice_hw(x, y0 - win.dense_rows[0][0], y1 - y0, 0, out_hw[1])
    if known is not None:
        return known, g.weight_feed
    if arch.is_inter:
        # Residue and motion: combined with the references (inter.py) before any clamp.
        g.nodes.append(onnx_proto.node("Identity", [x], ["image"], "image", {}))
    else:
        lo = g.const("zero", np.float32(0.0))
        hi = g.const("one", np.float32(1.0))
        g.nodes.append(onnx_proto.node("Clip", [x, lo, hi], ["image"], "image", {}))
    out = onnx_proto.value_info("image", [1, arch.n_out, *out_hw])
    model = onnx_proto.model(g.nodes, g.inits, inputs + g.weight_inputs, [out], "coolchic_decoder", OPSET,
                             IR_VERSION, PRODUCER)
    if weights_as_inputs:
        with _model_bytes_lock:
            _model_bytes[key] = model
            while len(_model_bytes) > _MODEL_BYTES_KEPT:
                _model_bytes.pop(next(iter(_model_bytes)))
    return model, g.weight_feed


def build_decoder_model(arch: DecoderArch, params: Mapping[str, np.ndarray]):
    """``onnx.ModelProto`` computing the clamped synthesis output from the latents.

    ``params`` maps the names of ``arch.param_layout()`` to float32 arrays of
    the listed shapes; ARM and IFCE entries, if present, are ignored. With
    ``static_upsampling_kernel`` the upsampling entries are not needed.
    The runtime itself uses :func:`build_decoder_model_bytes` and never loads
    ``onnx``; this form is for inspection, export and tests.
    """
    import onnx

    return onnx.ModelProto.FromString(build_decoder_model_bytes(arch, params))


def input_feed(arch: DecoderArch, latents: Sequence[np.ndarray], noise: Sequence[np.ndarray] = ()) -> Dict[str, np.ndarray]:
    """The feed of :func:`build_decoder_model`'s inputs: float32 ``[1, 1, h, w]`` arrays."""
    sizes = arch.latent_grid_sizes()
    if len(latents) != len(sizes):
        raise ConfigError(f"expected {len(sizes)} latent grids, got {len(latents)}")
    feed = {}
    for name, y, sz in zip(latent_input_names(len(sizes)), latents, sizes):
        if tuple(np.shape(y)[-2:]) != tuple(sz):
            raise ConfigError(f"{name} has shape {np.shape(y)}, expected {sz}")
        feed[name] = np.asarray(y, np.float32).reshape(1, 1, *sz)
    if arch.flag_common_randomness:
        for name, y, sz in zip(cr_input_names(len(sizes)), noise, sizes):
            feed[name] = np.asarray(y, np.float32).reshape(1, 1, *sz)
    return feed
