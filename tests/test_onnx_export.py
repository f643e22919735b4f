"""ONNX export (export/onnx_export.py) against the encoder's torch forward and the
runtime's own graph, and a tiny end-to-end encode -> bitstream -> decode.

Parity is on the same quantized weights: the encoder's upsampling + synthesis
(hard-rounded latents), the exported file run in onnxruntime, and
``decoder_runtime.onnx_graph.build_decoder_model`` fed with the dequantized
integers of ``export_state`` (``q * 2^-s``, as the decoder reads them).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from coolchic.decoder_runtime import decode  # noqa: E402
from coolchic.decoder_runtime.arch import modules_to_send, param_layout, synthesis_latents  # noqa: E402
from coolchic.decoder_runtime.bitstream import dequantize  # noqa: E402
from coolchic.decoder_runtime.common_randomness import common_randomness_grids  # noqa: E402
from coolchic.decoder_runtime.errors import ConfigError  # noqa: E402
from coolchic.decoder_runtime.expgolomb import module_kinds  # noqa: E402
from coolchic.decoder_runtime.frame import RawImage  # noqa: E402
from coolchic.decoder_runtime.onnx_graph import build_decoder_model, input_feed  # noqa: E402
from coolchic.decoder_runtime.ort_session import make_session  # noqa: E402
from coolchic.encoder import (  # noqa: E402
    FrameEncoder,
    decoder_config_to_param,
    encode_frame,
    export_state,
    load_decoder_config,
    load_encoder_preset,
)
from coolchic.encoder.coolchic import CoolChicEncoderParameter  # noqa: E402
from coolchic.export.bitstream_writer import write_bitstream  # noqa: E402
from coolchic.export.onnx_export import DecoderGraph, export_onnx, export_onnx_bytes  # noqa: E402
from coolchic.export.onnx_export import input_feed as onnx_input_feed  # noqa: E402

from conftest import REPO  # noqa: E402

TOL = 1e-5
SHIFT = 8  # weights on a 2^-8 grid, as after quantize_model
VLOP = ["8-1-linear-relu", "X-1-linear-none", "X-3-residual-none"]
MOP = ["32-1-linear-relu", "X-1-linear-none", "X-3-residual-relu", "X-3-residual-none"]

CASES = {
    "vlop-k8-p7-odd": dict(size=(33, 47), layers_synthesis=VLOP, latent_resolution=(0, 3)),
    "mop-k4-p1-stab": dict(size=(24, 40), layers_synthesis=MOP, ups_k_size=4, ups_preconcat_k_size=1,
                           linear_stabiliser_synth=True),
    "k8-p7-cr-stab-odd": dict(size=(33, 47), layers_synthesis=VLOP, flag_common_randomness=True,
                              common_randomness_seed=7, linear_stabiliser_synth=True),
    "k6-p3-k5layer": dict(size=(24, 40), layers_synthesis=["12-1-linear-relu", "X-3-linear-relu", "X-5-residual-none"],
                          ups_k_size=6, ups_preconcat_k_size=3),
    "lo1-bicubic-odd": dict(size=(33, 47), layers_synthesis=VLOP, latent_resolution=(1, 4),
                            final_upsampling_type="bicubic"),
    "lo1-bilinear-k4-p1": dict(size=(24, 40), layers_synthesis=MOP, latent_resolution=(1, 3), ups_k_size=4,
                               ups_preconcat_k_size=1, final_upsampling_type="bilinear"),
    "lo2-nearest-cr-odd": dict(size=(33, 47), layers_synthesis=VLOP, latent_resolution=(2, 4),
                               final_upsampling_type="nearest", flag_common_randomness=True,
                               common_randomness_seed=3),
    "static-k8-p7": dict(size=(33, 47), layers_synthesis=VLOP, static_upsampling_kernel=True),
    "single-grid": dict(size=(24, 40), layers_synthesis=VLOP, latent_resolution=(0, 0)),
    "gray-k8-p7-odd": dict(size=(33, 47), layers_synthesis=VLOP, fdt="gray", latent_resolution=(0, 5)),
    "yuv420-k4-p7": dict(size=(24, 40), layers_synthesis=MOP, fdt="yuv420", ups_k_size=4),
}


# ---- helpers ----------------------------------------------------------------------
def quantized_frame_encoder(size, fdt="rgb", seed=0, **kw) -> FrameEncoder:
    """A FrameEncoder whose networks sit on a 2^-SHIFT grid, with integer latents, as after quantize_model.

    Weights are scaled so that activations stay O(1) and most outputs fall
    inside (0, 1): a parity check on a clamped-out image would prove little.
    """
    kw.setdefault("latent_resolution", (0, 3))
    param = CoolChicEncoderParameter(img_size=size, spatial_context_arm=8, n_hidden_layers_arm=1, **kw)
    torch.manual_seed(seed)
    fe = FrameEncoder(param, "I", fdt, 8)
    cc = fe.coolchic_encoder
    arch = cc.arch
    rng = np.random.default_rng(seed)
    last_bias = f"synthesis.layers.{len(arch.layers_synthesis) - 1}.bias"
    with torch.no_grad():
        for spec in param_layout(arch):
            p = cc.get_parameter(spec.name)
            if spec.name.startswith("synthesis") and spec.kind == "weight":
                v = rng.standard_normal(spec.shape) * (0.4 / np.sqrt(np.prod(spec.shape[1:])))
            elif spec.name == last_bias:
                v = np.full(spec.shape, 0.5)
            elif spec.name.startswith("upsampling"):
                v = p.numpy() + rng.normal(0, 0.05, spec.shape)  # around the initial kernels
            else:
                v = rng.uniform(-0.1, 0.1, spec.shape)
            p.copy_(torch.from_numpy(np.round(v * 2**SHIFT) / 2**SHIFT))
        for g in cc.latent_grids:
            q = np.round(rng.laplace(0.0, 1.5, tuple(g.shape)))
            g.copy_(torch.from_numpy(q / cc.encoder_gain))
    for m in modules_to_send(arch):
        for k in module_kinds(arch, m):
            cc.nn_q_step[m][k] = SHIFT
            cc.nn_expgol_cnt[m][k] = 0
    return fe


def state_float_params_and_latents(fe):
    """What the decoder works from: ``q * 2^-s`` float32 weights and the integer latents, finest first."""
    st = export_state(fe)
    return st.arch, dequantize(st.q_params, st.shifts), synthesis_latents(st.arch, st.latents)


@torch.no_grad()
def encoder_forward(fe) -> np.ndarray:
    """The encoder's own upsampling + synthesis on hard-rounded latents, clamped: (n_out, H, W)."""
    cc = fe.coolchic_encoder
    flat = cc.quantized_flat_latents(quantizer_noise_type="none", quantizer_type="hardround")
    return torch.clamp(cc.synthesis(cc.dense_latent(flat)), 0.0, 1.0)[0].numpy()


