"""Safe to embed: the numba cache on a read-only install and its invalidation
across kernel modules, concurrent decodes in threads, and no process-wide
side effects (umask) from the runtime."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from coolchic.decoder_runtime import atomic_file, decode, jit
from coolchic.decoder_runtime.bitstream import read_bitstream
from coolchic.decoder_runtime.latent_codec import decode_latents
from coolchic.export.bitstream_writer import write_bitstream

from conftest import REPO, make_arch, random_int_model

GOLDEN = REPO / "tests" / "data" / "golden_v1.cool"
GOLDEN_LATENTS_SHA256 = "11fe27b143e1a8dc4faeb982888b3baca2c899d442795b5293e29fb49f6f3afc"  # as tests/test_golden.py


def _sha(arrays) -> str:
    """As the child computes it (and, for int32 latents, as tests/test_golden.py)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()


# Runs in a fresh interpreter whose current directory holds a copy of the package.
# Modes: "image" decodes GOLDEN, "latents" decodes its latents only, "kernel"
# runs one small kernel, "precompile" compiles the kernels as a wheel build
# does; prints what it got and what the numba cache did.
CHILD = textwrap.dedent(
    """
    import hashlib, json, pathlib, sys, warnings
    import numpy as np
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from coolchic import decoder_runtime
        from coolchic.decoder_runtime import latent_codec, range_coder
        from coolchic.decoder_runtime.bitstream import read_bitstream
        result = {"file": decoder_runtime.__file__}
        try:
            if sys.argv[1] == "image":
                arrays = decoder_runtime.decode(sys.argv[2]).image.planes
            elif sys.argv[1] == "precompile":
                from coolchic.decoder_runtime.precompile import precompile
                precompile()
                arrays = []
            elif sys.argv[1] == "latents":
                arrays = latent_codec.decode_latents(read_bitstream(pathlib.Path(sys.argv[2]).read_bytes()))
            else:
                st = np.zeros(4, np.int64)
                range_coder.decoder_init(np.frombuffer(bytes([1, 2, 3, 4, 5]), np.uint8), st)
                arrays = [st]
            h = hashlib.sha256()
            for a in arrays:
                h.update(a.tobytes())
            result["sha"] = h.hexdigest()
        except decoder_runtime.CoolChicError as e:
            result["error"] = str(e)
    stats = latent_codec._decode_stripes.stats  # the kernel every latent decode compiles or loads
    result["cache_path"] = stats.cache_path
    result["hits"] = sum(stats.cache_hits.values())
    result["misses"] = sum(stats.cache_misses.values())
    result["warnings"] = [[w.category.__name__, str(w.message)] for w in caught]
    # numba's implementation registries: imported by a compile, not needed to load a cached kernel.
    result["registries_loaded"] = "numba.np.linalg" in sys.modules
    print(json.dumps(result))
    """
)


