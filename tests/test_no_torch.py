"""The decoder runtime never imports torch, not even indirectly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from coolchic.export.bitstream_writer import write_bitstream

from conftest import REPO, make_arch, random_int_model

CHILD = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    from coolchic import decoder_runtime
    for m in pkgutil.iter_modules(decoder_runtime.__path__):
        if m.name != "__main__":
            importlib.import_module("coolchic.decoder_runtime." + m.name)
    from coolchic.decoder_runtime import cli
    rc = cli.main(["-i", sys.argv[1], "-o", sys.argv[2]])
    leaked = sorted(k for k, v in sys.modules.items() if v is not None and k.split(".")[0] in ("torch", "encoder"))
    print("leaked:", leaked, "rc:", rc)
    """
)


def test_decoder_runtime_runs_without_torch(tmp_path):
    arch = make_arch((16, 24), latent_resolution=(0, 2), flag_common_randomness=True)
    q, shifts, expgol, latents = random_int_model(arch, seed=4)
    (tmp_path / "a.cool").write_bytes(write_bitstream(arch, q, shifts, expgol, latents, 1).data)
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "a.cool"), str(tmp_path / "a.ppm")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "leaked: [] rc: 0", r.stdout + r.stderr
    assert (tmp_path / "a.ppm").read_bytes().startswith(b"P6\n24 16\n255\n")