def run_onnx(model_bytes_or_proto, feed) -> np.ndarray:
    (out,) = make_session(model_bytes_or_proto).run(["image"], feed)
    return out[0]


def three_way(fe, opset=17):
    """(torch, exported ONNX, runtime graph) outputs, plus the exported model proto."""
    arch, params, latents = state_float_params_and_latents(fe)
    feed = input_feed(arch, latents, common_randomness_grids(arch))
    data = export_onnx_bytes(fe, opset=opset)
    return encoder_forward(fe), run_onnx(data, feed), run_onnx(build_decoder_model(arch, params), feed), data, feed


# ---- parity -------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_torch_exported_and_runtime_graph_agree(case):
    kw = dict(CASES[case])
    fe = quantized_frame_encoder(kw.pop("size"), kw.pop("fdt", "rgb"), **kw)
    ref, exported, runtime, data, feed = three_way(fe)
    arch = fe.arch
    assert ref.shape == exported.shape == runtime.shape == (arch.n_out, *arch.img_size)
    # The image is not trivially clamped away: the check is about real values.
    assert 0.2 < np.mean((ref > 0) & (ref < 1))
    err = {
        "torch-onnx": float(np.abs(ref - exported).max()),
        "torch-runtime": float(np.abs(ref - runtime).max()),
        "onnx-runtime": float(np.abs(exported - runtime).max()),
    }
    assert max(err.values()) <= TOL, err
    # The exported module's own torch forward is the encoder's.
    g = DecoderGraph(fe)
    with torch.no_grad():
        mine = g(*[torch.from_numpy(feed[n]) for n in g.input_names])[0].numpy()
    assert np.abs(mine - ref).max() <= TOL
    # Same inputs as the runtime graph, static shapes, opset 17.
    proto = onnx.load_from_string(data)
    assert [i.name for i in proto.graph.input] == list(feed)
    for i in proto.graph.input:
        assert [d.dim_value for d in i.type.tensor_type.shape.dim] == list(feed[i.name].shape)
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [1, arch.n_out, *arch.img_size]
    assert {o.domain: o.version for o in proto.opset_import}.get("", None) == 17
    # No shape arithmetic left: pad amounts, slice bounds and resize sizes are initializers.
    ops = {n.op_type for n in proto.graph.node}
    assert ops <= PLAIN_OPS, ops - PLAIN_OPS


