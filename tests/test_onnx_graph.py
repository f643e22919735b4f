"""ONNX upsampling + synthesis graph against the plain-numpy reference, kernels, sessions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from coolchic.decoder_runtime.arch import param_layout
from coolchic.decoder_runtime.common_randomness import common_randomness_grids
from coolchic.decoder_runtime.errors import ConfigError, ProviderError
from coolchic.decoder_runtime import onnx_graph
from coolchic.decoder_runtime.onnx_graph import STRIPE_ROWS, build_decoder_graph, build_decoder_model, input_feed
from coolchic.decoder_runtime.ort_session import _CACHE_SIZE, cached_session, clear_session_cache, make_session, session_options
from coolchic.decoder_runtime.reconstruct import reconstruct, to_raw_image
from coolchic.decoder_runtime.reference_numpy import reference_forward, to_code_values, up2_1d
from coolchic.decoder_runtime.upsampling_kernels import (
    default_upsampling_kernels,
    preconcat_full,
    preconcat_half,
    tconv_full,
    tconv_half,
)

from conftest import make_arch

BENCH_DATA = Path(__file__).resolve().parent.parent / "bench" / "data"


def random_params(arch, seed=0):
    """Weights scaled so that activations stay O(1) and most outputs fall inside (0, 1)."""
    rng = np.random.default_rng(seed)
    params = {}
    last_bias = f"synthesis.layers.{len(arch.layers_synthesis) - 1}.bias"
    for spec in param_layout(arch):
        if spec.name.startswith("synthesis") and spec.kind == "weight":
            fan_in = int(np.prod(spec.shape[1:]))
            v = rng.standard_normal(spec.shape) * (0.3 / np.sqrt(fan_in))
        elif spec.name == last_bias:
            v = np.full(spec.shape, 0.5)
        elif spec.name.startswith("synthesis"):
            v = rng.uniform(-0.1, 0.1, spec.shape)
        elif spec.name.startswith("upsampling.tconv"):
            t, _ = default_upsampling_kernels(arch.ups_k_size, arch.ups_preconcat_k_size)
            v = tconv_half(t) + rng.normal(0, 0.05, spec.shape)
        elif spec.name.startswith("upsampling.preconcat"):
            _, p = default_upsampling_kernels(arch.ups_k_size, arch.ups_preconcat_k_size)
            v = preconcat_half(p) + rng.normal(0, 0.1, spec.shape)
        else:
            v = rng.standard_normal(spec.shape)
        params[spec.name] = v.astype(np.float32)
    return params


def random_latents(arch, seed=0):
    rng = np.random.default_rng(seed + 100)
    return [np.round(rng.laplace(0, 1.0, (h, w))).astype(np.int32) for h, w in arch.latent_grid_sizes()]


def run_graph(arch, params, latents):
    sess = make_session(build_decoder_model(arch, params))
    (out,) = sess.run(["image"], input_feed(arch, latents, common_randomness_grids(arch)))
    return out[0]


CASES = {
    "k8-p7": dict(ups_k_size=8, ups_preconcat_k_size=7),
    "k4-p1": dict(ups_k_size=4, ups_preconcat_k_size=1),
    "k6-p3-cr-stab": dict(
        ups_k_size=6, ups_preconcat_k_size=3, flag_common_randomness=True, common_randomness_seed=77,
        linear_stabiliser_synth=True,
    ),
    "k8-p3-lo2-nearest": dict(latent_resolution=(2, 5), final_upsampling_type="nearest"),
    "k8-p3-lo1-bilinear": dict(latent_resolution=(1, 5), final_upsampling_type="bilinear", ups_preconcat_k_size=3),
    "k8-p7-lo2-bicubic-cr": dict(
        latent_resolution=(2, 6), final_upsampling_type="bicubic", flag_common_randomness=True,
        common_randomness_seed=5,
    ),
    "static-k8": dict(static_upsampling_kernel=True, ups_k_size=8, ups_preconcat_k_size=7),
    "static-k12-lo3": dict(static_upsampling_kernel=True, ups_k_size=12, latent_resolution=(3, 4)),
    "single-grid": dict(latent_resolution=(0, 0)),
}
TALL = {  # taller than onnx_graph.STRIPE_ROWS: the 1x1 layers run in stripes
    "tall-stripes": dict(latent_resolution=(0, 4)),
    "tall-stripes-lo1-cr-stab": dict(
        latent_resolution=(1, 4), final_upsampling_type="bicubic", flag_common_randomness=True,
        linear_stabiliser_synth=True,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES) + sorted(TALL))
def test_graph_matches_numpy_reference(case):
    kw = dict(latent_resolution=(0, 5))
    kw.update(CASES.get(case) or TALL[case])
    size = (33, 47) if case in CASES else (2 * STRIPE_ROWS + 19, 13)
    arch = make_arch(size, **kw)
    params = random_params(arch, seed=len(case))
    latents = random_latents(arch, seed=len(case))
    got = run_graph(arch, params, latents)
    want = reference_forward(arch, params, latents)
    assert got.shape == (3, *size)
    inside = ((want > 0) & (want < 1)).mean()
    assert inside > 0.5, "the test weights should keep most outputs off the clamp"
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES) + sorted(TALL))
def test_weights_as_inputs_same_graph_same_output(case):
    """The runtime's graph (weights as inputs) does not depend on the weights, and computes
    exactly what the graph with the weights as initializers computes."""
    kw = dict(latent_resolution=(0, 5))
    kw.update(CASES.get(case) or TALL[case])
    size = (33, 47) if case in CASES else (2 * STRIPE_ROWS + 19, 13)
    arch = make_arch(size, **kw)
    latents = random_latents(arch, seed=3)
    models = []
    for seed in (1, 2):
        params = random_params(arch, seed=seed)
        if "k4-p1" in case and seed == 2:  # a 1-tap preconcat of gain 1: the initializer graph drops its Mul
            params = {k: (np.ones_like(v) if k.startswith("upsampling.preconcat") else v) for k, v in params.items()}
        onnx_graph._model_bytes.clear()  # serialised afresh, not taken from the cache
        model, weights = build_decoder_graph(arch, params, weights_as_inputs=True)
        # Again, from the cache: the same bytes, and a feed of the same names and values.
        cached, again = build_decoder_graph(arch, params, weights_as_inputs=True)
        assert cached is model and sorted(again) == sorted(weights)
        assert all(np.array_equal(again[k], weights[k]) for k in weights)
        assert build_decoder_graph(arch, params)[1] == {}
        feed = dict(input_feed(arch, latents, common_randomness_grids(arch)), **weights)
        (got,) = make_session(model).run(["image"], feed)
        np.testing.assert_array_equal(got[0], run_graph(arch, params, latents))
        models.append(model)
    assert models[0] == models[1]


def test_gray_and_yuv420_output_forms():
    arch = make_arch((34, 46), layers="8-1-linear-relu,X-3-linear-none", n_out=1, frame_data_type="gray",
                     bitdepth=10, latent_resolution=(0, 3))
    params = random_params(arch, 3)
    latents = random_latents(arch, 3)
    img = reconstruct(arch, params, latents)
    want = to_code_values(reference_forward(arch, params, latents), 10)
    assert img.frame_data_type == "gray" and img.bitdepth == 10 and img.planes[0].dtype == np.uint16
    assert np.abs(img.planes[0].astype(np.int64) - want[0]).max() <= 1

    x = np.linspace(0, 1, 3 * 4 * 6, dtype=np.float32).reshape(3, 4, 6)
    yuv = to_raw_image(x, "yuv420", 8)
    assert [p.shape for p in yuv.planes] == [(4, 6), (2, 3), (2, 3)]
    np.testing.assert_array_equal(yuv.planes[1], np.round(x[1, ::2, ::2] * 255).astype(np.uint8))


def test_output_rounding_and_clamp():
    x = np.array([[[-0.5, 0.0, 0.5 / 255, 1.5 / 255, 1.0, 2.0]]], np.float32)
    img = to_raw_image(x, "gray", 8)
    # Half-way values round to even, like torch.round and the encoder.
    np.testing.assert_array_equal(img.planes[0], [[0, 0, 0, 2, 255, 255]])


def test_default_kernels():
    t, p = default_upsampling_kernels(4, 1)
    np.testing.assert_allclose(t, [0.25, 0.75, 0.75, 0.25])
    np.testing.assert_array_equal(p, [1.0])
    t6, p3 = default_upsampling_kernels(6, 3)
    np.testing.assert_allclose(t6, [0, 0.25, 0.75, 0.75, 0.25, 0])
    np.testing.assert_array_equal(p3, [0, 1, 0])
    t8, _ = default_upsampling_kernels(8, 7)
    # Bicubic a = -0.75 at distances 1.75, 1.25, 0.75, 0.25, scaled to sum 2.
    np.testing.assert_allclose(
        t8, [-0.03515625, -0.10546875, 0.26171875, 0.87890625, 0.87890625, 0.26171875, -0.10546875, -0.03515625],
        atol=1e-7,
    )
    t12, _ = default_upsampling_kernels(12, 1)
    np.testing.assert_array_equal(t12[:2], [0, 0])
    np.testing.assert_allclose(t12[2:10], t8)
    for k in (4, 6, 8, 10, 16):
        t, _ = default_upsampling_kernels(k, 1)
        assert abs(float(t.sum()) - 2) < 1e-6 and np.array_equal(t, t[::-1])
    with pytest.raises(ConfigError):
        default_upsampling_kernels(5, 1)
    with pytest.raises(ConfigError):
        default_upsampling_kernels(8, 2)


def test_half_kernels_roundtrip():
    t = np.array([1, 2, 3, 3, 2, 1], np.float32)
    np.testing.assert_array_equal(tconv_half(t), [3, 2, 1])
    np.testing.assert_array_equal(tconv_full(tconv_half(t)), t)
    p = np.array([1, 2, 5, 2, 1], np.float32)
    np.testing.assert_array_equal(preconcat_half(p), [5, 2, 1])
    np.testing.assert_array_equal(preconcat_full(preconcat_half(p)), p)


def test_bilinear_step_is_half_pixel_interpolation():
    t, _ = default_upsampling_kernels(4, 1)
    x = np.array([[0.0, 4.0, 8.0]])
    np.testing.assert_allclose(up2_1d(x, t, 1), [[0, 1, 3, 5, 7, 8]])
    const = np.full((1, 5), 3.0)
    t8, _ = default_upsampling_kernels(8, 1)
    np.testing.assert_allclose(up2_1d(const, t8, 1), np.full((1, 10), 3.0))


def test_missing_or_misshapen_params():
    arch = make_arch((16, 16))
    params = random_params(arch)
    del params["synthesis.layers.0.bias"]
    with pytest.raises(ConfigError, match="synthesis.layers.0.bias"):
        build_decoder_model(arch, params)
    params = random_params(arch)
    params["upsampling.tconv.0.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConfigError, match="shape"):
        build_decoder_model(arch, params)


def test_model_is_valid_onnx_with_static_shapes():
    arch = make_arch((33, 47), flag_common_randomness=True, latent_resolution=(1, 4))
    model = build_decoder_model(arch, random_params(arch))
    onnx.checker.check_model(model, full_check=True)
    names = [i.name for i in model.graph.input]
    assert names == [f"latent_{i}" for i in range(4)] + [f"cr_{i}" for i in range(4)]
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 33, 47]


def test_cuda_absent_is_a_provider_error():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    arch = make_arch((16, 16))
    with pytest.raises(ProviderError, match="cuda"):
        make_session(build_decoder_model(arch, random_params(arch)), provider="cuda")
    with pytest.raises(ProviderError, match="unknown execution provider"):
        make_session(build_decoder_model(arch, random_params(arch)), provider="tpu")


def test_session_options_do_not_spin():
    so = session_options(threads=2)
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"


_ARENA_CHILD = """
import json, resource, sys
import onnxruntime
from conftest import make_arch
from test_onnx_graph import random_latents, random_params
from coolchic.decoder_runtime.onnx_graph import build_decoder_model, input_feed
from coolchic.decoder_runtime.ort_session import make_session, session_options

