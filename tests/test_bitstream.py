"""Bitstream: exact round trips, compact framing, and clear errors on bad input."""

import dataclasses
import subprocess
import sys
import time
import zlib
from collections import Counter

import numpy as np
import pytest

from coolchic import decoder_runtime
from coolchic.decoder_runtime.arch import DecoderArch, SynthesisLayer, parse_synthesis_layer
from coolchic.decoder_runtime.bitstream import IMAGE_VERSION, read_bitstream
from coolchic.decoder_runtime.errors import BitstreamError, ConfigError, CoolChicError, EncodeError
from coolchic.decoder_runtime.expgolomb import exp_golomb_nbits, read_network_params
from coolchic.decoder_runtime.latent_codec import decode_latents
from coolchic.export.bitstream_writer import encode_network_params, varint, write_bitstream

from conftest import REPO, SHARED, make_arch, random_int_model

if str(REPO) not in sys.path:  # fuzz/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))
from fuzz.mutator import (  # noqa: E402
    OPERATORS,
    RngDraw,
    arch_of_fields,
    field_sizes,
    join,
    mutate,
    seed_bitstreams,
    split,
    zero_param_section,
)


@pytest.fixture
def written(small_arch):
    q, shifts, expgol, latents = random_int_model(small_arch, seed=5)
    return small_arch, q, shifts, expgol, latents, write_bitstream(small_arch, q, shifts, expgol, latents, 2)


def test_roundtrip(written):
    arch, q, shifts, expgol, latents, wb = written
    bs = read_bitstream(wb.data)
    assert bs.arch == arch and bs.frame_type == "I" and bs.version == IMAGE_VERSION == 3
    assert dict(bs.shifts) == shifts and dict(bs.expgol) == expgol
    for name, v in q.items():
        np.testing.assert_array_equal(bs.q_params[name], v)
        np.testing.assert_array_equal(bs.float_params()[name], v.astype(np.float32) / 256)
    for a, b in zip(latents, decode_latents(bs)):
        np.testing.assert_array_equal(a, b)
    assert len(wb.data) == wb.header_bytes + wb.param_bytes + wb.latent_bytes
    assert bs.header_bytes == wb.header_bytes


def test_framing_is_a_few_dozen_bytes(written):
    *_, wb = written
    assert wb.header_bytes <= 48


def test_param_section_size_matches_exp_golomb_count(small_arch):
    q, shifts, expgol, _ = random_int_model(small_arch, seed=2)
    section = encode_network_params(small_arch, q, shifts, expgol)
    n_fields = 0
    expected = 0
    from coolchic.decoder_runtime.arch import modules_to_send, param_layout
    from coolchic.decoder_runtime.expgolomb import module_kinds
    for m in modules_to_send(small_arch):
        for kind in module_kinds(small_arch, m):
            n_fields += 1
            vals = np.concatenate([q[p.name].ravel() for p in param_layout(small_arch) if p.module == m and p.kind == kind])
            expected += exp_golomb_nbits(vals, expgol[(m, kind)])
    assert len(section) == -(-(expected + 9 * n_fields) // 8)
    back, s2, e2 = read_network_params(section, small_arch)
    for k in q:
        np.testing.assert_array_equal(back[k], q[k])


def test_exp_golomb_nbits_by_hand():
    # k=0: 0 -> '1' (1 bit); 1 -> '010' + sign; 3 -> '00100' + sign.
    assert exp_golomb_nbits(np.array([0]), 0) == 1
    assert exp_golomb_nbits(np.array([1, -1]), 0) == 8
    assert exp_golomb_nbits(np.array([3]), 0) == 6
    # k=2: 0 -> '100' (3 bits); 5 -> x=9 '0 1001' (5 bits) + sign.
    assert exp_golomb_nbits(np.array([0, 5]), 2) == 3 + 6


def test_writer_rejects_out_of_range_values(small_arch):
    q, shifts, expgol, latents = random_int_model(small_arch)
    q["arm.mlp.0.bias"][0] = 40000
    with pytest.raises(EncodeError, match="bound"):
        write_bitstream(small_arch, q, shifts, expgol, latents)
    q, shifts, expgol, latents = random_int_model(small_arch)
    latents[0][0, 0] = 20000
    with pytest.raises(EncodeError, match="bound"):
        write_bitstream(small_arch, q, shifts, expgol, latents)


def _with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "too short"),
        (b"PK\x03\x04abcdefgh", "bad magic"),
        (b"Cc\x07" + b"\x00" * 10, "unsupported bitstream version 7"),
        (_with_crc(b"Cc\x01\xff\xff\x03"), "image height"),
        # 10^6 x 10^6 is refused before anything is allocated.
        (_with_crc(b"Cc\x01" + varint(10**6 - 1) + varint(10**6 - 1)), "image height"),
        (_with_crc(b"Cc\x01" + varint(29999) + varint(19999)), "above the limit"),
        (_with_crc(b"Cc\x01\x10\x10"), "truncated"),
    ],
)
def test_bad_headers(data, match):
    with pytest.raises(BitstreamError, match=match):
        read_bitstream(data)