PLAIN_OPS = {"Pad", "ConvTranspose", "Conv", "Slice", "Concat", "Reshape", "Relu", "Add", "Mul", "Clip", "Identity",
             "Resize", "Gather"}


def test_graph_holds_the_quantized_weights():
    fe = quantized_frame_encoder((24, 40), layers_synthesis=MOP, flag_common_randomness=True)
    proto = onnx.load_from_string(export_onnx_bytes(fe))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    w = fe.coolchic_encoder.get_parameter("synthesis.layers.0.weight").detach().numpy()
    assert np.array_equal(inits["synthesis.layers.0.weight"], w)
    assert np.array_equal(np.round(w * 2**SHIFT), w * 2**SHIFT)


def test_dynamo_exporter():
    # The fallback of exporter="auto": the torch.export-based exporter (opset 18 at least).
    pytest.importorskip("onnxscript")
    fe = quantized_frame_encoder((24, 40), layers_synthesis=VLOP, latent_resolution=(1, 3),
                                 flag_common_randomness=True, final_upsampling_type="bicubic")
    fe.train()
    arch, params, latents = state_float_params_and_latents(fe)
    feed = onnx_input_feed(arch, latents)  # the noise regenerated from the seed
    data = export_onnx_bytes(fe, exporter="dynamo")
    assert fe.training and fe.coolchic_encoder.synthesis.training  # modes left as they were
    proto = onnx.load_from_string(data)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    assert [i.name for i in proto.graph.input] == list(feed)
    exported = run_onnx(data, feed)
    assert np.abs(exported - encoder_forward(fe)).max() <= TOL
    assert np.abs(exported - run_onnx(build_decoder_model(arch, params), feed)).max() <= TOL


def test_other_opset():
    fe = quantized_frame_encoder((24, 40), layers_synthesis=VLOP, latent_resolution=(1, 3),
                                 final_upsampling_type="bicubic")
    ref, exported, runtime, data, _ = three_way(fe, opset=19)
    assert {o.domain: o.version for o in onnx.load_from_string(data).opset_import}[""] == 19
    assert np.abs(ref - exported).max() <= TOL and np.abs(exported - runtime).max() <= TOL


