"""Range coder and probability tables: exact round trips, overhead, determinism."""

import hashlib

import numpy as np
import pytest

from coolchic.decoder_runtime import range_coder as rd
import os

from coolchic.decoder_runtime import prob_tables
from coolchic.decoder_runtime.prob_tables import (
    N_FRAC,
    N_SCALE,
    TABLES_SHA256,
    TOTAL,
    build_tables,
    get_tables,
    half_width,
    symbol_bits,
)
from coolchic.export import range_encoder as re_


def test_tables_are_valid_distributions():
    t = get_tables()
    for f in range(N_FRAC):
        for k in range(N_SCALE):
            o = int(t.offset[f, k])
            n_sym = 2 * int(t.half_width[k]) + 2
            row = t.cum[o:o + n_sym + 1].astype(np.int64)
            assert row[0] == 0 and row[-1] == TOTAL
            assert np.all(np.diff(row) >= 1)


def test_tables_are_pinned():
    # Any change here changes every decoded latent: it needs a new format version.
    t = build_tables()
    assert t.cum.size == 192560
    assert [half_width(k) for k in (0, 34, 68)] == [2, 11, 684]
    assert hashlib.sha256(t.cum.tobytes()).hexdigest() == TABLES_SHA256 == (
        "34ff9401f1affa91300683fe5d7e4e9d1acfb943128942a97b57ccb7a6fd97ed"
    )


def test_table_cache_is_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = prob_tables._cache_file()
    get_tables.cache_clear()
    try:
        t = get_tables()  # builds and writes the cache
        assert os.path.exists(path)
        get_tables.cache_clear()
        np.testing.assert_array_equal(get_tables().cum, t.cum)  # read back
        with open(path, "r+b") as f:  # a damaged cache is ignored, not trusted
            f.seek(200)
            f.write(b"\xff" * 64)
        get_tables.cache_clear()
        np.testing.assert_array_equal(get_tables().cum, t.cum)
    finally:
        get_tables.cache_clear()


def test_peaked_table_costs_almost_nothing_for_zero():
    # b = e^-4.5: P(0) is 1 - 5/65536, i.e. about 1e-4 bit.
    t = get_tables()
    assert symbol_bits(t, 0, 0, 0) == pytest.approx(-np.log2(65531 / 65536))


def _roundtrip(symbols, fracs, ks, bits_every=0):
    t = get_tables()
    out = np.zeros(8 * len(symbols) + 64, dtype=np.uint8)
    st = re_.new_encoder_state()
    ideal = 0.0
    for i, (s, f, k) in enumerate(zip(symbols, fracs, ks)):
        o = t.offset[f, k]
        c0 = int(t.cum[o + s])
        fr = int(t.cum[o + s + 1]) - c0
        ideal -= np.log2(fr / TOTAL)
        re_.encode_symbol(out, st, c0, fr)
        if bits_every and i % bits_every == 0:
            re_.encode_bits(out, st, i & 0xFFFF, 16)
    n = re_.encoder_finish(out, st)
    buf = out[:n].copy()
    ds = rd.new_state()
    rd.decoder_init(buf, ds)
    for i, (s, f, k) in enumerate(zip(symbols, fracs, ks)):
        got = rd.decode_symbol(buf, ds, t.cum, t.offset[f, k], 2 * t.half_width[k] + 2)
        assert got == s, f"symbol {i}"
        if bits_every and i % bits_every == 0:
            assert rd.decode_bits(buf, ds, 16) == i & 0xFFFF
    assert ds[rd.ST_STATUS] == rd.STATUS_OK
    return n, ideal


def _draw(rng, n):
    t = get_tables()
    fracs = rng.integers(0, N_FRAC, n)
    ks = rng.integers(0, N_SCALE, n)
    syms = np.empty(n, dtype=np.int64)
    for i in range(n):
        o = t.offset[fracs[i], ks[i]]
        p = np.diff(t.cum[o:o + 2 * t.half_width[ks[i]] + 3]) / TOTAL
        syms[i] = rng.choice(p.size, p=p)
    return syms, fracs, ks


def test_roundtrip_and_overhead_below_half_percent():
    rng = np.random.default_rng(0)
    syms, fracs, ks = _draw(rng, 20000)
    n, ideal = _roundtrip(syms, fracs, ks)
    assert n * 8 <= ideal * 1.005 + 16


def test_roundtrip_extreme_symbols_and_bits():
    t = get_tables()
    ks = np.array([0, 68, 68, 0, 30, 68] * 50)
    fracs = np.array([0, 15, 0, 15, 7, 8] * 50)
    # Lowest, escape and highest symbols of each table, all of very low probability.
    syms = np.array([[0, 2 * t.half_width[k] + 1, 2 * t.half_width[k]][i % 3] for i, k in enumerate(ks)])
    _roundtrip(syms, fracs, ks, bits_every=7)


def test_empty_stream_is_empty():
    out = np.zeros(16, dtype=np.uint8)
    st = re_.new_encoder_state()
    assert re_.encoder_finish(out, st) == 0
