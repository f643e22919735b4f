"""The network parameter reader: bit-exact with the writer and with the
reference bit-by-bit reader, bounded on hostile sections, clear errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from coolchic.decoder_runtime import expgolomb
from coolchic.decoder_runtime.arch import modules_to_send, param_layout
from coolchic.decoder_runtime.errors import BitstreamError
from coolchic.decoder_runtime.expgolomb import (
    COUNT_BITS,
    MAX_ABS_VALUE,
    MAX_COUNT,
    MAX_SHIFT,
    SHIFT_BITS,
    _read_fields,
    module_kinds,
    read_network_params,
)
from coolchic.export.bitstream_writer import encode_network_params

from conftest import make_arch


def _fields(arch):
    return [(m, k) for m in modules_to_send(arch) for k in module_kinds(arch, m)]


def reference_read(section: bytes, arch):
    """The reader this project shipped before the numba kernel, kept as the oracle:
    bits unpacked one per byte, read one at a time in Python."""
    bits = np.unpackbits(np.frombuffer(section, dtype=np.uint8))
    pos = 0

    def read(n):
        nonlocal pos
        if pos + n > bits.size:
            raise BitstreamError("the network parameter section is truncated")
        v = 0
        for b in bits[pos:pos + n]:
            v = (v << 1) | int(b)
        pos += n
        return v

    def read_eg(k):
        nonlocal pos
        z = 0
        while pos < bits.size and bits[pos] == 0:
            z += 1
            pos += 1
            if z > 20:
                raise BitstreamError("the network parameter section holds an invalid Exp-Golomb code")
        return read(z + k + 1) - (1 << k)

    specs = param_layout(arch)
    total = sum(p.size for p in specs)
    if total > 8 * len(section):
        raise BitstreamError(
            f"the architecture has {total} network parameters but their section holds only {len(section)} bytes"
        )
    q, shifts, counts = {}, {}, {}
    for module, kind in _fields(arch):
        s, k = read(SHIFT_BITS), read(COUNT_BITS)
        if s > MAX_SHIFT or k > MAX_COUNT:
            raise BitstreamError(f"{module} {kind}: quantization shift {s} or Exp-Golomb order {k} out of range")
        shifts[(module, kind)], counts[(module, kind)] = s, k
        for p in specs:
            if (p.module, p.kind) != (module, kind):
                continue
            vals = np.empty(p.size, dtype=np.int32)
            for i in range(p.size):
                v = read_eg(k)
                if v > MAX_ABS_VALUE:
                    raise BitstreamError(f"{p.name}: a parameter exceeds the format's bound of {MAX_ABS_VALUE}")
                if v and read(1):
                    v = -v
                vals[i] = v
            q[p.name] = vals.reshape(p.shape)
    if len(section) * 8 - pos >= 8:
        raise BitstreamError("the network parameter section is longer than its parameters")
    return q, shifts, counts


def _outcome(reader, section, arch):
    try:
        q, s, c = reader(section, arch)
    except BitstreamError as e:
        return ("error", str(e))
    return ("ok", {k: v.tolist() for k, v in q.items()}, s, c)


@pytest.fixture
def arch():
    return make_arch(size=(16, 16), spatial_context_arm=8, n_hidden_layers_arm=1, ifce_resolution=(0, 1),
                     output_feature_ifce=2, linear_stabiliser_arm=True, latent_resolution=(0, 2))


def _random_values(arch, rng):
    """Magnitudes spread over every code length up to the bound, both signs, zeros, and the bound itself."""
    q = {}
    for p in param_layout(arch):
        mag = np.floor(2.0 ** rng.uniform(0, 15, p.size)).astype(np.int64) - 1
        v = np.where(rng.random(p.size) < 0.5, -mag, mag)
        v[rng.random(p.size) < 0.1] = 0
        q[p.name] = np.clip(v, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.int32).reshape(p.shape)
    first = param_layout(arch)[0].name
    q[first].flat[0], q[first].flat[1] = MAX_ABS_VALUE, -MAX_ABS_VALUE
    return q


@pytest.mark.parametrize("k", range(MAX_COUNT + 1))
def test_round_trip_with_the_writer_for_every_order(arch, k):
    rng = np.random.default_rng(100 + k)
    q = _random_values(arch, rng)
    fields = _fields(arch)
    shifts = {mk: int(rng.integers(0, MAX_SHIFT + 1)) for mk in fields}
    orders = {mk: k for mk in fields}
    section = encode_network_params(arch, q, shifts, orders)
    back, s2, k2 = read_network_params(section, arch)
    assert sorted(back) == sorted(p.name for p in param_layout(arch))
    for name, v in q.items():
        assert back[name].dtype == np.int32 and back[name].shape == v.shape
        np.testing.assert_array_equal(back[name], v)
    assert s2 == shifts and k2 == orders
    assert _outcome(read_network_params, section, arch) == _outcome(reference_read, section, arch)


def test_same_outcome_as_the_reference_reader_on_mutated_sections(arch):
    """Bit flips, truncations, extensions and random bytes: same values or same error message."""
    rng = np.random.default_rng(7)
    fields = _fields(arch)
    q = {p.name: rng.integers(-60, 61, p.shape).astype(np.int32) for p in param_layout(arch)}
    section = encode_network_params(arch, q, {mk: 8 for mk in fields}, {mk: 2 for mk in fields})
    mutants = [section[:n] for n in range(0, len(section) + 1, 3)]
    mutants += [section + bytes([b]) for b in (0, 1, 0x80, 0xFF)]
    for _ in range(150):
        b = bytearray(section)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        mutants.append(bytes(b))
    mutants += [rng.integers(0, 256, len(section), dtype=np.uint8).tobytes() for _ in range(40)]
    for _ in range(20):  # runs of zero bytes: prefixes too long for any code
        i = int(rng.integers(2, len(section) - 4))
        mutants.append(section[:i] + bytes(3) + section[i + 3:])
    kinds = set()
    for m in mutants:
        got, want = _outcome(read_network_params, m, arch), _outcome(reference_read, m, arch)
        assert got == want, (m.hex(), got[:2], want[:2])
        kinds.add(got[1] if got[0] == "error" else "ok")
    # The mutants reach every exit of the reader, not one of them.
    assert {"ok", "the network parameter section is truncated",
            "the network parameter section holds an invalid Exp-Golomb code",
            "the network parameter section is longer than its parameters"} <= kinds
    assert any("out of range" in k for k in kinds) and any("exceeds the format's bound" in k for k in kinds)


def test_kernel_never_reads_past_the_section(arch, monkeypatch):
    """The kernel's Python source, run on numpy arrays (which raise on a read past the end),
    gives the compiled kernel's outcome on hostile sections."""
    rng = np.random.default_rng(3)
    sizes = np.array([sum(p.size for p in param_layout(arch) if (p.module, p.kind) == mk) for mk in _fields(arch)],
                     dtype=np.int64)
    sections = [bytes(n) for n in (0, 1, 2, 5)] + [b"\xff" * 4, b"\x00\x40", b"\x00\x00\x00"]
    sections += [rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes() for _ in range(30)]
    sections += [b"\x00\x7f" + b"\xff" * n for n in range(8)]  # shift 0, order 15 > 12
    sections += [b"\x00\x00" + b"\xff" * n for n in range(1, 12)]  # unit codes, cut short
    zeros = {p.name: np.zeros(p.shape, np.int32) for p in param_layout(arch)}
    header = {mk: 0 for mk in _fields(arch)}
    sections.append(encode_network_params(arch, zeros, header, header))  # valid

    def run(fn, sec):
        values = np.zeros(int(sizes.sum()), np.int32)
        headers = np.zeros((sizes.size, 2), np.int64)
        info = np.zeros(3, np.int64)
        status = fn(np.frombuffer(sec, dtype=np.uint8), sizes, values, headers, info)
        return int(status), values.tolist(), headers.tolist(), info.tolist()

    compiled = [run(_read_fields, sec) for sec in sections]
    with monkeypatch.context() as mp:
        mp.setattr(expgolomb, "_bits", expgolomb._bits.py_func)  # all-Python: every index is checked
        python = [run(_read_fields.py_func, sec) for sec in sections]
    assert compiled == python
    # The plain-Python reader of ordinary sections (read_network_params) agrees with the kernel.
    assert [run(expgolomb._read_fields_py, sec) for sec in sections] == compiled
    assert {c[0] for c in compiled} == {0, 1, 2, 3, 4}  # every outcome of the kernel is reached
    assert all(c[3][0] <= 8 * len(sec) for c, sec in zip(compiled, sections))


