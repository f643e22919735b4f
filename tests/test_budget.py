"""The decoding resource budget, the file checks made before a file is read, and
onnxruntime failures surfacing as CoolChicError."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest

from coolchic import decoder_runtime
from coolchic.decoder_runtime import budget
from coolchic.decoder_runtime.arch import DecoderArch, parse_synthesis_layer, param_layout
from coolchic.decoder_runtime.bitstream import HEADER_PEEK, max_bitstream_bytes, read_bitstream, read_header
from coolchic.decoder_runtime.budget import DEFAULT_MAX_MEMORY, estimate_memory, parse_size
from coolchic.decoder_runtime.errors import BitstreamError, ConfigError, InferenceError, ResourceLimitError
from coolchic.decoder_runtime.latent_codec import decode_latents, workspace_bytes_bound
from coolchic.encoder.presets import DECODER_CONFIGS, decoder_config_to_param, load_decoder_config
from coolchic.export.bitstream_writer import encode_header, encode_network_params, varint, write_bitstream

from conftest import REPO, make_arch, random_int_model

MIB = 1 << 20


def _with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


@pytest.fixture(scope="module")
def small_stream():
    arch = make_arch((24, 40), latent_resolution=(0, 3), ifce_resolution=(0, 1), output_feature_ifce=2)
    q, shifts, expgol, latents = random_int_model(arch, seed=3, amp=12, shift=6)
    return arch, write_bitstream(arch, q, shifts, expgol, latents, 2).data


def _peak_python_bytes(fn) -> int:
    """Peak of the bytes Python and numpy allocate while ``fn`` runs (it is expected to raise)."""
    tracemalloc.start()
    try:
        fn()
    except Exception as e:  # the caller checks the error itself
        err = e
    else:
        err = None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, err


def _hostile_header_file(layers: str, size=(4096, 4096)) -> bytes:
    """A header for ``layers`` on ``size``, a parameter section of the right length, empty substreams."""
    arch = DecoderArch(img_size=size, layers_synthesis=tuple(parse_synthesis_layer(s, 3) for s in layers.split(",")))
    q = {p.name: np.zeros(p.shape, np.int32) for p in param_layout(arch)}
    kinds = {(p.module, p.kind) for p in param_layout(arch)}
    section = encode_network_params(arch, q, {k: 8 for k in kinds}, {k: 0 for k in kinds})
    return arch, _with_crc(encode_header(arch, 1) + varint(len(section)) + section)


# ---- sizes --------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,value",
    [("2G", 2 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("64k", 64 << 10), ("300000", 300000),
     (" 8 GB ", 8 << 30), (4096, 4096), ("1T", 1 << 40)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1G", "0", "2X", "1e9", True])
def test_parse_size_refuses(text):
    with pytest.raises(ConfigError):
        parse_size(text)


# ---- the bound ------------------------------------------------------------------
@pytest.mark.parametrize("name", DECODER_CONFIGS)
def test_default_limit_admits_every_shipped_configuration_at_max_pixels(name):
    """16.7 Mpixel (the default max_pixels), at 8 bits per pixel of file: under the default limit."""
    arch = decoder_config_to_param(load_decoder_config(name), img_size=(4096, 4096)).to_arch("rgb", 8)
    est = estimate_memory(arch, n_bytes=4096 * 4096)
    assert est.pixels == 1 << 24 and est.n_params == sum(p.size for p in param_layout(arch))
    assert 256 << 20 < est.total <= DEFAULT_MAX_MEMORY, budget.format_bytes(est.total)


def test_estimate_follows_the_graph():
    """Hand-counted walk of a one-layer graph on a single latent grid (no upsampling, no stripes)."""
    arch = make_arch((100, 50), layers="X-3-linear-none", latent_resolution=(0, 0), n_hidden_layers_arm=0)
    pix = 100 * 50
    # max(input + padded input, padded input + 3-channel output, output + clipped output); the input
    # is the caller's feed array, counted apart
    walk = max(pix + 102 * 52, 102 * 52 + 3 * pix, 3 * pix + 3 * pix)
    peak, widest = budget._walk_graph(arch, 64)
    assert (peak, widest) == (walk, 3)
    est = estimate_memory(arch, n_bytes=1000)
    graph_stage = 4 * pix + 4 * pix + int(budget.GRAPH_SLACK * 4 * walk)  # decoded int32 + float feed + graph
    assert est.graph == graph_stage
    assert est.stream == 3000 and est.params == budget.PARAM_BYTES * est.n_params
    assert est.total == budget.FIXED_BYTES + est.stream + est.params + max(est.latents, est.graph)
    # A residual layer holds its input, the padded input, the convolution's and
    # the add's outputs, and (measured) the tensor before its input.
    wide = make_arch((100, 50), layers="8-3-linear-relu,8-3-residual-relu,X-3-linear-none", latent_resolution=(0, 0))
    assert budget._walk_graph(wide, 64) == (pix + 8 * pix + 8 * 102 * 52 + 2 * 8 * pix, 8)


# ---- refusals before allocating -------------------------------------------------
def test_tiny_limit_refuses_a_real_file_before_decoding(small_stream, tmp_path, monkeypatch):
    arch, data = small_stream
    path = tmp_path / "s.cool"
    path.write_bytes(data)
    monkeypatch.setattr("coolchic.decoder_runtime.expgolomb.read_network_params",
                        lambda *a: pytest.fail("the parameter section was read"))
    est = estimate_memory(arch, len(data))
    for source in (path, data):
        with pytest.raises(ResourceLimitError) as e:
            decoder_runtime.decode(source, max_memory=64 << 10)
        msg = str(e.value)
        assert f"needs about {budget.format_bytes(est.total)}" in msg
        assert "memory limit of 64.0 KiB" in msg and "max_memory" in msg and "--max-memory 1G" in msg
    assert isinstance(e.value, BitstreamError)
    # Just above the bound, it decodes.
    monkeypatch.undo()
    assert decoder_runtime.decode(path, max_memory=est.total).to_numpy().shape == (24, 40, 3)


def test_256_channels_on_16_mpixel_is_refused_before_allocating(tmp_path):
    """About 200 bytes describing a 256-channel synthesis on 16.7 Mpixel: even in
    tiles of rows (64, the coarsest grid's stride, at least), GBs of activations."""
    arch, data = _hostile_header_file("256-3-linear-relu,X-3-linear-none", size=(512, 32768))
    assert len(data) < 20_000
    est = estimate_memory(arch, len(data))
    # At least two 256-channel tensors of a 64-row tile, float32.
    assert est.widest == 256 and est.graph > 2 * 256 * 64 * 32768 * 4
    path = tmp_path / "h.cool"
    path.write_bytes(data)
    for source in (data, path):
        peak, err = _peak_python_bytes(lambda: decoder_runtime.decode(source))
        assert isinstance(err, ResourceLimitError), err
        assert "512x32768" in str(err) and "up to 256 channels" in str(err) and "memory limit of 4.0 GiB" in str(err)
        assert peak < 2 * MIB, peak


def test_many_parameters_are_counted():
    """16 layers of 256x256x9x9 weights on an 8x8 frame: the parameters are the cost."""
    layers = ",".join(["256-9-linear-relu"] * 15 + ["X-9-linear-none"])
    arch = DecoderArch(img_size=(8, 8), latent_resolution=(0, 0),
                       layers_synthesis=tuple(parse_synthesis_layer(s, 3) for s in layers.split(",")))
    est = estimate_memory(arch)
    assert est.n_params == 74_405_189 and est.params == budget.PARAM_BYTES * 74_405_189
    assert est.params > 100 * est.graph
    with pytest.raises(ResourceLimitError, match="74405189 network parameters: 1.9 GiB"):
        budget.check_memory(arch, 0, 1 << 30)


def _tall_stream(rows: int, n_sub: int):
    """One latent grid ``rows`` x 12, ARM context 40 (wavefront slope 5), in ``n_sub`` substreams."""
    arch = make_arch((rows, 12), latent_resolution=(0, 0), spatial_context_arm=40, n_hidden_layers_arm=1)
    q, shifts, expgol, latents = random_int_model(arch, seed=1, amp=4, shift=8, latent_scale=(0.5,))
    return arch, write_bitstream(arch, q, shifts, expgol, latents, n_sub).data


def test_the_latent_decoders_work_arrays_are_counted():
    """A stripe's skewed copy holds rows * (w + slope * rows) values: 4 097 rows of
    12 latents in one substream need 642 MiB of work arrays for 49 164 latents (the
    fuzz campaign's largest allocation). They are counted, so such a file is refused
    before anything is allocated, and the bound covers what a decode allocates."""
    arch = make_arch((4097, 12), latent_resolution=(0, 0), spatial_context_arm=40, n_hidden_layers_arm=1)
    # size = (cpad + w + PAD + 5 * 4096) * (4097 + PAD), PAD = 4, cpad = 24, in int32,
    # for both integer types of the ARM; the ARM columns (8) are noise beside it.
    size = (24 + 12 + 4 + 5 * 4096) * (4097 + 4)
    assert 2 * 4 * size <= workspace_bytes_bound(arch, 1) < 2 * 4 * size + MIB
    assert estimate_memory(arch, n_substreams=1).latents > 640 * MIB
    # In 16 substreams the stripes are 257 rows: 16 times fewer rows, 7 times less
    # memory even counted for any thread count (up to 31 stripes at once).
    assert estimate_memory(arch, n_substreams=16).latents < estimate_memory(arch, n_substreams=1).latents / 7
    with pytest.raises(ResourceLimitError, match=r"4097x12 .* MiB for 49164 latents"):
        budget.check_memory(arch, 0, 256 * MIB, n_substreams=1)

    # A real file of this shape: refused by the budget before its latents are decoded.
    _, data = _tall_stream(4097, 1)
    peak, err = _peak_python_bytes(lambda: decoder_runtime.decode(data, max_memory="256M"))
    assert isinstance(err, ResourceLimitError), err
    assert peak < 2 * MIB, peak
    # Decoded, the latent decoder's allocations stay within the bound (tracemalloc
    # sees numpy's buffers): 1 025 rows, one substream, then four.
    for n_sub in (1, 4):
        arch, data = _tall_stream(1025, n_sub)
        bs = read_bitstream(data)
        decode_latents(bs, threads=1)  # the kernels loaded, the tables built
        peak, err = _peak_python_bytes(lambda: decode_latents(bs, threads=2))
        assert err is None, err
        assert peak <= estimate_memory(arch, len(data), n_substreams=n_sub).latents, (n_sub, peak)
        assert peak > workspace_bytes_bound(arch, n_sub) // 8  # the work arrays are most of it


# ---- files vetted before they are read ------------------------------------------
def test_not_a_bitstream_is_refused_unread(tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04")
        f.truncate(4 << 30)  # sparse: 4 GiB that nobody should read
    peak, err = _peak_python_bytes(lambda: decoder_runtime.decode(path))
    assert isinstance(err, BitstreamError) and "bad magic" in str(err)
    assert peak < HEADER_PEEK + MIB


def test_file_longer_than_its_header_allows_is_refused_unread(small_stream, tmp_path):
    arch, data = small_stream
    limit = max_bitstream_bytes(read_header(data))
    assert len(data) < limit < 100_000
    path = tmp_path / "padded.cool"
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(1 << 30)
    peak, err = _peak_python_bytes(lambda: decoder_runtime.decode(path))
    assert isinstance(err, BitstreamError)
    assert f"the file is {1 << 30} bytes, more than a bitstream of this header can hold ({limit} bytes)" in str(err)
    assert peak < HEADER_PEEK + MIB
    # The same bytes in memory are refused by the reader before the parameters.
    padded = _with_crc(data[:-4] + bytes(limit))
    with pytest.raises(BitstreamError, match="more than one with this header can hold"):
        read_bitstream(padded)


def test_small_corrupted_file_keeps_the_crc_message(small_stream, tmp_path):
    """A corrupted header in a small file: the error is the reader's own, as for bytes."""
    _, data = small_stream
    bad = bytearray(data)
    bad[3] = 0xFF  # height varint now runs into the next bytes
    path = tmp_path / "bad.cool"
    path.write_bytes(bytes(bad))
    with pytest.raises(BitstreamError, match="CRC-32 mismatch"):
        decoder_runtime.decode(path)
    with pytest.raises(BitstreamError, match="CRC-32 mismatch"):
        decoder_runtime.decode(bytes(bad))


def test_large_file_with_a_bad_header_is_refused_unread(small_stream, tmp_path):
    _, data = small_stream
    path = tmp_path / "bad_big.cool"
    with open(path, "wb") as f:
        f.write(b"Cc\x01" + varint(20) + varint(20) + b"\xff" * 8)
        f.truncate(1 << 30)
    peak, err = _peak_python_bytes(lambda: decoder_runtime.decode(path))
    assert isinstance(err, BitstreamError) and f"the file is {1 << 30} bytes" in str(err)
    assert peak < HEADER_PEEK + MIB


# ---- onnxruntime failures ---------------------------------------------------------
def test_onnxruntime_session_failure_is_an_inference_error():
    from coolchic.decoder_runtime.ort_session import make_session

    with pytest.raises(InferenceError, match="onnxruntime could not build the decoder graph: .*"):
        make_session(b"\x08\x07 not a model")


def test_onnxruntime_run_failure_is_an_inference_error(small_stream, monkeypatch):
    """A real onnxruntime failure inside ``sess.run`` (inputs of the wrong type) reaches the caller as
    an InferenceError with one line of explanation."""
    from coolchic.decoder_runtime import onnx_graph

    real = onnx_graph.input_feed
    monkeypatch.setattr(onnx_graph, "input_feed",
                        lambda *a: {k: v.astype(np.float64) for k, v in real(*a).items()})
    _, data = small_stream
    with pytest.raises(InferenceError, match="onnxruntime failed to run the upsampling and synthesis of a 24x40 "
                                             "frame: .*") as e:
        decoder_runtime.decode(data)
    assert "\n" not in str(e.value)


# ---- the command line ---------------------------------------------------------------
def test_cli_max_memory(small_stream, tmp_path):
    _, data = small_stream
    (tmp_path / "s.cool").write_bytes(data)
    base = [sys.executable, "-m", "coolchic.decoder_runtime", "-i", str(tmp_path / "s.cool"), "-o", str(tmp_path / "o.png")]
    r = subprocess.run(base + ["--max-memory", "100K"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("coolchic-decode: error: decoding this 24x40 bitstream needs about ")
    assert "memory limit of 100.0 KiB" in r.stderr and "--max-memory" in r.stderr and r.stderr.count("\n") == 1
    r = subprocess.run(base + ["--max-memory", "lots"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "argument --max-memory: memory size 'lots'" in r.stderr
    r = subprocess.run(base + ["--max-memory", "64M"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (0, "") and (tmp_path / "o.png").exists()


def test_out_of_memory_in_a_sequence_is_a_resource_limit_error(monkeypatch):
    """The same for decode_video, on the golden I-P-B sequence (16x32)."""
    from pathlib import Path

    def exhausted(bs, threads=1):
        return np.empty((1 << 62,), np.uint8)

    monkeypatch.setattr("coolchic.decoder_runtime.latent_codec.decode_latents", exhausted)
    path = Path(__file__).parent / "data" / "golden_v2_ipb.cool"
    with pytest.raises(ResourceLimitError, match=r"ran out of memory while decoding this 16x32 sequence "
                                                 r"\(max_memory: 4.0 GiB\)"):
        next(decoder_runtime.decode_video(path))


def test_out_of_memory_within_the_limit_is_a_resource_limit_error(small_stream, monkeypatch):
    """A machine with less memory than max_memory: numpy's MemoryError reaches the caller as a CoolChicError."""
    def exhausted(bs, threads=1):
        return np.empty((1 << 62,), np.uint8)  # more than any machine: numpy raises MemoryError

    monkeypatch.setattr("coolchic.decoder_runtime.latent_codec.decode_latents", exhausted)
    _, data = small_stream
    with pytest.raises(ResourceLimitError, match=r"ran out of memory while decoding this 24x40 bitstream "
                                                 r"\(max_memory: 4.0 GiB\); set max_memory \(--max-memory\)"):
        decoder_runtime.decode(data)


def test_direct_b_frame_memory_by_hand():
    """A direct B frame holds 10 float32 planes of work plus three per image plane."""
    from coolchic.decoder_runtime.budget import check_direct_frame_memory

    assert check_direct_frame_memory(272, 640, 3, None) == 272 * 640 * 4 * 19
    assert check_direct_frame_memory(272, 640, 1, 272 * 640 * 4 * 13) == 272 * 640 * 4 * 13
    with pytest.raises(ResourceLimitError, match=r"272x640 direct B frame needs about 12\.6 MiB.*--max-memory 1G"):
        check_direct_frame_memory(272, 640, 3, 10 << 20)


def test_frames_a_sequence_keeps_count_against_the_limit():
    """A sequence whose frames come in reverse display order makes the decoder keep every
    frame until the last: each frame's decode is checked with the frames already kept, so the
    file is refused at the frame that would pass the limit, not after it has grown."""
    from coolchic.decoder_runtime.coding_structure import FrameSpec
    from coolchic.export.sequence_writer import assemble_sequence, encode_sequence_header, write_sequence_frame

    arch = make_arch((96, 128), latent_resolution=(2, 4))
    q, shifts, expgol, latents = random_int_model(arch, seed=5, amp=6, shift=6)
    n = 5
    sections = [write_sequence_frame(FrameSpec(d, "I", (), 0), arch, q, shifts, expgol, latents, 1, n).data
                for d in reversed(range(n))]
    data = assemble_sequence(encode_sequence_header(96, 128, "rgb", 8, n, None), sections)
    image = write_bitstream(arch, q, shifts, expgol, latents, 1).data
    decode_one = estimate_memory(arch, len(image)).total
    kept = sum(p.nbytes for p in decoder_runtime.decode(image).image.planes)  # one decoded frame
    assert kept == 96 * 128 * 3  # 8-bit planes
    frames = list(decoder_runtime.decode_video(data, max_memory=decode_one + (n - 1) * kept))
    assert [f.image.planes[0].shape for f in frames] == [(96, 128)] * n
    # One byte less: the last frame, decoded beside the n - 1 frames kept, is refused.
    with pytest.raises(ResourceLimitError, match=r"needs about .*, and 144\.0 KiB more for the frames a sequence "
                                                 r"decoder keeps and this frame's motion, above the memory limit"):
        next(decoder_runtime.decode_video(data, max_memory=decode_one + (n - 1) * kept - 1))
