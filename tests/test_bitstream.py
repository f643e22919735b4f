"""Bitstream: exact round trips, compact framing, and clear errors on bad input."""

import time
import zlib

import numpy as np
import pytest

from decoder_runtime.bitstream import read_bitstream
from decoder_runtime.errors import BitstreamError, EncodeError
from decoder_runtime.expgolomb import exp_golomb_nbits, read_network_params
from decoder_runtime.latent_codec import decode_latents
from export.bitstream_writer import encode_network_params, varint, write_bitstream

from conftest import SHARED, make_arch, random_int_model


@pytest.fixture
def written(small_arch):
    q, shifts, expgol, latents = random_int_model(small_arch, seed=5)
    return small_arch, q, shifts, expgol, latents, write_bitstream(small_arch, q, shifts, expgol, latents, 2)


def test_roundtrip(written):
    arch, q, shifts, expgol, latents, wb = written
    bs = read_bitstream(wb.data)
    assert bs.arch == arch and bs.frame_type == "I" and bs.version == 1
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
    from decoder_runtime.arch import modules_to_send, param_layout
    from decoder_runtime.expgolomb import module_kinds
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
    from export.bitstream_writer import encode_header
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
    outcomes = set()
    for _ in range(60):
        body = bytearray(wb.data[:-4])
        for _ in range(4):
            i = int(rng.integers(start, len(body)))
            body[i] = int(rng.integers(0, 256))
        try:
            _decode_all(_with_crc(bytes(body)))
            outcomes.add("decoded")
        except BitstreamError:
            outcomes.add("error")
    assert outcomes <= {"decoded", "error"}