# ---- the file ---------------------------------------------------------------------------
def test_export_onnx_writes_a_self_describing_file(tmp_path):
    fe = quantized_frame_encoder((33, 47), layers_synthesis=VLOP, flag_common_randomness=True,
                                 common_randomness_seed=11)
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old content")
    out = export_onnx(fe.coolchic_encoder, str(target))  # CoolChicEncoder and str path accepted too
    assert out == target and isinstance(out, Path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # atomic: no temporary left
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert proto.producer_name == "coolchic.export"
    meta = {p.key: p.value for p in proto.metadata_props}
    arch = fe.arch
    d = json.loads(meta["coolchic.architecture"])
    assert d["img_size"] == [33, 47] and d["layers_synthesis"] == ["8-1-linear-relu", "3-1-linear-none",
                                                                   "3-3-residual-none"]
    assert d["flag_common_randomness"] is True and d["common_randomness_seed"] == 11
    inputs = json.loads(meta["coolchic.inputs"])
    sizes = arch.latent_grid_sizes()
    assert [i["name"] for i in inputs] == [f"latent_{k}" for k in range(4)] + [f"cr_{k}" for k in range(4)]
    assert [i["shape"] for i in inputs] == [[1, 1, h, w] for h, w in sizes] * 2
    assert "noise_grid(11, 2," in inputs[6]["content"]
    assert json.loads(meta["coolchic.output"])["shape"] == [1, 3, 33, 47]
    assert "round(image * 255)" in meta["coolchic.usage"]
    assert "latent_0" in proto.doc_string and "seed 11" in proto.doc_string

    # Anyone can run it from the metadata alone: plain onnxruntime, no project code.
    import onnxruntime as ort

    from coolchic.decoder_runtime.common_randomness import noise_grid

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for i in inputs:
        h, w = i["shape"][2:]
        if i["name"].startswith("latent"):
            feed[i["name"]] = np.round(rng.laplace(0, 1.5, i["shape"])).astype(np.float32)
        else:
            feed[i["name"]] = noise_grid(11, int(i["name"][3:]), h, w)[None, None]
    (img,) = sess.run(["image"], feed)
    _, params, _ = state_float_params_and_latents(fe)
    want = run_onnx(build_decoder_model(arch, params), feed)
    assert np.abs(img[0] - want).max() <= TOL


def test_failed_export_leaves_the_old_file(tmp_path, monkeypatch):
    import coolchic.export.onnx_export as ox

    fe = quantized_frame_encoder((24, 40), layers_synthesis=VLOP, latent_resolution=(0, 1))
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old content")

    def boom(*a, **k):
        raise RuntimeError("export failed")

    monkeypatch.setattr(ox, "_torch_export", boom)
    with pytest.raises(RuntimeError):
        export_onnx(fe, target)
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_bad_arguments():
    fe = quantized_frame_encoder((24, 40), layers_synthesis=VLOP, latent_resolution=(0, 1))
    with pytest.raises(ConfigError, match="exporter"):
        export_onnx_bytes(fe, exporter="tflite")
    with pytest.raises(ConfigError, match="opset"):
        export_onnx_bytes(fe, opset=9)
    with pytest.raises(ConfigError, match="dynamo"):
        export_onnx_bytes(fe, opset=21, exporter="torchscript")
    with pytest.raises(TypeError, match="CoolChicEncoder"):
        export_onnx_bytes(torch.nn.Linear(2, 2))


def test_export_package_does_not_import_the_encoder():
    for path in (REPO / "export").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            assert not any(n == "encoder" or n.startswith("encoder.") for n in names), (path.name, names)


# ---- end to end ---------------------------------------------------------------------------
def smooth_image(h, w, seed=0) -> RawImage:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    planes = tuple(
        np.clip(np.round(255 * (0.5 + 0.3 * np.sin(x / (3 + k)) * np.cos(y / (4 + k)) + rng.normal(0, 0.02, (h, w)))),
                0, 255).astype(np.uint8)
        for k in range(3)
    )
    return RawImage(planes, "rgb", 8)


def test_end_to_end_decoded_image_equals_the_encoder_reconstruction():
    raw = smooth_image(33, 47)
    param = decoder_config_to_param(load_decoder_config("vlop"))
    res = encode_frame(raw, param, load_encoder_preset("debug"), 1e-3, seed=0, num_threads=1)
    fe = res.frame_encoder
    st = export_state(fe)
    data = write_bitstream(st.arch, st.q_params, st.shifts, st.expgol, st.latents).data
    dec = decode(data)
    assert dec.frame_data_type == "rgb" and dec.bitdepth == 8
    decoded = np.stack(dec.image.planes).astype(np.int64)

    # The encoder's final reconstruction: hard-rounded latents, no noise, eval mode
    # (output rounded to the bit depth), as 8-bit code values.
    fe.set_to_eval()
    with torch.no_grad():
        out = fe(quantizer_noise_type="none", quantizer_type="hardround")
    encoder_codes = np.round(out.decoded_image[0].numpy().astype(np.float64) * 255).astype(np.int64)
    diff = np.abs(decoded - encoder_codes)
    n_diff = int(np.count_nonzero(diff))
    print(f"end to end: max code-value difference {diff.max()}, {n_diff} of {diff.size} values differ")
    assert diff.max() <= 1
    assert n_diff <= diff.size // 100  # an off-by-one only where a value sits on a rounding boundary

    # The exported file on the decoded latents gives the decoder's image too.
    arch, params, latents = state_float_params_and_latents(fe)
    feed = input_feed(arch, latents, common_randomness_grids(arch))
    exported = run_onnx(export_onnx_bytes(fe), feed)
    runtime = run_onnx(build_decoder_model(arch, params), feed)
    assert np.abs(exported - runtime).max() <= TOL
    assert np.abs(exported - encoder_forward(fe)).max() <= TOL
    assert np.abs(np.rint(exported * 255).astype(np.int64) - decoded).max() <= 1
