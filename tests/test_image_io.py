"""Image files: round trips of every format, YUV names, hostile inputs, atomic writes."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from coolchic.decoder_runtime import atomic_file
from coolchic.decoder_runtime.errors import ImageIOError
from coolchic.decoder_runtime.frame import RawImage
from coolchic.decoder_runtime.image_io import parse_yuv_name, read_image, write_image, yuv_format
from coolchic.decoder_runtime.png16 import SIGNATURE, _unfilter

from conftest import SHARED

TESTDATA = SHARED / "data" / "coolchic-testdata"


def random_image(fdt, bitdepth, h=33, w=47, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.uint8 if bitdepth == 8 else np.uint16
    n = 1 if fdt == "gray" else 3
    shapes = [(h, w)] + [(h // 2, w // 2) if fdt == "yuv420" else (h, w)] * (n - 1)
    return RawImage(tuple(rng.integers(0, 1 << bitdepth, s).astype(dt) for s in shapes), fdt, bitdepth)


def assert_same(a: RawImage, b: RawImage):
    assert (a.frame_data_type, a.bitdepth) == (b.frame_data_type, b.bitdepth)
    assert len(a.planes) == len(b.planes)
    for p, q in zip(a.planes, b.planes):
        assert p.dtype == q.dtype
        np.testing.assert_array_equal(p, q)


ROUND_TRIPS = [
    ("rgb", 8, ".png"), ("rgb", 16, ".png"), ("gray", 8, ".png"), ("gray", 16, ".png"),
    ("rgb", 8, ".ppm"), ("rgb", 10, ".ppm"), ("rgb", 16, ".ppm"), ("gray", 8, ".pgm"), ("gray", 12, ".pgm"),
    ("yuv420", 8, ".yuv"), ("yuv420", 10, ".yuv"), ("yuv444", 8, ".yuv"), ("yuv444", 10, ".yuv"),
]


@pytest.mark.parametrize("fdt,bitdepth,ext", ROUND_TRIPS)
def test_round_trip(tmp_path, fdt, bitdepth, ext):
    h, w = (34, 46) if fdt == "yuv420" else (33, 47)
    img = random_image(fdt, bitdepth, h, w, seed=bitdepth)
    path = tmp_path / f"img_{w}x{h}_01p_{fdt}_{bitdepth}b{ext}"
    write_image(img, path)
    assert_same(read_image(path), img)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_file_layouts(tmp_path):
    img = RawImage((np.array([[1, 1023]], np.uint16),) * 3, "rgb", 10)
    write_image(img, tmp_path / "a.ppm")
    assert (tmp_path / "a.ppm").read_bytes() == b"P6\n2 1\n1023\n" + bytes([0, 1] * 3 + [3, 255] * 3)
    yuv = RawImage((np.array([[1, 2], [3, 4]], np.uint16), np.array([[5]], np.uint16), np.array([[6]], np.uint16)),
                   "yuv420", 10)
    write_image(yuv, tmp_path / "b_2x2_yuv420_10b.yuv")
    assert (tmp_path / "b_2x2_yuv420_10b.yuv").read_bytes() == struct.pack("<6H", 1, 2, 3, 4, 5, 6)


def test_png8_is_read_by_pillow_identically(tmp_path):
    img = random_image("rgb", 8)
    write_image(img, tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), img.to_hwc())


def test_png16_rgb_written_per_spec(tmp_path):
    img = random_image("rgb", 16, 5, 7)
    write_image(img, tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    assert data[:8] == SIGNATURE
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    assert (w, h, depth, ctype) == (7, 5, 16, 2)
    # Pillow reads 48-bit PNGs reduced to 8 bit: the high bytes must match.
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), (img.to_hwc() >> 8).astype(np.uint8))


def test_unfilter_all_filter_types_against_pillow(tmp_path):
    # Pillow's encoder picks filters adaptively per row: decoding its IDAT with
    # our unfilter and comparing with Pillow's own decoding checks all five.
    rng = np.random.default_rng(0)
    base = np.cumsum(rng.integers(-3, 4, (64, 80, 3)), axis=1) + np.arange(64)[:, None, None]
    arr = (base % 256).astype(np.uint8)
    Image.fromarray(arr, "RGB").save(tmp_path / "a.png", optimize=False)
    data = (tmp_path / "a.png").read_bytes()
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8)
    assert len(set(raw[:: 80 * 3 + 1].tolist())) >= 2, "Pillow should use several filter types"
    np.testing.assert_array_equal(_unfilter(raw, 64, 80 * 3, 3).reshape(64, 80, 3), arr)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def test_unfilter_each_filter_type():
    # The forward filters of the PNG specification, written out plainly.
    rng = np.random.default_rng(1)
    h, stride, bpp = 10, 12, 6
    img = rng.integers(0, 256, (h, stride)).tolist()
    raw = []
    for y in range(h):
        ftype = y % 5
        raw.append(ftype)
        for i in range(stride):
            a = img[y][i - bpp] if i >= bpp else 0
            b = img[y - 1][i] if y else 0
            c = img[y - 1][i - bpp] if y and i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][ftype]
            raw.append((img[y][i] - pred) % 256)
    got = _unfilter(np.array(raw, np.uint8), h, stride, bpp)
    np.testing.assert_array_equal(got, img)
    raw[0] = 7
    with pytest.raises(ImageIOError, match="unknown filter type on row 0"):
        _unfilter(np.array(raw, np.uint8), h, stride, bpp)


def test_read_testdata():
    img = read_image(TESTDATA / "kodim15_192x128_01p_yuv420_10b.yuv")
    assert (img.frame_data_type, img.bitdepth, img.width, img.height) == ("yuv420", 10, 192, 128)
    assert img.planes[1].shape == (64, 96) and img.planes[0].dtype == np.uint16
    assert 0 < int(img.planes[0].max()) <= 1023
    img8 = read_image(TESTDATA / "kodim15_192x128_01p_yuv420_8b.yuv")
    # The 10-bit clip is the 8-bit one with two more bits: same picture.
    assert np.abs(img.planes[0].astype(int) / 4 - img8.planes[0]).mean() < 1.0
    png = read_image(TESTDATA / "192x128_kodim15.png")
    assert (png.frame_data_type, png.bitdepth, png.width, png.height) == ("rgb", 8, 192, 128)
    third = read_image(TESTDATA / "D-BQSquare-3frames_224x128_60p_yuv420_8b.yuv", frame_index=2)
    raw = (TESTDATA / "D-BQSquare-3frames_224x128_60p_yuv420_8b.yuv").read_bytes()
    np.testing.assert_array_equal(third.planes[0].ravel(), np.frombuffer(raw[2 * 43008: 2 * 43008 + 28672], np.uint8))
    with pytest.raises(ImageIOError, match="frame 3 asked for, the file has 3"):
        read_image(TESTDATA / "D-BQSquare-3frames_224x128_60p_yuv420_8b.yuv", frame_index=3)


def test_yuv_name_parsing():
    assert parse_yuv_name("a/kodim15_192x128_01p_yuv420_10b.yuv") == dict(
        width=192, height=128, frame_data_type="yuv420", bitdepth=10
    )
    assert parse_yuv_name("D-BQSquare-3frames_224x128_60p_yuv444_8b.yuv") == dict(
        width=224, height=128, frame_data_type="yuv444", bitdepth=8
    )
    assert parse_yuv_name("clip_1920x1080_420_10bit.yuv") == dict(
        width=1920, height=1080, frame_data_type="yuv420", bitdepth=10
    )
    assert parse_yuv_name("noinfo.yuv") == {}
    fmt = yuv_format("x_64x32.yuv")
    assert (fmt.width, fmt.height, fmt.frame_data_type, fmt.bitdepth, fmt.frame_bytes) == (64, 32, "yuv420", 8, 3072)
    fmt = yuv_format("x_64x32_yuv420_8b.yuv", width=16, height=8, frame_data_type="yuv444", bitdepth=10)
    assert (fmt.width, fmt.height, fmt.frame_data_type, fmt.bitdepth, fmt.frame_bytes) == (16, 8, "yuv444", 10, 768)
    with pytest.raises(ImageIOError, match="frame size"):
        yuv_format("noinfo.yuv")
    with pytest.raises(ImageIOError, match="even size"):
        yuv_format("x_65x32_yuv420.yuv")


def test_yuv_explicit_format_and_size_check(tmp_path):
    p = tmp_path / "plain.yuv"
    p.write_bytes(bytes(range(24)))
    img = read_image(p, width=4, height=2, frame_data_type="yuv444", bitdepth=8)
    np.testing.assert_array_equal(img.planes[2], [[16, 17, 18, 19], [20, 21, 22, 23]])
    with pytest.raises(ImageIOError, match="not a whole number"):
        read_image(p, width=6, height=2, frame_data_type="yuv444", bitdepth=8)
    q = tmp_path / "v_2x2_yuv420_10b.yuv"
    q.write_bytes(struct.pack("<6H", 1, 2, 3, 4096, 5, 6))
    with pytest.raises(ImageIOError, match="4096 does not fit in 10 bits"):
        read_image(q)


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    "name,data,match",
    [
        ("huge.ppm", b"P6\n4000000000 4000000000\n255\n" + bytes(64), "out of range"),
        ("wide.ppm", b"P6\n100000 1\n255\n" + bytes(64), "out of range"),
        ("long.ppm", b"P6\n99999999999999999999 1\n255\n", "absurd number"),
        ("trunc.ppm", b"P6\n64 64\n255\n" + bytes(100), "truncated PPM/PGM: 100 bytes"),
        ("maxval.pgm", b"P5\n2 2\n70000\n" + bytes(8), "maxval 70000"),
        ("over.pgm", b"P5\n2 1\n100\n\x00\xff", "exceeds the header's maxval"),
        ("ascii.ppm", b"P3\n1 1\n255\n0 0 0\n", "ASCII PNM"),
        ("bad.ppm", b"GIF89a", "not a binary PPM/PGM"),
        ("junk.ppm", b"P6\n12 x\n", "malformed"),
        ("comment.ppm", b"P6\n#" + b"x" * 10000, "header longer"),
        ("empty.pgm", b"", "not a binary"),
        ("notpng.png", b"hello world, this is not a PNG file at all", "not a PNG"),
        ("hugepng.png", SIGNATURE + struct.pack(">I4sIIBBBBB", 13, b"IHDR", 1 << 30, 1 << 30, 8, 2, 0, 0, 0) + bytes(4),
         "out of range"),
    ],
)
def test_hostile_files_fail_fast(tmp_path, name, data, match):
    p = _write(tmp_path, name, data)
    t0 = time.perf_counter()
    with pytest.raises(ImageIOError, match=match):
        read_image(p)
    assert time.perf_counter() - t0 < 0.5


def test_truncated_png16(tmp_path):
    img = random_image("rgb", 16, 20, 20)
    write_image(img, tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    with pytest.raises(ImageIOError, match="truncated PNG"):
        read_image(_write(tmp_path, "b.png", data[: len(data) // 2]))


def test_corrupt_png16(tmp_path):
    img = random_image("rgb", 16, 20, 20)
    write_image(img, tmp_path / "a.png")
    data = bytearray((tmp_path / "a.png").read_bytes())
    data[45:60] = b"\xff" * 15  # inside the deflate stream of the IDAT chunk
    with pytest.raises(ImageIOError, match="corrupt PNG"):
        read_image(_write(tmp_path, "b.png", bytes(data)))


def test_yuv_name_must_match_image(tmp_path):
    img = random_image("yuv420", 10, 8, 12)
    with pytest.raises(ImageIOError, match=r"bitdepth 8 \(the image has 10\)"):
        write_image(img, tmp_path / "x_12x8_yuv420_8b.yuv")
    with pytest.raises(ImageIOError, match=r"width 16 \(the image has 12\)"):
        write_image(img, tmp_path / "x_16x8_yuv420_10b.yuv")
    write_image(img, tmp_path / "plain.yuv")  # a name without tokens states nothing
    assert list(tmp_path.iterdir()) == [tmp_path / "plain.yuv"]


def test_truncated_png8(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(ImageIOError, match="cannot read PNG"):
        read_image(_write(tmp_path, "t.png", buf.getvalue()[:-200]))


def test_png_modes(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), np.uint8)
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(read_image(tmp_path / "opaque.png").to_hwc(), rgb)
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    with pytest.raises(ImageIOError, match="transparent"):
        read_image(tmp_path / "alpha.png")
    pal = Image.fromarray(rgb, "RGB").quantize(8)
    pal.save(tmp_path / "pal.png")
    got = read_image(tmp_path / "pal.png")
    assert got.frame_data_type == "rgb"
    np.testing.assert_array_equal(got.to_hwc(), np.asarray(pal.convert("RGB")))


def test_format_must_suit_frame(tmp_path):
    with pytest.raises(ImageIOError, match=r"yuv420 image cannot be written as \.png: use \.yuv"):
        write_image(random_image("yuv420", 8, 4, 4), tmp_path / "a.png")
    with pytest.raises(ImageIOError, match=r"rgb image cannot be written as \.yuv"):
        write_image(random_image("rgb", 8), tmp_path / "a.yuv")
    with pytest.raises(ImageIOError, match=r"gray image cannot be written as \.ppm"):
        write_image(random_image("gray", 8), tmp_path / "a.ppm")
    with pytest.raises(ImageIOError, match="10-bit image cannot be stored in PNG"):
        write_image(random_image("rgb", 10), tmp_path / "a.png")
    with pytest.raises(ImageIOError, match="unknown image extension"):
        read_image(tmp_path / "a.jpg")
    with pytest.raises(ImageIOError, match="no such file"):
        read_image(tmp_path / "missing.png")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.ppm"
    target.write_bytes(b"previous")

    def boom(fd):
        raise KeyboardInterrupt  # as if Ctrl-C hit between write and rename

    monkeypatch.setattr(atomic_file.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        write_image(random_image("rgb", 8), target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.ppm"]


def test_atomic_write_midway_exception(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_file.atomic_open(target) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_file.atomic_write_bytes(tmp_path / "m.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.bin").stat().st_mode & 0o777 == 0o640


def test_write_into_missing_directory(tmp_path):
    with pytest.raises(ImageIOError, match="cannot write"):
        write_image(random_image("rgb", 8), tmp_path / "nope" / "a.png")
