"""decode() and coolchic-decode end to end on small bitstreams written by the exporter."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from coolchic import decoder_runtime
from coolchic.decoder_runtime import api, cli
from coolchic.decoder_runtime.arch import synthesis_latents
from coolchic.decoder_runtime.bitstream import read_bitstream
from coolchic.decoder_runtime.errors import BitstreamError, ProviderError
from coolchic.decoder_runtime.image_io import read_image
from coolchic.decoder_runtime.reference_numpy import reference_forward, to_code_values
from coolchic.export.bitstream_writer import write_bitstream

from conftest import REPO, make_arch, random_int_model
from test_onnx_graph import random_params


def _bitstream(arch, seed=0):
    q, shifts, expgol, coded = random_int_model(arch, seed=seed, amp=12, shift=6, latent_scale=(0.5, 1.0))
    # Synthesis and upsampling weights that let the latents through, so that
    # the decoded image is not flat; quantized with the stream's 2^-6 step.
    for name, v in random_params(arch, seed).items():
        if name.startswith(("synthesis", "upsampling")):
            q[name] = np.round(v * 64).astype(np.int32)
    data = write_bitstream(arch, q, shifts, expgol, coded, 2).data
    return data, synthesis_latents(arch, coded)


@pytest.fixture(scope="module")
def rgb_stream():
    arch = make_arch((24, 40), latent_resolution=(0, 3), hyper_latent_resolution=(2, 3), ifce_resolution=(0, 1),
                     output_feature_ifce=2, flag_common_randomness=True, common_randomness_seed=3)
    data, latents = _bitstream(arch, 1)
    return arch, data, latents


def expected_planes(arch, data, latents):
    params = read_bitstream(data).float_params()
    return to_code_values(reference_forward(arch, params, latents), arch.bitdepth)


def test_decode_bytes_matches_reference(rgb_stream):
    arch, data, latents = rgb_stream
    dec = decoder_runtime.decode(data, timings=True)
    want = expected_planes(arch, data, latents)
    assert (dec.frame_data_type, dec.bitdepth, dec.to_numpy().shape) == ("rgb", 8, (24, 40, 3))
    for got, w in zip(dec.image.planes, want):
        assert np.abs(got.astype(np.int64) - w).max() <= 1
    assert len(np.unique(dec.to_numpy())) > 20, "the test stream should not decode to a flat image"
    assert set(dec.timings) >= {"parse", "latents", "upsampling_synthesis", "total"}
    assert dec.timings["total"] >= dec.timings["latents"] + dec.timings["upsampling_synthesis"]
    assert decoder_runtime.decode(data).timings is None


def test_decode_path_and_yuv420_10bit(tmp_path):
    arch = make_arch((16, 24), frame_data_type="yuv420", bitdepth=10, latent_resolution=(1, 3),
                     final_upsampling_type="bilinear")
    data, latents = _bitstream(arch, 2)
    (tmp_path / "a.cool").write_bytes(data)
    dec = decoder_runtime.decode(tmp_path / "a.cool")
    want = expected_planes(arch, data, latents)
    assert [p.shape for p in dec.image.planes] == [(16, 24), (8, 12), (8, 12)]
    assert dec.image.planes[0].dtype == np.uint16
    assert np.abs(dec.image.planes[1].astype(np.int64) - want[1][::2, ::2]).max() <= 1
    y, u, v = dec.to_numpy()
    assert (y.shape, u.shape, v.shape, u.dtype) == ((16, 24), (8, 12), (8, 12), np.uint16)
    assert dec.to_numpy()._asdict()["v"] is dec.image.planes[2]


def test_cli_writes_image(rgb_stream, tmp_path, capsys):
    arch, data, _ = rgb_stream
    (tmp_path / "in.cool").write_bytes(data)
    rc = cli.main(["-i", str(tmp_path / "in.cool"), "-o", str(tmp_path / "out.png"), "--verbose", "--threads", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"{len(data)} bytes, 40x24 rgb 8-bit" in out and "latents" in out and "upsampling_synthesis" in out
    bs = read_bitstream(data)
    latent_bytes = sum(len(s) for s in bs.substreams)
    assert (f"rate (bytes): framing {bs.header_bytes}, parameters {len(data) - latent_bytes - bs.header_bytes} "
            f"(arm ") in out and f"latents {latent_bytes} in " in out
    np.testing.assert_array_equal(read_image(tmp_path / "out.png").to_hwc(), decoder_runtime.decode(data).to_numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.cool", "out.png"]


@pytest.mark.parametrize(
    "args,match",
    [
        (["-i", "{d}/missing.cool", "-o", "{d}/o.png"], "missing.cool: no such file"),
        (["-i", "{d}/junk.cool", "-o", "{d}/o.png"], "not a coolchic bitstream"),
        (["-i", "{d}/in.cool", "-o", "{d}/o.jpg"], "unknown output extension '.jpg'"),
        (["-i", "{d}/in.cool", "-o", "{d}/o.yuv"], r"rgb image cannot be written as \.yuv"),
        (["-i", "{d}/in.cool", "-o", "{d}/nodir/o.png"], "does not exist"),
        (["-i", "{d}/in.cool", "-o", "{d}/o.png", "--provider", "cuda"], "cuda"),
    ],
)
def test_cli_errors_are_one_line(rgb_stream, tmp_path, capsys, args, match):
    import onnxruntime

    if "cuda" in args and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    (tmp_path / "in.cool").write_bytes(rgb_stream[1])
    (tmp_path / "junk.cool").write_bytes(b"\x00\x10" + bytes(100))
    rc = cli.main([a.format(d=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.startswith("coolchic-decode: error: ") and err.count("\n") == 1
    assert pytest.importorskip("re").search(match, err)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.yuv").exists()


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["-i", "x.cool"])
    assert e.value.code == 2 and "the following arguments are required: -o/--output" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["-i", "x.cool", "-o", "y.png", "--threads", "0"])
    assert e.value.code == 2 and "expected a positive integer" in capsys.readouterr().err


def test_cli_process_no_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "coolchic.decoder_runtime", "-i", str(tmp_path / "nope.cool"), "-o", str(tmp_path / "o.png")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr == f"coolchic-decode: error: {tmp_path / 'nope.cool'}: no such file\n"
    assert r.stdout == ""


def test_cli_help_reads_well():
    r = subprocess.run([sys.executable, "-m", "coolchic.decoder_runtime", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0
    for word in ("usage: coolchic-decode", "--provider {cpu,cuda}", "--threads N", "--verbose", ".yuv", "atomically"):
        assert word in r.stdout


def test_api_orders_latent_grids_finest_first(monkeypatch):
    """With hyper-latents interleaved in decoding order, the synthesis still gets latents finest first."""
    arch = make_arch((8, 8), latent_resolution=(0, 2), hyper_latent_resolution=(1, 2))
    seen = {}

    class FakeBitstream:
        def __init__(self):
            self.arch = arch

        def float_params(self):
            return {"sentinel": np.zeros(1, np.float32)}

    coded = arch.coded_grids()
    monkeypatch.setattr("coolchic.decoder_runtime.bitstream.read_bitstream", lambda data, **limits: FakeBitstream())
    monkeypatch.setattr(
        "coolchic.decoder_runtime.latent_codec.decode_latents",
        lambda bs, threads=1: [np.full((g.h, g.w), 100 * g.hyper + g.latent_index, np.int32) for g in coded],
    )

    def fake_reconstruct(a, params, latents, provider, threads, timings, tile_rows=None):
        seen["values"] = [int(y[0, 0]) for y in latents]
        seen["threads"] = threads
        return "image"

    monkeypatch.setattr("coolchic.decoder_runtime.reconstruct.reconstruct", fake_reconstruct)
    dec = api.decode(b"whatever", threads=3)
    assert dec.image == "image"
    assert seen == {"values": [0, 1, 2], "threads": 3}


def test_provider_checked_before_decoding(monkeypatch):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr("coolchic.decoder_runtime.bitstream.read_bitstream", lambda data, **limits: pytest.fail("decoded anyway"))
    with pytest.raises(ProviderError, match="not available"):
        decoder_runtime.decode(b"x", provider="cuda")


def test_bad_source():
    with pytest.raises(BitstreamError, match="too short"):
        decoder_runtime.decode(b"Cc")
    with pytest.raises(BitstreamError, match="is a directory"):
        decoder_runtime.decode(REPO)


def test_cli_verbose_sequence_says_where_each_frames_bytes_go(tmp_path, capsys):
    """Per frame of the golden sequence: the parameter section is its bits rounded up
    to a byte (2927 bits -> 366 bytes for frame 0), and the three parts add up to the section."""
    src = REPO / "tests" / "data" / "golden_v4_ipb.cool"
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "g.yuv"), "-v"], fast_exit=False) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "rate (bytes)" in ln]
    assert lines[0] == ("frame 0 (I, 2046 bytes): rate (bytes): framing 28, parameters 366 "
                        "(arm 747, upsampling 143, synthesis 2037 bits), latents 1652 in 2 substreams")
    assert [ln.split(" (")[0] for ln in lines] == ["frame 0", "frame 2", "frame 1"]
    for ln in lines:
        total = int(ln.split(", ")[1].split(" bytes")[0])
        framing = int(ln.split("framing ")[1].split(",")[0])
        params = int(ln.split("parameters ")[1].split(" ")[0])
        latents = int(ln.split("latents ")[1].split(" ")[0])
        assert framing + params + latents == total and 20 <= framing <= 40
