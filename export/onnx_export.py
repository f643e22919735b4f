"""ONNX export of a trained model's decoder side: upsampling, synthesis and the
output clamp, with the model's current (quantized) weights.

Role: give a user one self-contained ``.onnx`` file per bitstream that any ONNX
runtime can run, from the decoded latent grids to the image. It computes what
the runtime's own graph (:func:`decoder_runtime.onnx_graph.build_decoder_model`)
computes, with the same input and output names:

* inputs ``latent_0 .. latent_{N-1}``: float32 ``[1, 1, h_i, w_i]``, grid 0 the
  finest, holding the decoded integer latents ``y_hat``;
* with common randomness, also ``cr_0 .. cr_{N-1}`` (same shapes): the noise
  grids of :func:`decoder_runtime.common_randomness.noise_grid` for the seed
  recorded in the file's metadata;
* output ``image``: float32 ``[1, n_out, H, W]`` in ``[0, 1]``.

The maths is ``docs/architecture.md`` sections 3 to 5. The exported module
(:class:`DecoderGraph`) holds a copy of the model's own synthesis module and
the full upsampling kernels built from the model's ``upsampling.*`` halves; the
upsampling itself is written with plain depthwise (transposed) convolutions.
Tracing the encoder's training implementation instead (rows interleaved into
channel lanes for oneDNN) gives the same numbers but a file of ~1800 nodes of
Reshape/Transpose and shape arithmetic, against ~80 here (mop, 512x768).
``tests/test_onnx_export.py`` checks the three forms (encoder forward,
exported file, runtime graph) against each other.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``,
which torch 2.13 still ships (deprecated). Measured on mop at 512x768 it
exports in 0.2-0.3 s; the ``torch.export``-based one (``dynamo=True``) takes
0.9 s, 3-6 s for the first export of a process, needs ``onnxscript`` (not a
dependency of this project) and cannot emit less than opset 18 (its
down-conversion of Pad fails), while the runtime graph and the default here
are opset 17. The TorchScript exporter leaves the pad amounts and resize sizes
as small shape-arithmetic subgraphs; :func:`fold_small_constants` turns them
into initializers, so the file holds only Pad, Conv, ConvTranspose, Slice,
Concat, Reshape, Mul, Resize or Gather, Add, Relu, Clip (and Identity aliases
for weights the exporter found equal). ``exporter="dynamo"`` selects the other
exporter; ``exporter="auto"`` (the default) uses it for an opset above 20 and
falls back to it, with a warning, if the TorchScript one fails (a later torch
may drop it). Both give the same outputs (tested).

This package never imports ``encoder``: the model arrives as an argument.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coolchic.decoder_runtime.arch import DecoderArch
from coolchic.decoder_runtime.atomic_file import atomic_write_bytes
from coolchic.decoder_runtime.errors import ConfigError, EncodeError
from coolchic.decoder_runtime.onnx_graph import cr_input_names, latent_input_names
from coolchic.decoder_runtime.upsampling_kernels import default_upsampling_kernels

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Resize with sizes and cubic_coeff_a, Pad with pads as an input
DYNAMO_MIN_OPSET = 18  # what the torch.export-based exporter emits at least
TORCHSCRIPT_MAX_OPSET = 20  # the newest the TorchScript exporter of torch 2.13 supports
PRODUCER = "coolchic.export"
EXPORTERS = ("auto", "torchscript", "dynamo")
OUTPUT_NAME = "image"

PathLike = Union[str, "os.PathLike[str]"]


# ---- the torch module that is exported ---------------------------------------
def _coolchic_of(model: nn.Module) -> nn.Module:
    """The CoolChicEncoder of a FrameEncoder, or the model itself."""
    cc = getattr(model, "coolchic_encoder", model)
    for attr in ("arch", "synthesis"):
        if not hasattr(cc, attr):
            raise TypeError(
                f"expected a CoolChicEncoder or a FrameEncoder (with .arch and .synthesis), got {type(model).__name__}"
            )
    if not isinstance(cc.arch, DecoderArch):
        raise TypeError(f"{type(cc).__name__}.arch is not a DecoderArch")
    return cc


def _full_kernels(cc: nn.Module, arch: DecoderArch) -> List[Tuple[Tensor, Tensor]]:
    """Full symmetric ``(t_l, p_l)`` float32 kernels of each transition, from the model's parameters.

    The halves are read by their ``param_layout`` names; a model with static
    kernels still holds them (untrained), and only a model without them at all
    falls back to the shared initial kernels.
    """
    out = []
    for lv in range(arch.n_latent_grids - 1):
        try:
            th = cc.get_parameter(f"upsampling.tconv.{lv}.weight").detach()
            ph = cc.get_parameter(f"upsampling.preconcat.{lv}.weight").detach()
        except AttributeError:
            t_np, p_np = default_upsampling_kernels(arch.ups_k_size, arch.ups_preconcat_k_size)
            th, ph = torch.from_numpy(t_np[len(t_np) // 2:]), torch.from_numpy(p_np[len(p_np) // 2:])
        th = th.to(torch.float32).cpu().reshape(-1)
        ph = ph.to(torch.float32).cpu().reshape(-1)
        if th.numel() != arch.ups_k_size // 2 or ph.numel() != (arch.ups_preconcat_k_size + 1) // 2:
            raise ConfigError(f"upsampling kernels of transition {lv} do not match the architecture")
        out.append((torch.cat([th.flip(0), th]), torch.cat([ph[1:].flip(0), ph])))
    return out


def _nearest_indices(n_in: int, n_out: int) -> Tensor:
    """Source index of every output sample of torch's nearest resize, computed by torch itself."""
    src = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in)
    return F.interpolate(src, size=n_out, mode="nearest").view(n_out).round().to(torch.int64)