def test_reference_bitstream_is_named():
    data = (SHARED / "data/coolchic-bitstreams/kodim14.cool").read_bytes()
    with pytest.raises(BitstreamError, match="reference Cool-chic"):
        read_bitstream(data)


def test_impossible_architecture_in_a_valid_crc(written):
    *_, wb = written
    body = bytearray(wb.data[:-4])
    body[6] = 0x09  # latent 'lo' field -> 9 > hi
    with pytest.raises(BitstreamError):
        read_bitstream(_with_crc(bytes(body)))


def test_huge_parameter_count_is_refused_without_allocation():
    from coolchic.export.bitstream_writer import encode_header
    arch = make_arch(size=(8, 8), layers="256-9-linear-relu,256-9-residual-relu,256-9-residual-relu,X-9-linear-none",
                     latent_resolution=(0, 0))
    body = encode_header(arch, 1) + varint(3) + b"\x00\x00\x00"
    with pytest.raises(BitstreamError, match="network parameters"):
        read_bitstream(_with_crc(body))


def _decode_all(data):
    bs = read_bitstream(data)
    decode_latents(bs)


def test_fuzz_truncations_flips_insertions(written):
    """Bounded fuzz: every mutation is either decoded or a BitstreamError, quickly."""
    *_, wb = written
    data = wb.data
    rng = np.random.default_rng(1234)
    mutants = [data[:n] for n in rng.integers(0, len(data), 60)]
    for _ in range(120):
        b = bytearray(data)
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 8))
        mutants.append(bytes(b))
    for _ in range(60):
        i = int(rng.integers(0, len(data)))
        mutants.append(data[:i] + bytes([int(rng.integers(0, 256))]) + data[i:])
    t0 = time.perf_counter()
    for m in mutants:
        with pytest.raises(BitstreamError):
            _decode_all(m)
    assert time.perf_counter() - t0 < 30


def test_fuzz_hostile_payload_with_valid_crc(written):
    """An attacker can fix the CRC: garbage payloads must still fail cleanly or decode."""
    *_, wb = written
    bs = read_bitstream(wb.data)
    start = len(wb.data) - 4 - sum(len(s) for s in bs.substreams)
    rng = np.random.default_rng(7)
    outcomes = Counter()
    for _ in range(60):
        body = bytearray(wb.data[:-4])
        for _ in range(4):
            i = int(rng.integers(start, len(body)))
            body[i] = int(rng.integers(0, 256))
        try:
            _decode_all(_with_crc(bytes(body)))
            outcomes["decoded"] += 1
        except Exception as e:  # recorded by type: anything but a BitstreamError fails below
            outcomes[type(e).__name__] += 1
    assert set(outcomes) <= {"decoded", "BitstreamError"}, outcomes
    # Both outcomes occur (seeded): garbage in the substreams reaches the
    # latent decoder, which either decodes it or names the fault.
    assert outcomes["decoded"] > 0 and outcomes["BitstreamError"] > 0, outcomes