def test_error_messages(arch):
    fields = _fields(arch)
    zeros = {p.name: np.zeros(p.shape, np.int32) for p in param_layout(arch)}
    ok = encode_network_params(arch, zeros, {mk: 3 for mk in fields}, {mk: 0 for mk in fields})
    with pytest.raises(BitstreamError, match="^the network parameter section is truncated$"):
        read_network_params(ok[:-1], arch)
    with pytest.raises(BitstreamError, match="^the network parameter section is longer than its parameters$"):
        read_network_params(ok + b"\x00", arch)
    # Shift 17 in the first field header (5 bits 10001, then order 0).
    bad_shift = bytes([0b10001000, 0]) + ok[2:]
    with pytest.raises(BitstreamError, match="^arm weight: quantization shift 17 or Exp-Golomb order 0 out of range$"):
        read_network_params(bad_shift, arch)
    # 21 zeros after the first header: a prefix longer than any legal code.
    long_prefix = bytes([0b00011000, 0]) + bytes(4) + ok[6:]
    with pytest.raises(BitstreamError, match="^the network parameter section holds an invalid Exp-Golomb code$"):
        read_network_params(long_prefix, arch)
    # The second ARM weight tensor's first value: 32768 is one past the bound.
    q = dict(zeros)
    names = [p.name for p in param_layout(arch) if (p.module, p.kind) == ("arm", "weight")]
    q[names[1]] = q[names[1]].copy()
    q[names[1]].flat[0] = MAX_ABS_VALUE
    sec = bytearray(encode_network_params(arch, q, {mk: 3 for mk in fields}, {mk: 0 for mk in fields}))
    # +32767 at order 0 is 15 zeros, '1' and 15 zeros (x = 32768), sign 0; one more makes 32768.
    n_before = int(np.prod(param_layout(arch)[0].shape))
    last_bit = 9 + n_before + 15 + 15  # index of the code's last bit
    sec[last_bit // 8] |= 0x80 >> (last_bit % 8)
    with pytest.raises(BitstreamError, match=f"^{names[1]}: a parameter exceeds the format's bound of 32767$"):
        read_network_params(bytes(sec), arch)


def _worst_case_section(arch, cut=2):
    """Field headers 'shift 0, order 0', then the 1-bit code of 0 for every value, cut short by ``cut`` bytes."""
    parts = []
    for mk in _fields(arch):
        n = sum(p.size for p in param_layout(arch) if (p.module, p.kind) == mk)
        parts += [np.zeros(9, np.uint8), np.ones(n, np.uint8)]
    full = np.packbits(np.concatenate(parts)).tobytes()
    return full[:len(full) - cut]


def test_hostile_sections_cost_milliseconds(monkeypatch):
    """5.3 M parameters, 666 kB: the former bit-by-bit reader took 8 s on the worst of these.
    (So many values go to the numba kernel, not to the plain-Python reader.)"""
    arch = make_arch(size=(8, 8), layers="256-9-linear-relu,256-9-linear-relu,X-1-linear-none",
                     latent_resolution=(0, 0))
    worst = _worst_case_section(arch)
    assert len(worst) == 666380
    cases = [(worst, "truncated"), (bytes(len(worst)), "invalid Exp-Golomb code"),
             (b"\xff" * len(worst), "shift 31 or Exp-Golomb order 15 out of range")]
    with monkeypatch.context() as mp:  # JIT warm-up of the kernel on a small section
        mp.setattr(expgolomb, "PY_READER_MAX_VALUES", 0)
        read_network_params(_worst_case_section(make_arch(size=(8, 8)), cut=0), make_arch(size=(8, 8)))
    assert sum(p.size for p in param_layout(arch)) > expgolomb.PY_READER_MAX_VALUES
    for sec, match in cases:
        t0 = time.perf_counter()
        with pytest.raises(BitstreamError, match=match):
            read_network_params(sec, arch)
        assert time.perf_counter() - t0 < 0.5


def test_module_bits_hand_counted():
    """Zeros cost k + 1 bits each at order k; each kind adds its 9-bit (shift, order) field."""
    arch = make_arch()
    specs = param_layout(arch)
    q = {p.name: np.zeros(p.shape, dtype=np.int32) for p in specs}
    expgol = {f: 0 for f in _fields(arch)}
    shifts = {f: 4 for f in _fields(arch)}
    n = {m: sum(p.size for p in specs if p.module == m) for m in modules_to_send(arch)}
    kinds = {m: len(module_kinds(arch, m)) for m in modules_to_send(arch)}
    assert expgolomb.module_bits(arch, q, expgol) == {m: 9 * kinds[m] + n[m] for m in n}
    # -3 at order 0: EG_0(3) = 00100 then a sign bit, 6 bits instead of 1.
    first_arm = next(p for p in specs if p.module == "arm")
    q[first_arm.name].flat[0] = -3
    # Order 2 for the synthesis weights: every zero costs 3 bits.
    expgol[("synthesis", "weight")] = 2
    n_syn_w = sum(p.size for p in specs if p.module == "synthesis" and p.kind == "weight")
    bits = expgolomb.module_bits(arch, q, expgol)
    assert bits["arm"] == 9 * kinds["arm"] + n["arm"] + 5
    assert bits["synthesis"] == 9 * kinds["synthesis"] + n["synthesis"] + 2 * n_syn_w
    section = encode_network_params(arch, q, shifts, expgol)
    assert len(section) == -(-sum(bits.values()) // 8)