def _copy_package(tmp_path):
    """``site/coolchic/decoder_runtime``, laid out as an install; the child's
    current directory comes first on its path, before the editable checkout."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "decoder_runtime", site / "coolchic" / "decoder_runtime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "coolchic" / "__init__.py", site / "coolchic" / "__init__.py")
    return site


def _run_child(site, mode, env_updates):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH", "NUMBA_CACHE_LOCATOR_CLASSES")}
    env.update({"PYTHONDONTWRITEBYTECODE": "1", **env_updates})
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(GOLDEN)], cwd=site, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["file"] == str(site / "coolchic" / "decoder_runtime" / "__init__.py")  # the copy, not the checkout
    return out


def _make_read_only(paths):
    for top in paths:
        for root, dirs, files in os.walk(top):
            for f in files:
                os.chmod(os.path.join(root, f), 0o444)
        for root, dirs, files in os.walk(top, topdown=False):
            os.chmod(root, 0o555)


def _make_writable(paths):
    for top in paths:
        if top.exists() and top.is_dir():
            os.chmod(top, 0o755)
            for root, dirs, files in os.walk(top):
                for d in dirs:
                    os.chmod(os.path.join(root, d), 0o755)
                for f in files:
                    os.chmod(os.path.join(root, f), 0o644)


@pytest.fixture
def read_only_install(tmp_path):
    """A copy of the package and a home in which nothing can be created.

    chmod makes them read-only; where it binds nobody (root: os.access still
    says writable), a regular file named ``__pycache__`` sits in the package
    and the home lies under a regular file, so that creating the in-tree or
    the user cache directory fails as on a read-only install.
    """
    site = _copy_package(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    _make_read_only([site, home])
    if os.access(site / "coolchic" / "decoder_runtime", os.W_OK):
        _make_writable([site, home])
        (site / "coolchic" / "decoder_runtime" / "__pycache__").write_bytes(b"")
        (tmp_path / "not_a_dir").write_bytes(b"")
        home = tmp_path / "not_a_dir" / "home"
    for blocked in (site / "coolchic" / "decoder_runtime" / "__pycache__", home / ".cache"):
        with pytest.raises(OSError):
            os.makedirs(blocked / "numba")
    yield site, home, tmp
    _make_writable([site, tmp_path / "home"])


@pytest.mark.slow
def test_read_only_install_and_home_decode_with_a_warning(read_only_install):
    site, home, tmp = read_only_install
    want = _sha(decode(GOLDEN.read_bytes()).image.planes)
    env = {"HOME": str(home), "TMPDIR": str(tmp)}
    first = _run_child(site, "image", env)
    assert first.get("sha") == want, first
    private = tmp / f"coolchic-numba-{os.getuid()}"
    assert first["cache_path"].startswith(str(private)) and first["misses"] >= 1
    jit_warnings = [m for c, m in first["warnings"] if c == "JitCacheWarning"]
    assert len(jit_warnings) == 1 and f"cached in {private}" in jit_warnings[0], first["warnings"]
    assert oct(private.stat().st_mode & 0o777) == oct(0o700)
    # A second process finds the kernels in that cache instead of compiling them.
    second = _run_child(site, "image", env)
    assert second.get("sha") == want and second["hits"] >= 1 and second["misses"] == 0, second


def test_no_writable_cache_anywhere_runs_uncached_with_a_warning(read_only_install):
    """The private temp directory exists but others can write to it (or it is not ours): it is refused."""
    site, home, tmp = read_only_install
    private = tmp / f"coolchic-numba-{os.getuid()}"
    private.mkdir()
    os.chmod(private, 0o777)
    out = _run_child(site, "kernel", {"HOME": str(home), "TMPDIR": str(tmp)})
    st = np.array([4, 0x01020304, 0xFFFFFFFF, 0], np.int64)  # decoder_init: position, code, range, status
    assert out.get("sha") == hashlib.sha256(st.tobytes()).hexdigest(), out
    assert out["cache_path"] is None  # numba's NullCache: nothing cached
    jit_warnings = [m for c, m in out["warnings"] if c == "JitCacheWarning"]
    assert len(jit_warnings) == 1 and "not cached" in jit_warnings[0], out["warnings"]
    assert list(private.iterdir()) == []


@pytest.mark.slow
def test_a_change_in_range_coder_recompiles_the_latent_decoder(tmp_path):
    """_decode_stripes (latent_codec.py) inlines range_coder.py's code and constants:
    changing range_coder.py alone must not leave a stale cached kernel."""
    site = _copy_package(tmp_path)
    env = {"HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    first = _run_child(site, "latents", env)
    assert first.get("sha") == GOLDEN_LATENTS_SHA256 and first["misses"] >= 1, first
    assert first["cache_path"] == str(site / "coolchic" / "decoder_runtime" / "__pycache__")
    warm = _run_child(site, "latents", env)
    assert warm.get("sha") == GOLDEN_LATENTS_SHA256 and warm["hits"] >= 1 and warm["misses"] == 0, warm
    # Allow no over-read at all: every substream now "ends before its last symbol".
    rc = site / "coolchic" / "decoder_runtime" / "range_coder.py"
    src = rc.read_text()
    assert src.count("\nMAX_OVERREAD = 8\n") == 1
    rc.write_text(src.replace("\nMAX_OVERREAD = 8\n", "\nMAX_OVERREAD = -(1 << 40)\n"))
    changed = _run_child(site, "latents", env)
    assert changed["misses"] >= 1 and changed["hits"] == 0, changed
    assert changed.get("error", "").endswith("a latent substream ends before its last symbol"), changed


@pytest.mark.slow
def test_precompiled_kernels_serve_the_first_decode(tmp_path):
    """What the wheel build does (_build/coolchic_build.py): precompile into the package's
    __pycache__; a decode then compiles nothing, also when its own cache is elsewhere."""
    site = _copy_package(tmp_path)
    env = {"HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    built = _run_child(site, "precompile", env)
    shipped = site / "coolchic" / "decoder_runtime" / "__pycache__"
    assert built["cache_path"] == str(shipped) and built["misses"] == 2, built  # the int32 and int64 ARM
    kernels = sorted(p.name.split("-")[0] for p in shipped.glob("*.nbc"))
    assert kernels == (["arm_int.arm_forward"] * 2 + ["arm_int.ifce_forward", "expgolomb._read_fields", "inter._combine_kernel",
                       "inter._warp_kernel"]
                       + ["latent_codec._decode_stripes"] * 2)
    files = {p: p.stat().st_mtime_ns for p in shipped.iterdir()}
    first = _run_child(site, "image", env)
    assert first.get("sha") == _sha(decode(GOLDEN.read_bytes()).image.planes), first
    assert first["hits"] == 1 and first["misses"] == 0, first
    assert first["registries_loaded"] is False  # a quarter of a second that loading skips (jit.py)
    assert built["registries_loaded"] is True
    # Its own cache elsewhere (NUMBA_CACHE_DIR; or the home or temp directory of a
    # read-only install): the shipped kernels are read from the package, not compiled.
    elsewhere = tmp_path / "numba-cache"
    other = _run_child(site, "image", {**env, "NUMBA_CACHE_DIR": str(elsewhere)})
    assert other["cache_path"].startswith(str(elsewhere)), other
    assert other.get("sha") == first["sha"] and other["hits"] == 1 and other["misses"] == 0, other
    assert not any(elsewhere.rglob("*.nb[ic]"))
    assert {p: p.stat().st_mtime_ns for p in shipped.iterdir()} == files  # nothing rewritten


def test_cache_key_covers_every_kernel_module(tmp_path):
    """The stamp hashes every source of the package: a constant changed in any kernel module changes it."""
    site = _copy_package(tmp_path)
    pkg = site / "coolchic" / "decoder_runtime"
    stamp = jit.sources_stamp.__wrapped__  # uncached: the files change under it here
    seen = {stamp((str(pkg),))}
    for name, old, new in [("range_coder.py", "\nMAX_OVERREAD = 8\n", "\nMAX_OVERREAD = 9\n"),
                           ("arm_int.py", "\nACT_MAX = 1 << 24", "\nACT_MAX = 1 << 23"),
                           ("prob_tables.py", "\nTOTAL_BITS = 16\n", "\nTOTAL_BITS = 15\n"),
                           ("latent_codec.py", "\nMAX_ESCAPE_PREFIX = 16\n", "\nMAX_ESCAPE_PREFIX = 15\n")]:
        f = pkg / name
        assert f.read_text().count(old) == 1, name
        f.write_text(f.read_text().replace(old, new))
        seen.add(stamp((str(pkg),)))
    assert len(seen) == 5
    # The encoder's kernels (export/) inline decoder code: their key covers both packages.
    assert jit._package_dirs(str(REPO / "export" / "latent_encoder.py")) == (jit.RUNTIME_DIR, str(REPO / "export"))
    assert jit._package_dirs(str(REPO / "decoder_runtime" / "arm_int.py")) == (jit.RUNTIME_DIR,)


def _threaded(n_threads, rounds, fn):
    barrier = threading.Barrier(n_threads)
    results, errors = {}, []

    def work(i):
        try:
            barrier.wait()
            for r in range(rounds):
                results[(i, r)] = fn(i, r)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(e))

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == n_threads * rounds
    return results


@pytest.fixture(scope="module")
def four_stripes():
    arch = make_arch((64, 96), latent_resolution=(0, 3))
    q, shifts, expgol, latents = random_int_model(arch, seed=9)
    return write_bitstream(arch, q, shifts, expgol, latents, 4).data, latents


def test_concurrent_decodes_agree_with_a_single_decode(four_stripes):
    data, latents = four_stripes
    single = decode(data, threads=1).image.planes
    assert single[0].shape == (64, 96)
    # Half the calls ask for 2 threads: parallel and serial decodes overlap.
    results = _threaded(4, 4, lambda i, r: decode(data, threads=1 + (i + r) % 2).image.planes)
    for planes in results.values():
        assert len(planes) == len(single)
        for a, b in zip(planes, single):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    bs = read_bitstream(data)
    grids = _threaded(4, 3, lambda i, r: decode_latents(bs, threads=2))
    for g in grids.values():
        assert _sha(g) == _sha(latents)


def test_concurrent_parallel_decodes_under_the_workqueue_layer(four_stripes, tmp_path):
    """numba's workqueue layer aborts the process on concurrent parallel launches; the runtime makes
    no numba parallel launch at all (its stripes run on Python threads): the layer is never even loaded."""
    data, latents = four_stripes
    (tmp_path / "a.cool").write_bytes(data)
    code = textwrap.dedent(
        """
        import sys, threading, numba
        import numpy as np
        from coolchic.decoder_runtime import decode
        data = open(sys.argv[1], "rb").read()
        ref = decode(data, threads=1).image.planes
        bad = []
        def work():
            for _ in range(4):
                planes = decode(data, threads=2).image.planes
                bad.extend(i for i, (a, b) in enumerate(zip(planes, ref)) if not np.array_equal(a, b))
        ts = [threading.Thread(target=work) for _ in range(3)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        try:
            layer = numba.threading_layer()
        except ValueError:  # "Threading layer is not initialized": no parallel launch happened
            layer = "none"
        print(layer, len(bad))
        """
    )
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.cool")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["none", "0"]


def test_atomic_write_never_touches_the_umask(tmp_path, monkeypatch):
    """The file gets the mode open() gives, with no os.umask call (a process-wide race)."""
    old = os.umask(0o027)  # the test's own choice, before the guard below
    try:
        def no_umask(*_):
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", no_umask)
        atomic_file.atomic_write_bytes(tmp_path / "new.bin", b"data")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"data")
        mode = (tmp_path / "new.bin").stat().st_mode & 0o777
        assert mode == (tmp_path / "plain.bin").stat().st_mode & 0o777 == 0o640
        # open() on an existing file keeps its mode; so does the atomic replacement.
        (tmp_path / "private.bin").write_bytes(b"old")
        os.chmod(tmp_path / "private.bin", 0o600)
        atomic_file.atomic_write_bytes(tmp_path / "private.bin", b"new")
        assert (tmp_path / "private.bin").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "private.bin").read_bytes() == b"new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["new.bin", "plain.bin", "private.bin"]
    finally:
        monkeypatch.undo()
        os.umask(old)
