"""Build backend of coolchic: setuptools', plus the decoder's kernels compiled into the wheel.

``pyproject.toml`` names this module as its (in-tree, PEP 517) backend. It is
``setuptools.build_meta`` with two additions, for wheels only:

* ``get_requires_for_build_wheel`` adds numpy and numba to the build
  environment;
* ``build_py`` (the command that lays the packages out in ``build/lib``)
  then runs ``python -m coolchic.decoder_runtime.precompile`` on that copy, so
  that numba compiles the latent decoder's kernels into
  ``coolchic/decoder_runtime/__pycache__`` and they install with the package:
  the first decode after ``pip install .`` loads them instead of spending
  seconds compiling (``bench/cold_start.py --fresh-install``).

Compiled code fits the build machine's CPU and numba version; on another
machine numba ignores it and compiles at the first decode, as without it.
The step never fails a build: without numba, or if compiling fails, the wheel
is built without kernels and says so. ``COOLCHIC_PRECOMPILE=0`` skips it (for
wheels meant for other machines). Editable installs and sdists are untouched.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 - the PEP 517 hooks we do not change
from setuptools.command.build_py import build_py as _build_py

KERNEL_REQUIREMENTS = ["numpy>=1.24", "numba>=0.59"]  # as [project] dependencies


def _enabled() -> bool:
    return os.environ.get("COOLCHIC_PRECOMPILE", "1") not in ("0", "false", "no")


def get_requires_for_build_wheel(config_settings=None):
    extra = KERNEL_REQUIREMENTS if _enabled() else []
    return _setuptools.get_requires_for_build_wheel(config_settings) + extra


class build_py(_build_py):
    """``build_py``, then the decoder's kernels compiled into the built package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        cache = os.path.join(self.build_lib, "coolchic", "decoder_runtime", "__pycache__")
        for stale in glob.glob(os.path.join(cache, "*.nb[ic]")):  # an earlier build's kernels: never shipped
            os.remove(stale)
        if not _enabled():
            return
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT")}
        # build/lib first; the rest of PYTHONPATH is how pip's isolated build
        # environment (numpy, numba) reaches the child.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(self.build_lib), env.get("PYTHONPATH")]))
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        cmd = [sys.executable, "-m", "coolchic.decoder_runtime.precompile"]
        try:
            # From build/lib, so that the package imported is the one built.
            r = subprocess.run(cmd, env=env, cwd=self.build_lib, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.warn(f"coolchic: decoder kernels not precompiled ({e}); the first decode compiles them")
            return
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            self.warn(f"coolchic: decoder kernels not precompiled ({tail[0]}); the first decode compiles them")
            return
        n = len(glob.glob(os.path.join(cache, "*.nbc")))
        if n == 0:
            self.warn(f"coolchic: no decoder kernel was written to {cache}; the first decode compiles them")
        else:
            self.announce(f"coolchic: {n} decoder kernel(s) precompiled into {cache}", level=3)
