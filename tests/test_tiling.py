"""Tiles of rows: the graph of a band of rows gives the whole frame's values there."""

import numpy as np
import pytest
from dataclasses import replace

from coolchic import decoder_runtime
from coolchic.decoder_runtime import cli, tiling
from coolchic.decoder_runtime.arch import synthesis_latents
from coolchic.decoder_runtime.bitstream import dequantize, read_bitstream
from coolchic.decoder_runtime.budget import DEFAULT_MAX_MEMORY, estimate_memory, graph_bytes
from coolchic.decoder_runtime.errors import ImageIOError
from coolchic.decoder_runtime.image_io import encode_image, read_image
from coolchic.decoder_runtime.reconstruct import reconstruct
from coolchic.decoder_runtime.tiling import RowWindow, plan_rows, tile_bounds, tile_rows_for

from conftest import REPO, make_arch, random_int_model
from test_decode_cli import _bitstream

MOP = read_bitstream((REPO / "bench" / "data" / "kodim01_mop.cool").read_bytes()).arch


def test_rows_of_a_window_by_hand():
    # Levels 0..2 of a 64-row frame; upsampling kernel 8 (pad 2, crop 7),
    # pre-concatenation radius 3, synthesis halo 1 + 1 = 2.
    arch = make_arch((64, 16), latent_resolution=(0, 2), ups_k_size=8, ups_preconcat_k_size=7)
    w = plan_rows(arch, 16, 32)
    # D0 = [16-2, 32+2); D1 = [ceil((14+7-8+1)/2)-2, floor((33+7)/2)-2+1) = [5, 19);
    # D2 = [ceil((5+7-8+1)/2)-2, floor((18+7)/2)-2+1) = [1, 11).
    assert w == RowWindow(latent_rows=((11, 37), (2, 22), (1, 11)), dense_rows=((14, 34), (5, 19), (1, 11)),
                          out_rows=(16, 32))
    # At the frame's edges every range is clipped to its grid.
    assert plan_rows(arch, 0, 16).dense_rows[0] == (0, 18)
    # D0 = [46, 64); D1 = [ceil((46+7-8+1)/2)-2, 32) = [21, 32), so latent 1 from 21-3;
    # D2 = [ceil((21+7-8+1)/2)-2, 16) = [9, 16).
    assert plan_rows(arch, 48, 64).latent_rows == ((43, 64), (18, 32), (9, 16))


@pytest.mark.parametrize("kw", [
    dict(),
    dict(flag_common_randomness=True, common_randomness_seed=5),
    dict(frame_data_type="yuv420", bitdepth=10),
    dict(ups_k_size=16, ups_preconcat_k_size=15, linear_stabiliser_synth=True),
    dict(static_upsampling_kernel=True, hyper_latent_resolution=(3, 4)),
], ids=["plain", "common_randomness", "yuv420_10b", "k16_stabiliser", "static_hyper"])
def test_tiles_give_the_whole_frame(kw):
    arch = make_arch((200, 40), latent_resolution=(0, 4), **kw)
    q, shifts, _, coded = random_int_model(arch, amp=20, shift=6)
    params, latents = dequantize(q, shifts), synthesis_latents(arch, coded)
    whole = reconstruct(arch, params, latents, tile_rows=0)
    assert sum(len(np.unique(p)) for p in whole.planes) > 60, "a flat test image would prove nothing"
    for rows in (16, 48, 112):
        tiled = reconstruct(arch, params, latents, tile_rows=rows)
        for a, b in zip(whole.planes, tiled.planes):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.abs(a.astype(np.int32) - b.astype(np.int32)).max() <= 1
            assert np.count_nonzero(a != b) <= a.size // 1000, "float rounding may move a rare sample by one"


def test_a_window_without_the_synthesis_halo_would_differ(monkeypatch):
    """The windows are not larger than they need be: without the synthesis rows
    around a tile, its border rows come out wrong."""
    arch = make_arch((200, 40), latent_resolution=(0, 4))
    q, shifts, _, coded = random_int_model(arch, amp=20, shift=6)
    params, latents = dequantize(q, shifts), synthesis_latents(arch, coded)
    whole = reconstruct(arch, params, latents, tile_rows=0)
    monkeypatch.setattr(tiling, "synthesis_halo", lambda arch: 0)
    tiled = reconstruct(arch, params, latents, tile_rows=16)
    assert sum(np.count_nonzero(a != b) for a, b in zip(whole.planes, tiled.planes)) > 100