class DecoderGraph(nn.Module):
    """Upsampling + synthesis + clamp of one model, as a module with static shapes.

    ``forward(latent_0, ..., latent_{N-1}[, cr_0, ..., cr_{N-1}])`` returns the
    image ``[1, n_out, H, W]`` in ``[0, 1]``. Everything is copied at
    construction, on the CPU: the kernels as buffers (``tconv_l_h`` ...), the
    model's own synthesis module as a deep copy.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        cc = _coolchic_of(model)
        self.arch: DecoderArch = cc.arch
        # A CPU float32 copy: exporting never touches the model (device, modes, weights).
        self.synthesis = copy.deepcopy(cc.synthesis).to("cpu", torch.float32).eval()
        for prm in self.synthesis.parameters():
            prm.requires_grad_(False)
        a = self.arch
        self.sizes = a.latent_grid_sizes()
        n = a.n_latent_grids
        batch = 2 if a.flag_common_randomness else 1
        for lv, (t, p) in enumerate(_full_kernels(cc, a)):
            ch = n - 1 - lv  # channels of the tensor upsampled at transition lv
            k, kp = t.numel(), p.numel()
            # Depthwise weights [C, 1, kh, kw], one kernel for every channel.
            self.register_buffer(f"tconv_{lv}_h", t.view(1, 1, k, 1).repeat(ch, 1, 1, 1).contiguous())
            self.register_buffer(f"tconv_{lv}_w", t.view(1, 1, 1, k).repeat(ch, 1, 1, 1).contiguous())
            if kp == 1:
                self.register_buffer(f"preconcat_{lv}_gain", (p * p).reshape(()))
            else:
                self.register_buffer(f"preconcat_{lv}_h", p.view(1, 1, kp, 1).clone())
                self.register_buffer(f"preconcat_{lv}_w", p.view(1, 1, 1, kp).clone())
        self.batch = batch
        lo = a.latent_resolution[0]
        if lo > 0 and a.final_upsampling_type == "nearest":
            (h0, w0), (hh, ww) = self.sizes[0], a.img_size
            self.register_buffer("nearest_h", _nearest_indices(h0, hh))
            self.register_buffer("nearest_w", _nearest_indices(w0, ww))

    # -- names and shapes --------------------------------------------------------
    @property
    def input_names(self) -> List[str]:
        n = self.arch.n_latent_grids
        return latent_input_names(n) + (cr_input_names(n) if self.arch.flag_common_randomness else [])

    def input_shapes(self) -> List[Tuple[int, int, int, int]]:
        shapes = [(1, 1, h, w) for h, w in self.sizes]
        return shapes * self.batch

    def output_shape(self) -> Tuple[int, int, int, int]:
        return (1, self.arch.n_out, *self.arch.img_size)

    def example_inputs(self) -> Tuple[Tensor, ...]:
        """Zero tensors of the input shapes (the graph has no data-dependent branch)."""
        return tuple(torch.zeros(s) for s in self.input_shapes())

    # -- maths -------------------------------------------------------------------
    def _up2(self, x: Tensor, lv: int, out_hw: Tuple[int, int]) -> Tensor:
        """crop(up2(x, t_lv)): replicate pad P = ceil(K/4), stride-2 transposed conv along H then W."""
        k = self.arch.ups_k_size  # Python ints only: the traced graph keeps no shape arithmetic
        ch = self.arch.n_latent_grids - 1 - lv
        pad = math.ceil(k / 4)
        c = k // 2 - 1 + 2 * pad
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        x = F.conv_transpose2d(x, getattr(self, f"tconv_{lv}_h"), stride=(2, 1), groups=ch)
        x = F.conv_transpose2d(x, getattr(self, f"tconv_{lv}_w"), stride=(1, 2), groups=ch)
        return x[:, :, c:c + out_hw[0], c:c + out_hw[1]]

    def _preconcat(self, x: Tensor, lv: int) -> Tensor:
        kp = self.arch.ups_preconcat_k_size
        if kp == 1:
            return x * getattr(self, f"preconcat_{lv}_gain")
        r = kp // 2
        x = F.pad(x, (r, r, r, r), mode="replicate")
        x = F.conv2d(x, getattr(self, f"preconcat_{lv}_h"))
        return F.conv2d(x, getattr(self, f"preconcat_{lv}_w"))

    def dense(self, *inputs: Tensor) -> Tensor:
        """The synthesis input ``[1, C, H, W]`` (upsampling and final resize)."""
        a = self.arch
        n = a.n_latent_grids
        if len(inputs) != n * self.batch:
            raise ConfigError(
                f"expected {n * self.batch} input grids ({', '.join(self.input_names)}), got {len(inputs)}"
            )
        if self.batch == 2:
            # Latents and noise share every kernel: a batch of two, as in the encoder.
            grids = [torch.cat([y, r], dim=0) for y, r in zip(inputs[:n], inputs[n:])]
        else:
            grids = list(inputs)
        x = grids[-1]
        for lv in range(n - 2, -1, -1):
            x = self._up2(x, lv, self.sizes[lv])
            x = torch.cat([self._preconcat(grids[lv], lv), x], dim=1)
        h0, w0 = self.sizes[0]
        if self.batch == 2:
            x = x.reshape(1, 2 * n, h0, w0)  # latent channels first, then the noise
        if a.latent_resolution[0] > 0:
            mode = a.final_upsampling_type
            if mode == "nearest":
                x = x.index_select(2, self.nearest_h).index_select(3, self.nearest_w)
            else:
                x = F.interpolate(x, size=tuple(a.img_size), mode=mode, align_corners=False)
        return x

    def forward(self, *inputs: Tensor) -> Tensor:
        return torch.clamp(self.synthesis(self.dense(*inputs)), 0.0, 1.0)


# ---- metadata ------------------------------------------------------------------
def arch_to_dict(arch: DecoderArch) -> Dict[str, object]:
    """JSON-able fields of ``arch`` (synthesis layers as their strings)."""
    d = dataclasses.asdict(arch)
    d["layers_synthesis"] = [str(layer) for layer in arch.layers_synthesis]
    return d


def model_card(arch: DecoderArch) -> Dict[str, str]:
    """``metadata_props`` of an exported file: architecture, inputs, output and how to use them."""
    n = arch.n_latent_grids
    sizes = arch.latent_grid_sizes()
    inputs = [{"name": nm, "shape": [1, 1, h, w], "dtype": "float32", "content": "decoded integer latents"}
              for nm, (h, w) in zip(latent_input_names(n), sizes)]
    if arch.flag_common_randomness:
        seed = arch.common_randomness_seed
        inputs += [{"name": nm, "shape": [1, 1, h, w], "dtype": "float32",
                    "content": f"coolchic.decoder_runtime.common_randomness.noise_grid({seed}, {i}, {h}, {w})"}
                   for i, (nm, (h, w)) in enumerate(zip(cr_input_names(n), sizes))]
    output = {"name": OUTPUT_NAME, "shape": [1, arch.n_out, *arch.img_size], "dtype": "float32", "range": [0.0, 1.0]}
    maxv = (1 << arch.bitdepth) - 1
    usage = (f"code values = round(image * {maxv}) ({arch.bitdepth}-bit {arch.frame_data_type})"
             + ("; yuv420: channels 1 and 2 keep even rows and columns" if arch.frame_data_type == "yuv420" else ""))
    return {
        "coolchic.architecture": json.dumps(arch_to_dict(arch), sort_keys=True),
        "coolchic.layers_synthesis": ",".join(str(layer) for layer in arch.layers_synthesis),
        "coolchic.inputs": json.dumps(inputs),
        "coolchic.output": json.dumps(output),
        "coolchic.usage": usage,
        "coolchic.spec": "docs/architecture.md sections 3-5",
    }


def _doc_string(arch: DecoderArch) -> str:
    n = arch.n_latent_grids
    h, w = arch.img_size
    lines = [
        f"Cool-chic decoder, upsampling + synthesis, {arch.frame_data_type} {h}x{w} at {arch.bitdepth} bit.",
        f"Inputs: latent_0..latent_{n - 1}, float32 [1,1,h_i,w_i] (0 = finest), the decoded integer latents "
        f"at sizes {', '.join(f'{a}x{b}' for a, b in arch.latent_grid_sizes())}.",
    ]
    if arch.flag_common_randomness:
        lines.append(f"Also cr_0..cr_{n - 1} (same shapes): common-randomness noise for seed "
                     f"{arch.common_randomness_seed} (decoder_runtime.common_randomness.noise_grid).")
    lines.append(f"Output: image, float32 [1,{arch.n_out},{h},{w}] in [0,1]; "
                 f"code values = round(image * {(1 << arch.bitdepth) - 1}).")
    lines.append(f"Synthesis layers: {','.join(str(x) for x in arch.layers_synthesis)}; "
                 "full architecture in metadata_props['coolchic.architecture'].")
    return "\n".join(lines)


# ---- export --------------------------------------------------------------------
def _torch_export(module: DecoderGraph, opset: int, exporter: str) -> bytes:
    args = module.example_inputs()
    names = module.input_names
    first_error: Optional[BaseException] = None
    if exporter == "torchscript" and opset > TORCHSCRIPT_MAX_OPSET:
        raise ConfigError(f"the TorchScript exporter stops at opset {TORCHSCRIPT_MAX_OPSET}; "
                          f"use exporter='dynamo' for opset {opset}")
    if exporter in ("auto", "torchscript") and opset <= TORCHSCRIPT_MAX_OPSET:
        try:
            buf = io.BytesIO()
            with warnings.catch_warnings():
                # The deprecation notice of this exporter and TracerWarnings about
                # Python ints from shapes: every shape here is static by design.
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.onnx")
                warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
                # Its folding pass skipping the reversed Slice of the Pad amounts
                # (fold_small_constants does that work afterwards).
                warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")
                torch.onnx.export(module, args, buf, input_names=names, output_names=[OUTPUT_NAME],
                                  opset_version=opset, do_constant_folding=True, dynamo=False)
            return buf.getvalue()
        except Exception as e:  # e.g. a torch that no longer ships this exporter
            if exporter == "torchscript":
                raise
            first_error = e
            warnings.warn(f"the TorchScript ONNX exporter failed ({type(e).__name__}: {e}); "
                          "trying the torch.export-based one", RuntimeWarning, stacklevel=3)
    # torch.export-based exporter: it emits opset 18 at least.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # pytree deprecations inside torch.export
            program = torch.onnx.export(module, args, input_names=names, output_names=[OUTPUT_NAME],
                                        opset_version=max(opset, DYNAMO_MIN_OPSET), dynamo=True, verbose=False)
    except Exception as e:
        if first_error is not None:
            raise EncodeError(f"ONNX export failed with both exporters: TorchScript: {first_error}; "
                              f"torch.export: {e}") from e
        raise
    return program.model_proto.SerializeToString()


def _static_shapes(model) -> Dict[str, Tuple[int, ...]]:
    """Fully known tensor shapes of ``model`` (inputs, outputs and inferred intermediates)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    return out