# ---- structure-aware fuzzing: mutants past the CRC -----------------------------
FUZZ_LIMITS = dict(max_pixels=1 << 16, max_memory="256M")  # a mutant's decode stays small and quick


@pytest.fixture(scope="module")
def seeds():
    return seed_bitstreams()


def _outcome(data):
    """'decoded', or the CoolChicError subclass's name and its message; anything else propagates."""
    try:
        decoder_runtime.decode(data, **FUZZ_LIMITS)
        return "decoded", ""
    except CoolChicError as e:
        return type(e).__name__, str(e)


def test_mutator_cuts_and_joins_every_seed(seeds):
    for name, data in seeds.items():
        s = split(data)
        assert join(s) == data, name
        bs = read_bitstream(data)
        q, shifts, _ = read_network_params(s.params, bs.arch)
        assert dict(shifts) == dict(bs.shifts)
        assert all(np.array_equal(q[k], bs.q_params[k]) for k in bs.q_params)
        assert tuple(s.substreams) == bs.substreams
        assert arch_of_fields(s.fields) == bs.arch


def test_structure_aware_fuzz_reaches_past_the_crc(seeds):
    """Mutants of header fields, architectures (with a matching parameter section),
    parameters and substreams, CRC fixed: every decode succeeds or raises a
    CoolChicError, quickly, and the mutants reach every stage of the decoder."""
    draw = RngDraw(2024)
    names = sorted(seeds)
    stats, messages, ops_seen = Counter(), Counter(), Counter()
    worst = 0.0
    for i in range(400):
        data, ops = mutate(seeds[names[i % len(names)]], draw)
        ops_seen.update(ops)
        t0 = time.perf_counter()
        kind, msg = _outcome(data)
        dt = time.perf_counter() - t0
        if dt >= 5.0:
            # The first stripe that needs the int64 ARM compiles its kernel (seconds,
            # once per process, more on a loaded machine): time the decode once more.
            t0 = time.perf_counter()
            _outcome(data)
            dt = time.perf_counter() - t0
        worst = max(worst, dt)
        stats[kind] += 1
        for stage, key in (("crc", "CRC-32"), ("architecture", "impossible decoder"), ("params", "network parameter"),
                           ("param_bound", "a parameter exceeds"), ("latents", "grid "), ("limits", "limit")):
            if key in msg:
                messages[stage] += 1
    assert set(stats) <= {"decoded", "BitstreamError", "ResourceLimitError"}, stats
    assert worst < 5.0, f"a mutant took {worst:.1f} s to decode"
    assert set(ops_seen) == set(OPERATORS)
    # Past the CRC: only the mutants whose CRC was deliberately broken die there.
    assert messages["crc"] < 0.05 * 400, messages
    assert stats["decoded"] >= 40, stats
    for stage in ("architecture", "params", "param_bound", "latents", "limits"):
        assert messages[stage] >= 3, (stage, messages)


def test_fuzz_through_the_cli_one_line_errors(seeds, tmp_path):
    """A handful of mutants through ``python -m coolchic.decoder_runtime``, run at once: a
    decode, or one line of error and exit status 1, never a traceback."""
    draw = RngDraw(77)
    cases = []
    names = sorted(seeds)
    wanted = {"decoded": 1, "BitstreamError": 3}
    i = 0
    while any(wanted.values()):
        data, _ = mutate(seeds[names[i % len(names)]], draw)
        kind, _ = _outcome(data)
        if wanted.get(kind, 0):
            wanted[kind] -= 1
            cases.append((kind, data))
        i += 1
    cases.append(("ResourceLimitError", seeds[names[0]]))  # refused by --max-memory below
    procs = []
    for j, (kind, data) in enumerate(cases):
        src, out = tmp_path / f"m{j}.cool", tmp_path / f"m{j}.png"
        src.write_bytes(data)
        args = [sys.executable, "-m", "coolchic.decoder_runtime", "-i", str(src), "-o", str(out),
                "--max-memory", "1M" if kind == "ResourceLimitError" else "256M"]
        procs.append((kind, out, subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True)))
    for kind, out, p in procs:
        stdout, stderr = p.communicate(timeout=120)
        if kind == "decoded":
            assert (p.returncode, stderr) == (0, "") and out.exists()
        else:
            assert p.returncode == 1, stderr
            assert stderr.startswith("coolchic-decode: error: ") and stderr.count("\n") == 1, stderr
            assert "Traceback" not in stderr and not out.exists()
            if kind == "ResourceLimitError":
                assert "--max-memory" in stderr and "memory limit of 1.0 MiB" in stderr