def test_a_final_resize_keeps_the_whole_frame():
    arch = make_arch((40, 24), latent_resolution=(1, 3), final_upsampling_type="bicubic")
    q, shifts, _, coded = random_int_model(arch, amp=20, shift=6)
    params, latents = dequantize(q, shifts), synthesis_latents(arch, coded)
    assert not tiling.can_split(arch) and tile_rows_for(arch, 1) is None
    a = reconstruct(arch, params, latents, tile_rows=0)
    b = reconstruct(arch, params, latents, tile_rows=8)
    assert all(np.array_equal(x, y) for x, y in zip(a.planes, b.planes))


def test_tile_bounds():
    assert tile_bounds(200, 48, 32) == [(0, 64), (64, 128), (128, 192), (192, 200)]
    assert tile_bounds(64, 1, 64) == [(0, 64)]


def test_the_memory_budget_picks_tiles():
    assert tile_rows_for(MOP, tiling.TILE_GRAPH_BUDGET) is None  # kodim01 stays whole
    big = replace(MOP, img_size=(2048, 3072))
    rows = tile_rows_for(big, tiling.TILE_GRAPH_BUDGET)
    assert rows % 64 == 0 and 64 <= rows < 2048
    # An 8K mop frame fits the default memory limit once computed in tiles.
    k8 = replace(MOP, img_size=(4320, 7680))
    assert estimate_memory(k8).total < DEFAULT_MAX_MEMORY
    assert graph_bytes(k8) > 4 * estimate_memory(k8).graph  # the whole frame's graph, unsplit


def test_decode_and_cli_with_tiles(tmp_path):
    arch = make_arch((136, 48), latent_resolution=(0, 3), flag_common_randomness=True, common_randomness_seed=9)
    data, _ = _bitstream(arch, 4)
    whole = decoder_runtime.decode(data, tile_rows=0).to_numpy()
    tiled = decoder_runtime.decode(data, tile_rows=16).to_numpy()
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1
    (tmp_path / "a.cool").write_bytes(data)
    assert cli.main(["-i", str(tmp_path / "a.cool"), "-o", str(tmp_path / "a.ppm"), "--tile-rows", "8"]) == 0
    assert np.array_equal(read_image(tmp_path / "a.ppm").to_hwc(), tiled)


def test_png_compress_level(tmp_path):
    img = decoder_runtime.decode(_bitstream(make_arch((64, 48)), 2)[0]).image
    fast, small = encode_image(img, ".png", 0), encode_image(img, ".png", 9)
    assert len(fast) > len(small)
    (tmp_path / "f.png").write_bytes(fast)
    assert np.array_equal(read_image(tmp_path / "f.png").to_hwc(), img.to_hwc())
    with pytest.raises(ImageIOError, match=r"PNG compression level must be an integer in \[0, 9\]"):
        encode_image(img, ".png", 10)


def test_parallel_bands():
    """Bands for threads: multiples of the coarsest stride (64 rows for kodim01's 7 levels), >= 128 rows."""
    assert tiling.parallel_bands(MOP, 1) == []
    assert tiling.parallel_bands(MOP, 2) == [(0, 256), (256, 512)]
    assert tiling.parallel_bands(MOP, 3) == [(0, 192), (192, 384), (384, 512)]
    assert tiling.parallel_bands(MOP, 16) == [(0, 128), (128, 256), (256, 384), (384, 512)]
    assert tiling.parallel_bands(replace(MOP, img_size=(200, 768)), 2) == []  # two bands would be under 128 rows
    assert tiling.parallel_bands(replace(MOP, latent_resolution=(1, 6)), 2) == []  # a final resize: no split


@pytest.mark.parametrize("name", ["kodim01_mop.cool", "kodim01_hop_debug.cool"])
def test_bands_on_two_threads_give_the_one_thread_image(name, monkeypatch):
    from coolchic.decoder_runtime import reconstruct as rc

    data = (REPO / "bench" / "data" / name).read_bytes()
    one = decoder_runtime.decode(data, threads=1).image
    calls = []
    real = rc.reconstruct_bands
    monkeypatch.setattr(rc, "reconstruct_bands", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    two = decoder_runtime.decode(data, threads=2, timings=True)
    assert calls == [[(0, 256), (256, 512)]]
    assert two.timings["upsampling_synthesis"] > 0
    assert all(np.array_equal(a, b) for a, b in zip(one.planes, two.image.planes))


def test_concurrent_decodes_on_bands():
    """Two application threads decoding with threads=2 at once: their bands share cached sessions
    (onnxruntime allows concurrent runs of one session) and both get the one-thread image."""
    import threading

    data = (REPO / "bench" / "data" / "kodim01_mop.cool").read_bytes()
    want = decoder_runtime.decode(data, threads=1).image.planes
    got, errors = [], []

    def work():
        try:
            for _ in range(2):
                got.append(decoder_runtime.decode(data, threads=2).image.planes)
        except Exception as e:  # surfaced below: an assertion in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 4
    assert all(np.array_equal(a, b) for planes in got for a, b in zip(planes, want))
