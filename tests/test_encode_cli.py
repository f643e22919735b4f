"""coolchic-encode end to end: encode, decode, compare; option errors; atomic output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import coolchic
from coolchic.decoder_runtime import decode
from coolchic.decoder_runtime.image_io import read_image
from coolchic.encoder import cli

from conftest import REPO

FAST = ["--preset", "debug", "--dec-cfg", "vlop", "--n-itr", "10", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def tiny_png(tmp_path_factory):
    src = np.asarray(Image.open(REPO / "examples" / "kodim15_192x128.png").convert("RGB"))
    path = tmp_path_factory.mktemp("img") / "tiny.png"
    Image.fromarray(np.ascontiguousarray(src[40:72, 60:108])).save(path)  # 48x32
    return path


def _run(args, capsys):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _record_malloc_tuning(monkeypatch):
    from coolchic.encoder import cpu

    calls = []
    monkeypatch.setattr(cpu, "_configured", False)
    monkeypatch.setattr(cpu, "tune_malloc", lambda: calls.append("mallopt") or True)
    return calls


def test_encode_then_decode(tiny_png, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tiny.cool"
    malloc_tuning = _record_malloc_tuning(monkeypatch)
    code, stdout, err = _run(["-i", tiny_png, "-o", out, *FAST], capsys)
    assert code == 0, err
    assert malloc_tuning == ["mallopt"]  # the CLI, an application, tunes its own process
    assert out.exists() and "bpp" in stdout and "PSNR" in stdout
    dec = decode(out.read_bytes())
    ref = read_image(tiny_png)
    assert dec.image.height == 32 and dec.image.width == 48 and dec.frame_data_type == "rgb"
    # A 10-iteration encode is poor but far from noise.
    mse = np.mean((dec.to_numpy().astype(float) - ref.to_hwc().astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 15
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.cool"]  # no temporary left behind


def test_library_encode_leaves_malloc_alone(tiny_png, monkeypatch):
    """encode_image is a library call: no process-wide malloc tuning (torch threads only, as asked)."""
    import torch

    from coolchic.encoder.api import encode_image

    malloc_tuning = _record_malloc_tuning(monkeypatch)
    threads = torch.get_num_threads()
    try:
        res = encode_image(read_image(tiny_png), lmbda=1e-3, preset="debug", dec_cfg="vlop", n_itr=10, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert res.bitstream[:2] == b"Cc" and res.decoded.width == 48
    assert malloc_tuning == []


def test_encode_yuv420_10bit(tmp_path, capsys):
    src = REPO.parent / "shared" / "data" / "coolchic-testdata" / "kodim15_192x128_01p_yuv420_10b.yuv"
    if not src.exists():
        pytest.skip("shared test data not present")
    out = tmp_path / "k.cool"
    code, _, err = _run(["-i", src, "-o", out, *FAST], capsys)
    assert code == 0, err
    dec = decode(out.read_bytes())
    assert (dec.frame_data_type, dec.bitdepth) == ("yuv420", 10)
    assert [p.shape for p in dec.image.planes] == [(128, 192), (64, 96), (64, 96)]


@pytest.mark.parametrize(
    "args,message",
    [
        (["-i", "missing.png", "-o", "{out}"], "input file not found"),
        (["-i", "{png}", "-o", "{out}", "--dec-cfg", "nosuchcfg"], "nosuchcfg"),
        (["-i", "{png}", "-o", "{out}", "--arm", "12,2"], "multiple of 8"),
        (["-i", "{png}", "-o", "{out}", "--layers_synthesis", "8-2-linear-relu,X-1-linear-none"], "kernel size"),
        (["-i", "{png}", "-o", "{out}", "--upsampling_kernel_size", "3"], "even"),
        (["-i", "{bad}", "-o", "{out}"], "tiny.txt"),
        (["-i", "{png}", "-o", "/nonexistent/dir/x.cool"], "does not exist"),
    ],
)
def test_clear_errors(tiny_png, tmp_path, capsys, args, message):
    bad = tmp_path / "tiny.txt"
    bad.write_text("not an image")
    args = [a.format(png=tiny_png, bad=bad, out=tmp_path / "x.cool") for a in args]
    code, _, err = _run(FAST + args, capsys)
    assert code != 0
    assert message in err and "Traceback" not in err
    assert err.startswith("coolchic-encode: error:")
    assert not (tmp_path / "x.cool").exists()


def test_unknown_cfg_key(tiny_png, tmp_path, capsys):
    cfg = tmp_path / "my.cfg"
    cfg.write_text("arm = 8,1\nlayers_synthesis = X-1-linear-none\nn_ft_per_res = 1,1\nbogus_key = 3\n")
    code, _, err = _run(["-i", tiny_png, "-o", tmp_path / "x.cool", *FAST, "--dec-cfg", cfg], capsys)
    assert code != 0 and "bogus_key" in err and "Traceback" not in err


@pytest.mark.parametrize("lmbda", ["0", "-1", "abc", "nan"])
def test_bad_lambda(tiny_png, tmp_path, lmbda, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["-i", str(tiny_png), "-o", str(tmp_path / "x.cool"), "--lmbda", lmbda])
    assert e.value.code == 2
    assert "--lmbda" in capsys.readouterr().err


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for opt in ("--lmbda", "--preset", "--dec-cfg", "--arm", "--layers_synthesis", "--workdir", "--export-onnx"):
        assert opt in text


def test_interrupted_encode_leaves_no_output_and_resumes(tiny_png, tmp_path):
    """SIGINT in the middle of training: no output file; the workdir checkpoint resumes."""
    out = tmp_path / "x.cool"
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "coolchic.encoder.cli", "-i", str(tiny_png), "-o", str(out), "--preset", "debug",
           "--dec-cfg", "vlop", "--n-itr", "100000", "--threads", "1", "--workdir", str(work), "-q"]
    # A suite started in the background of a non-interactive shell inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt: give the child the default.
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (work / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (work / "checkpoint.pt").exists(), "no checkpoint after the warm-up"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_damaged_checkpoint_is_a_clear_error(tiny_png, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "checkpoint.pt").write_bytes(b"\x00garbage")
    code, _, err = _run(["-i", tiny_png, "-o", tmp_path / "x.cool", *FAST, "--workdir", work], capsys)
    assert code != 0 and "checkpoint" in err and "Traceback" not in err


def test_runtime_only_install_explains_missing_torch():
    code = "import sys; sys.modules['torch'] = None; from encoder.cli import main; sys.exit(main(['-i', 'a.png', '-o', 'b.cool']))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "needs PyTorch" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("where", ["output", "workdir", "export"])
def test_unwritable_places_fail_before_training(tiny_png, tmp_path, capsys, monkeypatch, where):
    """A path under a regular file cannot be written (by root either): refused before any training."""
    from coolchic.encoder import api

    monkeypatch.setattr(api, "encode_image", lambda *a, **k: pytest.fail("training started"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    opts = {"output": ["-o", blocker / "x.cool"],
            "workdir": ["-o", tmp_path / "x.cool", "--workdir", blocker / "w"],
            "export": ["-o", tmp_path / "x.cool", "--export-onnx", blocker / "onnx"]}[where]
    code, _, err = _run(["-i", tiny_png, *opts, *FAST], capsys)
    what = {"output": "output directory", "workdir": "workdir", "export": "--export-onnx directory"}[where]
    assert code == 2 and f"cannot write to the {what} {blocker}" in err and "Not a directory" in err
    assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory_fails_before_training(tiny_png, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = _run(["-i", tiny_png, "-o", ro / "x.cool", *FAST], capsys)
    finally:
        ro.chmod(0o755)
    assert code == 2 and "Permission denied" in err


def test_progress_lines_outside_a_terminal(tiny_png, tmp_path, capsys):
    args = ["-i", tiny_png, "-o", tmp_path / "x.cool", "--preset", "debug", "--dec-cfg", "vlop", "--threads", "1",
            "--log-every", "10"]
    code, _, err = _run(args, capsys)  # capsys: stderr is no terminal
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == f"coolchic {coolchic.__version__}: 48x32 rgb 8-bit, lambda 0.001, preset debug, dec-cfg vlop, 40 iterations"
    steps = [line.split() for line in lines[1:]]
    assert len(steps) >= 3 and all(s[0] == "coolchic:" and s[2] == "itr" and s[6] == "psnr" for s in steps)
    its = [int(s[3].split("/")[0]) for s in steps]
    buckets = [i // 10 for i in its]  # at most one line per 10 iterations
    assert buckets == sorted(set(buckets)) and its[0] >= 10 and its[-1] == 40


def test_version_in_the_workdir_log(tiny_png, tmp_path, capsys):
    code, _, err = _run(["-i", tiny_png, "-o", tmp_path / "x.cool", *FAST, "--workdir", tmp_path / "w"], capsys)
    assert code == 0, err
    first = (tmp_path / "w" / "log.txt").read_text().splitlines()[0]
    assert first == f"coolchic {coolchic.__version__}: lambda 0.001, preset debug, seed 0"


def test_max_memory_trains_in_bands(tmp_path, capsys):
    """A budget below the whole frame's need: bands, said in the log, same image as the whole frame."""
    src = REPO / "examples" / "kodim15_192x128.png"
    common = ["-i", src, "--preset", "debug", "--dec-cfg", "vlop", "--n-itr", "5", "--threads", "1",
              "--log-every", "1000"]
    code, _, err = _run([*common, "-o", tmp_path / "bands.cool", "--max-memory", "1M"], capsys)
    assert code == 0, err
    said = [line for line in err.splitlines() if "bands" in line]
    assert said == ["coolchic: training in 2 bands of 64 rows and ARM chunks of about 1024 values (128x192): "
                    "whole-frame training would take about 0.0 GiB"]
    code, _, err = _run([*common, "-o", tmp_path / "whole.cool"], capsys)
    assert code == 0 and "bands" not in err
    # Both decode to images of the frame's size; that bands give the whole frame's
    # gradients is tested in test_encoder_tiling.py (a 5-iteration encode is too
    # short for two float summation orders to end at the same PSNR).
    bands, whole = (decode(tmp_path / f"{n}.cool").image for n in ("bands", "whole"))
    assert (bands.height, bands.width) == (whole.height, whole.width) == (128, 192)


def test_max_memory_is_checked(tiny_png, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["-i", str(tiny_png), "-o", str(tmp_path / "x.cool"), "--max-memory", "lots"])
    assert e.value.code == 2 and "--max-memory" in capsys.readouterr().err