@pytest.mark.parametrize("kernel", [0, 2, 40])
def test_crafted_synthesis_kernel_is_refused(seeds, kernel):
    """A header with an even, zero or oversized synthesis kernel and a parameter
    section that matches it exactly is refused by the architectural rules."""
    s = split(seeds["mop_ifce_hyper_cr"])
    field = next(f for f in s.fields if f.name == "layer 2 kernel")
    field.value = kernel << 2 | (field.value & 3)
    crafted = arch_of_fields(s.fields)
    sizes = field_sizes(crafted)
    s.params = zero_param_section(sizes)
    data = join(s)
    # The section is consistent with the crafted header: only the rule stops it.
    q, _, _ = read_network_params(s.params, crafted)
    assert q["synthesis.layers.2.weight"].shape == (3, 3, kernel, kernel)
    with pytest.raises(BitstreamError, match=rf"synthesis layer 2: kernel size must be odd and in \[1, 9\], got {kernel}"):
        read_bitstream(data)
    with pytest.raises(BitstreamError, match="kernel size must be odd"):
        decoder_runtime.decode(data)


def test_synthesis_layer_rules_live_in_one_place():
    with pytest.raises(ConfigError, match="kernel size must be odd"):
        SynthesisLayer(3, 2, False, True)
    with pytest.raises(ConfigError, match=r"output size must be an integer in \[1, 256\], got 257"):
        SynthesisLayer(257, 3, False, True)
    with pytest.raises(ConfigError, match="'16-4-linear-relu': kernel size must be odd"):
        parse_synthesis_layer("16-4-linear-relu", 3)
    assert parse_synthesis_layer("X-9-residual-none", 3) == SynthesisLayer(3, 9, True, False)


