"""coolchic-encode-batch: input expansion and job planning, then a real local Ray
run over two tiny images and a broken one, and a resume."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

from coolchic.decoder_runtime import decode
from coolchic.decoder_runtime.errors import ConfigError
from coolchic.decoder_runtime.image_io import read_image
from coolchic.encoder.api import psnr_db
from coolchic.encoder import batch

from conftest import REPO


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def test_inputs_from_folders_globs_and_list_files(tmp_path):
    a = _touch(tmp_path / "d" / "a.png")
    b = _touch(tmp_path / "d" / "b.ppm")
    _touch(tmp_path / "d" / "notes.txt")
    c = _touch(tmp_path / "e" / "sub" / "c.png")
    (tmp_path / "list.txt").write_text("# images\ne/sub/c.png\n\nd/a.png\n")
    assert batch.expand_inputs([str(tmp_path / "d")]) == [a, b]
    assert batch.expand_inputs([str(tmp_path / "e" / "**" / "*.png")]) == [c]
    assert batch.expand_inputs([str(tmp_path / "list.txt"), a]) == [c, a]  # each image once
    assert batch.expand_inputs([str(tmp_path / "missing.png")]) == [str(tmp_path / "missing.png")]
    with pytest.raises(ConfigError, match="names no image"):
        batch.expand_inputs([str(tmp_path / "e" / "*.yuv")])
    with pytest.raises(ConfigError, match="no such image, folder or list file"):
        batch.expand_inputs([str(tmp_path / "nothing")])


def test_jobs_per_image_and_lambda(tmp_path):
    one = batch.plan_jobs(["x/a.png"], [0.001], tmp_path)
    assert [(j.output, j.workdir) for j in one] == [(str(tmp_path / "a.cool"), str(tmp_path / ".work" / "a"))]
    two = batch.plan_jobs(["x/a.png", "y/b.png"], [0.004, 0.001], tmp_path)
    assert [(j.image, j.lmbda, j.output) for j in two] == [
        ("x/a.png", 0.004, str(tmp_path / "a_lmbda0.004.cool")),
        ("x/a.png", 0.001, str(tmp_path / "a_lmbda0.001.cool")),
        ("y/b.png", 0.004, str(tmp_path / "b_lmbda0.004.cool")),
        ("y/b.png", 0.001, str(tmp_path / "b_lmbda0.001.cool")),
    ]
    with pytest.raises(ConfigError, match="would both be written"):
        batch.plan_jobs(["x/a.png", "y/a.ppm"], [0.001], tmp_path)


def test_bad_lambda_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        batch.main(["a.png", "-o", "out", "--lmbda", "0.001,-2"])
    assert e.value.code == 2 and "positive" in capsys.readouterr().err


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=True,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_batch_on_local_ray_with_a_failure_and_a_resume(local_ray, tmp_path, capsys):
    src = np.asarray(Image.open(REPO / "examples" / "kodim15_192x128.png").convert("RGB"))
    Image.fromarray(np.ascontiguousarray(src[40:72, 60:108])).save(tmp_path / "a.png")  # 32 x 48
    Image.fromarray(np.ascontiguousarray(src[0:24, 0:40])).save(tmp_path / "b.png")  # 24 x 40
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    args = [str(tmp_path / n) for n in ("a.png", "b.png", "broken.png")] + [
        "-o", str(out), "--preset", "debug", "--dec-cfg", "vlop", "--n-itr", "10", "--lmbda", "0.001,0.004", "-q"]

    assert batch.main(args) == 1  # the broken image fails, the others go through
    text = capsys.readouterr().out
    assert "4 encoded, 0 already done, 2 failed" in text
    assert f"failed: {tmp_path / 'broken.png'} (lambda 0.001): not a PNG file" in text
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_lmbda0.001.cool", "a_lmbda0.004.cool", "b_lmbda0.001.cool", "b_lmbda0.004.cool",
                     "results.tsv"]  # no .work left behind
    lines = (out / "results.tsv").read_text().splitlines()
    assert lines[0].split("\t") == list(batch.TSV_COLUMNS)
    rows = {(r[0].rsplit("/", 1)[1], r[1]): r for r in (line.split("\t") for line in lines[1:])}
    assert sorted(rows) == [("a.png", "0.001"), ("a.png", "0.004"), ("b.png", "0.001"), ("b.png", "0.004")]
    for (name, lmbda), row in rows.items():
        cool = out / f"{name[0]}_lmbda{lmbda}.cool"
        dec = decode(cool).image
        n_bytes = cool.stat().st_size
        assert int(row[2]) == n_bytes
        assert float(row[3]) == pytest.approx(8 * n_bytes / (dec.height * dec.width), abs=1e-6)
        # The PSNR column is the decoded file's, against its source image.
        src = read_image(tmp_path / name)
        assert float(row[4]) == pytest.approx(psnr_db(src, dec), abs=0.01)
        assert float(row[5]) > 0 and float(row[6]) > 0
        assert row[7] == socket.gethostname()
    # Each lambda is its own encode (a 10-iteration debug encode is too short
    # for the rates to be ordered by lambda reliably, so only distinctness is asserted).
    for name in ("a.png", "b.png"):
        files = [(out / f"{name[0]}_lmbda{lm}.cool").read_bytes() for lm in ("0.001", "0.004")]
        assert files[0] != files[1]

    # Resume: the outputs that decode are skipped; a damaged one is encoded again.
    kept = out / "a_lmbda0.001.cool"
    mtime = kept.stat().st_mtime_ns
    damaged = out / "b_lmbda0.004.cool"
    damaged.write_bytes(damaged.read_bytes()[:-3])
    assert batch.main(args[:2] + args[3:]) == 0
    assert "1 encoded, 3 already done, 0 failed" in capsys.readouterr().out
    assert kept.stat().st_mtime_ns == mtime
    assert decode(damaged).image.width == 40
    assert len((out / "results.tsv").read_text().splitlines()) == 5


def test_without_ray_the_batch_extra_is_named(tmp_path):
    import subprocess
    import sys

    _touch(tmp_path / "a.png")
    code = ("import sys; sys.modules['ray'] = None; from coolchic.encoder import batch; "
            f"sys.exit(batch.main([{str(tmp_path / 'a.png')!r}, '-o', {str(tmp_path / 'out')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "needs the batch extra (Ray)" in r.stderr and "pip install 'coolchic[batch]'" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