def _shape_value(node, shape: Tuple[int, ...]) -> np.ndarray:
    """The output of a ``Shape`` node (with its optional start/end) on a tensor of static ``shape``."""
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.asarray(shape[start:end], dtype=np.int64)


def fold_small_constants(graph, max_elements: int = 1024,
                         static_shapes: Optional[Dict[str, Tuple[int, ...]]] = None) -> int:
    """Replace ``Constant`` nodes, and the nodes computing only from them, by initializers.

    The TorchScript exporter builds every ``Pad`` amount with a chain of
    ConstantOfShape / Concat / Reshape / Slice / Transpose / Cast nodes that its
    own folding pass leaves alone (it does not fold a Slice with a negative
    step), and the sizes of a ``Resize`` from ``Shape`` of its input. Evaluated
    here once, with onnx's reference implementation (a ``Shape`` from
    ``static_shapes``), they become small int64 initializers and the graph
    reads as the maths does. Weights are never touched: only values born from
    ``Constant`` or ``Shape`` nodes or small integer initializers, and results
    of at most ``max_elements`` elements, are folded; initializers left unused
    are dropped. Returns the number of nodes removed.
    """
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    static_shapes = static_shapes or {}
    values: Dict[str, np.ndarray] = {}
    for t in graph.initializer:
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and int(np.prod(t.dims)) <= max_elements:
            values[t.name] = numpy_helper.to_array(t)
    kept = []
    for node in graph.node:
        if node.op_type == "Shape" and node.domain in ("", "ai.onnx") and node.input[0] in static_shapes:
            values[node.output[0]] = _shape_value(node, static_shapes[node.input[0]])
            continue
        foldable = node.op_type == "Constant" or (
            node.input and node.domain in ("", "ai.onnx") and all(i in values for i in node.input if i)
        )
        if foldable:
            try:
                feeds = {i: values[i] for i in node.input if i}
                outs = ReferenceEvaluator(node).run(None, feeds)
            except Exception:  # anything the reference cannot run stays a node
                outs = None
            if outs is not None and all(np.asarray(o).size <= max_elements for o in outs):
                values.update((name, np.asarray(o)) for name, o in zip(node.output, outs))
                continue
        kept.append(node)
    used = {i for node in kept for i in node.input} | {o.name for o in graph.output}
    inits = [t for t in graph.initializer if t.name in used]
    existing = {t.name for t in inits}
    inits += [numpy_helper.from_array(v, name) for name, v in values.items() if name in used and name not in existing]
    removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return removed