def _random_valid_arch(rng) -> DecoderArch:
    """A random architecture within the rules, on a tiny frame (1x1 up to 40x40)."""
    fdt = ["rgb", "yuv420", "yuv444", "gray"][int(rng.integers(0, 4))]
    h, w = int(rng.integers(1, 41)), int(rng.integers(1, 41))
    if fdt == "yuv420":
        h, w = 2 * ((h + 1) // 2), 2 * ((w + 1) // 2)
    n_out = 1 if fdt == "gray" else 3
    lo = int(rng.integers(0, 3))
    hi = lo + int(rng.integers(0, 4))
    cr = bool(rng.random() < 0.3)
    cin = (hi - lo + 1) * (2 if cr else 1)
    layers, c = [], cin
    for i in range(int(rng.integers(0, 3))):
        out = int(rng.choice([c, 2, 5, 8]))
        residual = out == c and bool(rng.random() < 0.5)
        layers.append(SynthesisLayer(out, int(rng.choice([1, 3, 5, 7, 9])), residual, bool(rng.random() < 0.5)))
        c = out
    layers.append(SynthesisLayer(n_out, int(rng.choice([1, 3, 9])), c == n_out and bool(rng.random() < 0.5), False))
    hyper = None
    if rng.random() < 0.4:
        a = int(rng.integers(0, 4))
        hyper = (a, a + int(rng.integers(0, 2)))
    ifce, nf, stack = None, 0, False
    # A range must start at a grid decoded after another (arch.ifce_grids): any
    # latent level below the coarsest, or the coarsest under a hyper-latent grid.
    feedable = list(range(lo, hi)) + ([hi] if hyper is not None and hyper[1] >= hi else [])
    if feedable and rng.random() < 0.5:
        a = int(rng.choice(feedable))
        ifce, nf, stack = (a, a + int(rng.integers(0, 2))), int(rng.integers(1, 17)), bool(rng.random() < 0.5)
    return DecoderArch(
        img_size=(h, w), frame_data_type=fdt, bitdepth=int(rng.choice([8, 10, 12, 16])), latent_resolution=(lo, hi),
        hyper_latent_resolution=hyper, spatial_context_arm=8 * int(rng.integers(1, 6)),
        n_hidden_layers_arm=int(rng.integers(0, 3)), linear_stabiliser_arm=bool(rng.random() < 0.5),
        ifce_resolution=ifce, output_feature_ifce=nf, ifce_stack=stack, ups_k_size=int(rng.choice([4, 6, 8, 16])),
        ups_preconcat_k_size=int(rng.choice([1, 3, 7, 15])), static_upsampling_kernel=bool(rng.random() < 0.3),
        layers_synthesis=tuple(layers), linear_stabiliser_synth=bool(rng.random() < 0.3),
        flag_common_randomness=cr, common_randomness_seed=int(rng.integers(0, 1 << 32)) if cr else 0,
        final_upsampling_type=["nearest", "bilinear", "bicubic"][int(rng.integers(0, 3))],
    )


def test_every_accepted_header_builds_and_runs():
    """Random architectures within the rules round-trip through the header and
    decode to an image of the right shape (onnxruntime builds and runs each graph)."""
    rng = np.random.default_rng(11)
    for i in range(30):
        arch = _random_valid_arch(rng)
        q, shifts, expgol, latents = random_int_model(arch, seed=i, amp=12, shift=6)
        data = write_bitstream(arch, q, shifts, expgol, latents, int(rng.integers(1, 4))).data
        assert read_bitstream(data).arch == arch
        dec = decoder_runtime.decode(data)
        h, w = arch.img_size
        want = [(h, w)] + ([(h // 2, w // 2)] * 2 if arch.frame_data_type == "yuv420" else [(h, w)] * (arch.n_out - 1))
        assert [p.shape for p in dec.image.planes] == want, arch
        assert all(int(p.max()) <= (1 << arch.bitdepth) - 1 for p in dec.image.planes)


@pytest.mark.parametrize("stack", [False, True])
def test_an_ifce_that_feeds_no_grid_is_refused(stack):
    """An IFCE range that holds no grid decoded after another (found by the fuzz
    campaign: a stacked one then had no layer, and the ARM looked up its shift)
    is a configuration error, and a file that declares one a BitstreamError."""
    arch = make_arch(latent_resolution=(0, 3), ifce_resolution=(0, 1), output_feature_ifce=2, ifce_stack=stack)
    with pytest.raises(ConfigError, match="feed no grid"):
        dataclasses.replace(arch, ifce_resolution=(5, 6))
    with pytest.raises(ConfigError, match="feed no grid"):
        dataclasses.replace(arch, latent_resolution=(1, 1), ifce_resolution=(1, 1))
    # A file that declares it, behind a parameter section of the size its
    # architecture implies and a recomputed CRC: refused at the header.
    q, shifts, expgol, latents = random_int_model(arch, amp=5, shift=6)
    sec = split(write_bitstream(arch, q, shifts, expgol, latents, 1).data)
    for f in sec.fields:
        if f.name in ("ifce", "ifce hi"):
            f.value = 6  # "ifce" holds a + 1, "ifce hi" b: levels 5-6, above every grid
    sec.params = zero_param_section(field_sizes(arch_of_fields(sec.fields)))
    with pytest.raises(BitstreamError, match="feed no grid"):
        decoder_runtime.decode(join(sec))
