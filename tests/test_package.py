"""The installed package: one `coolchic` namespace, a cheap import, no generic top-level names."""

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from importlib import metadata

import pytest

import coolchic

from conftest import REPO

GOLDEN = REPO / "tests" / "data" / "golden_v1.cool"


def test_version_comes_from_the_installed_metadata():
    assert coolchic.__version__ == metadata.version("coolchic")


def test_import_coolchic_loads_nothing_heavy():
    code = ("import sys, coolchic; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numba', 'onnxruntime', 'onnx'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "[]"


def test_an_app_with_its_own_export_and_cfg_still_works(tmp_path):
    """An application's ``export.py`` and ``cfg/`` next to it are the ones it imports,
    and coolchic keeps working beside them."""
    (tmp_path / "export.py").write_text("WHO = 'app'\n")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "__init__.py").write_text("WHO = 'app'\n")
    (tmp_path / "encoder.py").write_text("WHO = 'app'\n")
    code = textwrap.dedent(f"""
        import export, cfg, encoder
        import coolchic
        from coolchic.export.bitstream_writer import varint
        from coolchic.decoder_runtime.arch import DecoderArch
        dec = coolchic.decode({str(GOLDEN)!r})
        assert (export.WHO, cfg.WHO, encoder.WHO) == ('app', 'app', 'app')
        assert varint(300) == bytes([0xAC, 0x02])
        print(dec.image.width, dec.image.height)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["36", "20"]  # golden_v1.cool is 20 rows by 36 columns


def _build_wheel(out: Path, **env) -> list:
    """``pip wheel`` of the repository (build/ in the tree, as pip does); the wheel's file names."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(out), str(REPO)], check=True, capture_output=True, timeout=600,
                   env={**{k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}, **env})
    (whl,) = out.glob("coolchic-*.whl")
    return zipfile.ZipFile(whl).namelist()


KERNELS = "coolchic/decoder_runtime/__pycache__/"


@pytest.mark.slow
def test_wheel_holds_only_the_coolchic_namespace(tmp_path):
    names = _build_wheel(tmp_path)
    whl = next(tmp_path.glob("coolchic-*.whl"))
    # The decoder's kernels, compiled by the build (_build/coolchic_build.py):
    # the stripe decoder and the ARM it calls for both integer widths, the parameter reader,
    # the motion compensation of P and B frames, the warp of a motion field (direct B frames).
    shipped = sorted(n[len(KERNELS):].split("-")[0] for n in names if n.startswith(KERNELS) and n.endswith(".nbc"))
    assert shipped == (["arm_int.arm_forward"] * 2 + ["arm_int.ifce_forward", "expgolomb._read_fields", "inter._combine_kernel",
                       "inter._warp_kernel"]
                       + ["latent_codec._decode_stripes"] * 2)
    # Without them on request, even though build/lib still holds the previous build's.
    plain = _build_wheel(tmp_path / "plain", COOLCHIC_PRECOMPILE="0")
    assert not [n for n in plain if n.startswith(KERNELS)]
    assert set(plain) == {n for n in names if not n.startswith(KERNELS)}
    tops = {n.split("/")[0] for n in names}
    assert tops == {"coolchic", f"coolchic-{coolchic.__version__}.dist-info"}, tops
    for must in ("coolchic/decoder_runtime/range_coder.py", "coolchic/encoder/cli.py",
                 "coolchic/export/bitstream_writer.py", "coolchic/cfg/dec/mop.cfg", "coolchic/py.typed",
                 f"coolchic-{coolchic.__version__}.dist-info/licenses/LICENSE"):
        assert must in names, must
    entry = zipfile.ZipFile(whl).read(f"coolchic-{coolchic.__version__}.dist-info/entry_points.txt").decode()
    assert "coolchic-decode = coolchic.decoder_runtime.cli:main" in entry
    meta = zipfile.ZipFile(whl).read(f"coolchic-{coolchic.__version__}.dist-info/METADATA").decode()
    assert "License-Expression: BSD-3-Clause" in meta


def test_one_version_everywhere():
    from coolchic import decoder_runtime

    assert decoder_runtime.__version__ == coolchic.__version__


@pytest.mark.parametrize("prog", ["coolchic-encode", "coolchic-decode"])
def test_both_clis_print_the_version(prog):
    exe = Path(sys.executable).parent / prog
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{prog} {metadata.version('coolchic')}"


@pytest.mark.slow
def test_sdist_carries_the_build_backend(tmp_path):
    """pyproject.toml names an in-tree backend (_build/): an sdist without it could not be built."""
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '_build'); import coolchic_build as b; "
                    f"b.build_sdist({str(tmp_path)!r})"], cwd=REPO, check=True, capture_output=True, timeout=300)
    (sdist,) = tmp_path.glob("coolchic-*.tar.gz")
    import tarfile
    names = tarfile.open(sdist).getnames()
    top = f"coolchic-{coolchic.__version__}"
    assert f"{top}/_build/coolchic_build.py" in names and f"{top}/pyproject.toml" in names
    assert not [n for n in names if n.endswith((".nbi", ".nbc"))]