def _set_static_output_shape(graph, shape: Sequence[int]) -> None:
    """Declare the output's static shape (the exporter leaves some dimensions symbolic)."""
    (out,) = [o for o in graph.output if o.name == OUTPUT_NAME]
    dims = out.type.tensor_type.shape.dim
    del dims[:]
    for v in shape:
        dims.add().dim_value = int(v)


@torch.no_grad()
def export_onnx_bytes(model: nn.Module, opset: int = DEFAULT_OPSET, exporter: str = "auto") -> bytes:
    """The serialised ONNX model of :func:`export_onnx` (nothing written)."""
    import onnx

    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ConfigError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    module = DecoderGraph(model).eval()
    data = _torch_export(module, opset, exporter)
    proto = onnx.ModelProto.FromString(data)
    fold_small_constants(proto.graph)
    # With the pad amounts known, shape inference reaches every tensor: fold the
    # Shape -> Slice -> Concat sizes of a final Resize too.
    fold_small_constants(proto.graph, static_shapes=_static_shapes(proto))
    _set_static_output_shape(proto.graph, module.output_shape())
    proto.graph.name = "coolchic_decoder"
    proto.producer_name = PRODUCER
    proto.doc_string = _doc_string(module.arch)
    proto.graph.doc_string = proto.doc_string
    del proto.metadata_props[:]
    for key, value in model_card(module.arch).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    got_in = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if got_in != module.input_names or [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise EncodeError(f"the exported graph has inputs {got_in} and outputs "
                          f"{[o.name for o in proto.graph.output]}, expected {module.input_names} and [image]")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(model: nn.Module, path: PathLike, opset: int = DEFAULT_OPSET, exporter: str = "auto") -> Path:
    """Write the upsampling + synthesis of ``model`` to ``path`` as an ONNX file; returns the path.

    ``model``: a CoolChicEncoder or a FrameEncoder (anything with ``.arch``, a
    ``.synthesis`` module and the ``upsampling.*`` parameters of
    ``param_layout``), normally after network quantization, so that the file
    holds the transmitted weights. The file is written atomically.
    """
    data = export_onnx_bytes(model, opset, exporter)
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def input_feed(arch: DecoderArch, latents: Sequence[np.ndarray], noise: Optional[Sequence[np.ndarray]] = None
               ) -> Dict[str, np.ndarray]:
    """Feed of an exported file: ``latents`` finest first; noise regenerated from the seed when not given."""
    from coolchic.decoder_runtime.common_randomness import common_randomness_grids
    from coolchic.decoder_runtime.onnx_graph import input_feed as runtime_feed

    return runtime_feed(arch, latents, common_randomness_grids(arch) if noise is None else noise)