arch = make_arch((256, 384))
feeds = [(build_decoder_model(arch, random_params(arch, s)).SerializeToString(), input_feed(arch, random_latents(arch, s)))
         for s in (0, 1)]
def first_run_faults(new_session):
    out = []
    for model, feed in feeds:
        sess = new_session(model)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        sess.run(["image"], feed)
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        del sess
    return out
own = first_run_faults(lambda m: onnxruntime.InferenceSession(m, session_options(), providers=["CPUExecutionProvider"]))
shared = first_run_faults(make_session)
entry = make_session(feeds[0][0]).get_session_options().get_session_config_entry("session.use_env_allocators")
print(json.dumps({"own": own, "shared": shared, "entry": entry}))
"""


def test_new_session_reuses_the_shared_cpu_arena():
    """A new file's session runs in memory an earlier session faulted in (ort_session.shared_cpu_arena).

    In a fresh process (the allocator's state decides what a freed arena
    leaves behind): two sessions of a 256x384 graph, each with its own arena,
    then two sharing the registered one. With its own arena the second
    session's first run page-faults its activations afresh (about 2 400
    faults); with the shared arena, the pages the first session faulted in
    serve it."""
    import json
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", _ARENA_CHILD], capture_output=True, text=True, env=env, cwd=tests)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["entry"] == "1"
    assert got["own"][1] > 500, got
    assert got["shared"][1] < 100, got


def test_session_cache_reuses_sessions():
    clear_session_cache()
    arch = make_arch((16, 16))
    data = build_decoder_model(arch, random_params(arch)).SerializeToString()
    a = cached_session(data)
    assert cached_session(data) is a
    b = cached_session(data, threads=2)
    assert b is not a and cached_session(data, threads=2) is b
    assert cached_session(data) is a, "the cache holds several sessions"
    for threads in range(3, 3 + _CACHE_SIZE):  # as many others: the least recently used, b, goes
        cached_session(data, threads=threads)
    assert cached_session(data, threads=2) is not b
    clear_session_cache()
    assert cached_session(data) is not a


def test_files_of_one_shape_share_a_session():
    """decode() of two bitstreams of one architecture and size: one onnxruntime session."""
    from coolchic.decoder_runtime import decode, ort_session

    clear_session_cache()
    for name in ("kodim01_mop.cool", "kodim02_mop_debug.cool"):
        decode(BENCH_DATA / name)
    assert len(ort_session._cache) == 1
    clear_session_cache()


def test_proto_writer_agrees_with_onnx():
    from onnx import AttributeProto, helper, numpy_helper

    from coolchic.decoder_runtime import onnx_proto

    n = onnx.NodeProto.FromString(
        onnx_proto.node("Pad", ["x", ""], ["y"], "pad", {"ints": [-1, 0, 2**40], "f": -0.75, "i": -3, "s": "edge"})
    )
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    assert attrs == {"ints": [-1, 0, 2**40], "f": -0.75, "i": -3, "s": b"edge"}
    assert [a.type for a in n.attribute] == [AttributeProto.FLOAT, AttributeProto.INT, AttributeProto.INTS,
                                             AttributeProto.STRING]
    assert list(n.input) == ["x", ""] and n.op_type == "Pad"
    a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    t = onnx.TensorProto.FromString(onnx_proto.tensor("w", a))
    np.testing.assert_array_equal(numpy_helper.to_array(t), a)
    s = onnx.TensorProto.FromString(onnx_proto.tensor("s", np.asarray(np.float32(1.0))))
    assert list(s.dims) == [] and numpy_helper.to_array(s) == 1.0


def test_runtime_graph_does_not_load_onnx():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "import numpy as np\n"
        "from conftest import make_arch\n"
        "from decoder_runtime.arch import param_layout\n"
        "from decoder_runtime.reconstruct import reconstruct\n"
        "arch = make_arch((9, 11))\n"
        "params = {p.name: np.full(p.shape, 0.1, np.float32) for p in param_layout(arch)}\n"
        "latents = [np.ones((h, w), np.int32) for h, w in arch.latent_grid_sizes()]\n"
        "print(reconstruct(arch, params, latents).width)\n"
    )
    import pathlib

    here = pathlib.Path(__file__).parent
    r = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True, text=True, timeout=60,
                       env={**__import__("os").environ, "PYTHONPATH": str(here.parent)})
    assert r.returncode == 0 and r.stdout.strip() == "11", r.stderr


def test_residual_layers_fold_into_their_convolution():
    """conv(x, W) + x runs as one Conv with W + I at the centre tap: no Add in the graph, and each
    ReLU after a Conv (onnxruntime fuses the pair)."""
    arch = make_arch((33, 47), latent_resolution=(0, 5))
    assert any(layer.residual for layer in arch.layers_synthesis)
    model = build_decoder_model(arch, random_params(arch))
    ops = [n.op_type for n in model.graph.node]
    assert "Add" not in ops
    produced_by = {o: n for n in model.graph.node for o in n.output}
    assert all(produced_by[n.input[0]].op_type == "Conv" for n in model.graph.node if n.op_type == "Relu")
