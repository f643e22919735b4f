"""The Pillow plugin (coolchic.pillow) with real Pillow: open, load, verify, save, broken files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import coolchic
import coolchic.pillow  # noqa: F401  (registers the format)
from coolchic.decoder_runtime.bitstream import read_bitstream
from coolchic.decoder_runtime.frame import RawImage
from coolchic.export.bitstream_writer import write_bitstream
from coolchic.pillow import yuv_to_rgb8

from conftest import REPO, make_arch, random_int_model

GOLDEN = REPO / "tests" / "data" / "golden_v1.cool"  # 20 rows x 36 columns, rgb 8 bit


def _bitstream(tmp_path, name, **arch_kw):
    n_out = 1 if arch_kw.get("frame_data_type") == "gray" else 3
    arch = make_arch((12, 20), n_out=n_out, latent_resolution=(0, 2), **arch_kw)
    q, shifts, expgol, latents = random_int_model(arch, seed=7)
    path = tmp_path / name
    path.write_bytes(write_bitstream(arch, q, shifts, expgol, latents, 1).data)
    return path


def test_open_reads_the_header_and_info():
    with Image.open(GOLDEN) as im:
        assert (im.format, im.mode, im.size) == ("COOLCHIC", "RGB", (36, 20))
        assert im.get_format_mimetype() == "image/x-coolchic"
        assert im.info["bpp"] == pytest.approx(8 * GOLDEN.stat().st_size / (20 * 36))
        assert (im.info["bitdepth"], im.info["frame_data_type"]) == (8, "rgb")
        assert im.n_frames == 1 and not im.is_animated
        cfg = im.info["dec_cfg"]
        arch = read_bitstream(GOLDEN.read_bytes()).arch
        assert cfg["arm"] == f"{arch.spatial_context_arm},{arch.n_hidden_layers_arm}"
        assert cfg["upsampling_kernel_size"] == str(arch.ups_k_size)
        assert im.info["mac_per_pixel"] > 0


def test_load_gives_the_runtime_pixels():
    with Image.open(GOLDEN) as im:
        arr = np.asarray(im)
    assert np.array_equal(arr, coolchic.decode(GOLDEN).to_numpy())


def test_high_bit_depth_gray_is_i16_with_code_values(tmp_path):
    path = _bitstream(tmp_path, "g10.cool", frame_data_type="gray", bitdepth=10)
    ref = coolchic.decode(path).to_numpy()
    with Image.open(path) as im:
        assert (im.mode, im.info["bitdepth"]) == ("I;16", 10)
        arr = np.asarray(im)
    assert arr.dtype == np.uint16 and np.array_equal(arr, ref) and int(arr.max()) < 1024


def test_yuv420_becomes_rgb(tmp_path):
    path = _bitstream(tmp_path, "y.cool", frame_data_type="yuv420", bitdepth=8)
    dec = coolchic.decode(path).image
    with Image.open(path) as im:
        assert (im.mode, im.info["yuv_to_rgb"]) == ("RGB", "BT.709 limited range")
        assert np.array_equal(np.asarray(im), yuv_to_rgb8(dec))


@pytest.mark.parametrize(
    "yuv, bitdepth, rgb",
    [
        ((235, 128, 128), 8, (255, 255, 255)),
        ((16, 128, 128), 8, (0, 0, 0)),
        ((63, 102, 240), 8, (255, 0, 0)),  # BT.709 red, rounded to 8-bit code values
        ((173, 42, 26), 8, (0, 255, 0)),  # BT.709 green
        ((940, 512, 512), 10, (255, 255, 255)),
        ((126 * 4, 128 * 4, 128 * 4), 10, (128, 128, 128)),
    ],
)
def test_bt709_limited_range(yuv, bitdepth, rgb):
    dt = np.uint8 if bitdepth == 8 else np.uint16
    img = RawImage(tuple(np.full((2, 2), c, dt) for c in yuv), "yuv444", bitdepth)
    assert np.abs(yuv_to_rgb8(img)[0, 0].astype(int) - rgb).max() <= 1


def test_yuv420_odd_size_repeats_the_last_chroma():
    y = np.full((3, 5), 126, np.uint8)
    u = np.array([[128, 90]], np.uint8)
    v = np.array([[128, 128]], np.uint8)
    rgb = yuv_to_rgb8(RawImage((y, u, v), "yuv420", 8))
    assert rgb.shape == (3, 5, 3)
    assert rgb[2, 4].tolist() == rgb[0, 2].tolist() and rgb[0, 0].tolist() == [128, 128, 128]


def test_verify_checks_the_crc():
    with Image.open(GOLDEN) as im:
        im.verify()  # sound file: no exception


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_file_raises_pillow_error_types(tmp_path, damage):
    data = bytearray(GOLDEN.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) - 9]
    bad = tmp_path / "bad.cool"
    bad.write_bytes(bytes(data))
    with Image.open(bad) as im:
        with pytest.raises(SyntaxError, match="CRC-32"):
            im.verify()
    with Image.open(bad) as im:
        with pytest.raises(OSError, match="cannot decode coolchic file"):
            im.load()


def test_other_files_are_unidentified(tmp_path):
    (tmp_path / "a.cool").write_bytes(b"not a bitstream at all")
    (tmp_path / "b.cool").write_bytes(b"Cc\x01" + b"\xff" * 20)  # our magic, a header that cannot parse
    (tmp_path / "c.cool").write_bytes(b"Cc\x02" + b"\xff" * 20)  # the same for a sequence
    (tmp_path / "d.cool").write_bytes(b"Cc\x03" + b"\x00" * 20)  # a version this plugin does not know
    for name in ("a.cool", "b.cool", "c.cool", "d.cool"):
        with pytest.raises(UnidentifiedImageError):
            Image.open(tmp_path / name)


def test_save_encodes(tmp_path):
    src = np.asarray(Image.open(REPO / "examples" / "kodim15_192x128.png").convert("RGB"))[40:72, 60:108]
    src = np.ascontiguousarray(src)
    opts = dict(lmbda=1e-3, preset="debug", dec_cfg="vlop", n_itr=10, threads=1)
    Image.fromarray(src).save(tmp_path / "x.cool", **opts)
    data = (tmp_path / "x.cool").read_bytes()
    assert data == coolchic.encode(src, **opts)
    with Image.open(tmp_path / "x.cool") as im:
        assert im.size == (48, 32) and im.info["bpp"] == pytest.approx(8 * len(data) / (48 * 32))
        assert im.info["dec_cfg"]["arm"] == "8,1"  # vlop's ARM


def test_save_without_the_encoder_is_a_clear_error(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        import os, coolchic.pillow
        from PIL import Image
        try:
            Image.new("RGB", (8, 8)).save({str(tmp_path / "x.cool")!r})
        except ImportError as e:
            print(type(e).__name__, e)
        print(os.listdir({str(tmp_path)!r}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.strip().splitlines()
    assert first.startswith("MissingDependencyError") and "coolchic[encoder]" in first
    assert second == "[]"  # Pillow removed the file it had opened


# ---- sequences -------------------------------------------------------------------
SEQUENCE = REPO / "tests" / "data" / "golden_v2_ipb.cool"  # 16x32 yuv420, I0 P2 B1, 25 fps


@pytest.fixture(scope="module")
def sequence_frames():
    from coolchic.decoder_runtime import decode_video

    frames = [yuv_to_rgb8(f.image) for f in decode_video(SEQUENCE)]
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])
    return frames


def test_a_sequence_opens_as_an_animated_image(sequence_frames):
    from PIL import ImageSequence

    with Image.open(SEQUENCE) as im:
        assert (im.format, im.mode, im.size, im.n_frames, im.is_animated) == ("COOLCHIC", "RGB", (32, 16), 3, True)
        assert im.info["duration"] == 40.0 and im.info["fps"] == 25.0
        assert im.info["bpp"] == 8 * SEQUENCE.stat().st_size / (16 * 32 * 3)
        seen = []
        for k, frame in enumerate(ImageSequence.Iterator(im)):  # display order
            assert im.tell() == k
            seen.append(im.info["frame_type"])
            assert np.array_equal(np.asarray(frame), sequence_frames[k]), k
        assert seen == ["I", "B", "P"]
        im.seek(0)  # backwards: decoded again from the first frame
        assert np.array_equal(np.asarray(im), sequence_frames[0])
        im.seek(2)  # forwards past frame 1
        assert np.array_equal(np.asarray(im), sequence_frames[2])
        with pytest.raises(EOFError):
            im.seek(3)


def test_a_sequence_from_a_file_object(sequence_frames):
    import io

    with Image.open(io.BytesIO(SEQUENCE.read_bytes())) as im:
        im.seek(1)
        assert np.array_equal(np.asarray(im), sequence_frames[1])


def test_a_corrupted_sequence_frame(tmp_path, sequence_frames):
    from coolchic.decoder_runtime.sequence import index_sequence

    data = bytearray(SEQUENCE.read_bytes())
    _, entries = index_sequence(bytes(data))
    b_frame = next(e for e in entries if e.spec.display_index == 1)
    data[(b_frame.header_start + b_frame.end) // 2] ^= 0x10
    bad = tmp_path / "bad.cool"
    bad.write_bytes(bytes(data))
    with Image.open(SEQUENCE) as im:
        im.verify()
    with Image.open(bad) as im:
        with pytest.raises(SyntaxError, match="frame 1 fails its CRC-32"):
            im.verify()
    with Image.open(bad) as im:
        assert np.array_equal(np.asarray(im), sequence_frames[0])  # frame 0 is sound
        im.seek(1)
        with pytest.raises(OSError, match="cannot decode frame 1"):
            im.load()
