"""coolchic.encode / coolchic.decode: numpy arrays, PIL images and paths in, bytes out."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import coolchic
from coolchic.decoder_runtime.errors import ConfigError, CoolChicError, ImageIOError, MissingDependencyError

from conftest import REPO

QUICK = dict(lmbda=1e-3, preset="debug", dec_cfg="vlop", n_itr=10, threads=1)


@pytest.fixture(scope="module")
def rgb():
    src = np.asarray(Image.open(REPO / "examples" / "kodim15_192x128.png").convert("RGB"))
    return np.ascontiguousarray(src[40:72, 60:108])  # 32 rows x 48 columns


def _psnr(a, b, peak):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(peak**2 / mse)


def test_array_pil_image_and_path_give_the_same_bitstream(rgb, tmp_path):
    data = coolchic.encode(rgb, **QUICK)
    dec = coolchic.decode(data)
    assert data[:2] == b"Cc"
    assert dec.frame_data_type == "rgb" and dec.bitdepth == 8 and dec.to_numpy().shape == (32, 48, 3)
    assert _psnr(dec.to_numpy(), rgb, 255) > 15  # 10 iterations: poor, far from noise
    assert coolchic.encode(Image.fromarray(rgb), **QUICK) == data
    Image.fromarray(rgb).save(tmp_path / "x.png")
    assert coolchic.encode(tmp_path / "x.png", **QUICK) == data


def test_uint16_gray_array_with_its_bitdepth(rgb):
    gray10 = rgb[:, :, 1].astype(np.uint16) * 4 + 3  # 10-bit samples, 3..1023
    dec = coolchic.decode(coolchic.encode(gray10, bitdepth=10, **QUICK))
    assert (dec.frame_data_type, dec.bitdepth, dec.to_numpy().shape) == ("gray", 10, (32, 48))
    assert dec.to_numpy().dtype == np.uint16 and int(dec.to_numpy().max()) < 1024


@pytest.mark.parametrize(
    "image, kw, error, words",
    [
        (np.zeros((8, 8, 3), np.uint16), {}, ConfigError, "needs bitdepth"),
        (np.full((8, 8), 1024, np.uint16), {"bitdepth": 10}, ConfigError, "does not fit in bitdepth=10"),
        (np.zeros((8, 8, 3), np.float32), {}, ConfigError, "uint8 or uint16"),
        (np.zeros((8, 8, 4), np.uint8), {}, ConfigError, "H x W x 3"),
        (np.zeros((8, 8), np.uint8), {"bitdepth": 10}, ConfigError, "8-bit samples"),
        (Image.new("RGBA", (8, 8), (1, 2, 3, 100)), {}, ImageIOError, "transparent"),
        (Image.new("CMYK", (8, 8)), {}, ImageIOError, "mode 'CMYK'"),
        ("no/such/file.png", {}, ImageIOError, "no such file"),
        ([[1, 2], [3, 4]], {}, ConfigError, "cannot encode a list"),
        (3.5, {}, ConfigError, "cannot encode a float"),
    ],
)
def test_images_it_cannot_take_are_clear_errors(image, kw, error, words):
    with pytest.raises(error, match=words):
        coolchic.encode(image, **QUICK, **kw)


def test_opaque_alpha_is_dropped():
    from coolchic.encoding import as_raw_image

    raw = as_raw_image(Image.new("RGBA", (5, 4), (10, 20, 30, 255)))
    assert (raw.frame_data_type, raw.bitdepth, raw.width, raw.height) == ("rgb", 8, 5, 4)
    assert [int(p[0, 0]) for p in raw.planes] == [10, 20, 30]


def test_without_torch_encode_names_the_extra():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np, coolchic
        from coolchic.decoder_runtime.errors import CoolChicError
        try:
            coolchic.encode(np.zeros((8, 8, 3), np.uint8))
        except CoolChicError as e:
            print(type(e).__name__, isinstance(e, ImportError), e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("MissingDependencyError True coolchic.encode needs the encoder extra")
    assert "pip install 'coolchic[encoder]'" in r.stdout


def test_bundled_configurations_load_from_any_directory(tmp_path):
    """The shipped cfg/ files are found through the installed package, not the current directory."""
    code = ("from coolchic.encoder.presets import load_decoder_config, load_encoder_preset; "
            "print(load_encoder_preset('fast').total_iterations, load_decoder_config('mop')['spatial_context_arm'])")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.split() == ["1600", "16"]


def test_missing_dependency_error_is_a_coolchic_error():
    assert issubclass(MissingDependencyError, CoolChicError) and issubclass(MissingDependencyError, ImportError)
