"""numba kernels of the project: one decorator, one cache policy.

Every jitted function of ``decoder_runtime`` and ``export`` is declared with
:func:`njit` (``numba.njit`` plus this module's disk cache) instead of
``numba.njit(cache=True)``, which is not safe to embed in two ways:

* **Where the cache lives.** Plain numba raises at import (``cannot cache
  function ...: no locator available``) when the install directory and the
  home directory are read-only. Here the first writable of these is used:
  ``NUMBA_CACHE_DIR`` when set, the ``__pycache__`` next to the source, numba's
  user cache (``~/.cache/numba``, or ``$XDG_CACHE_HOME/numba``), then a private
  per-user directory of the system temp directory (``coolchic-numba-<uid>``,
  mode 0700, used only if it is ours and nobody else can write to it: cache
  files are pickles). If none is writable the kernels are compiled in every
  process, uncached. The last two cases emit a :class:`JitCacheWarning`, once
  per process and source directory, and never an error.
* **Kernels shipped with the package.** A wheel built by the project's
  backend carries the latent decoder's kernels, compiled at build time into
  the package's ``__pycache__`` (:mod:`decoder_runtime.precompile`). They are
  read from there whatever directory the policy above chose (a read-only
  install, ``NUMBA_CACHE_DIR``), under the same checks as any cache entry
  (source stamp, numba version, CPU): a kernel is compiled only where they
  do not fit.
* **When a cached kernel is stale.** numba invalidates a function's cache when
  its own source file changes, but a cached kernel also holds the compiled
  code of every jitted function it calls or inlines and the values of the
  module constants it reads, and these live in other files
  (``latent_codec._decode_stripes`` inlines the range decoder of
  ``range_coder.py`` and calls ``arm_int.arm_forward``;
  ``range_coder`` reads ``prob_tables.TOTAL_BITS``). Here a kernel's cache is
  stamped with a hash of every ``.py`` file of ``decoder_runtime`` and of the
  kernel's own package: a change in any of them recompiles every kernel on
  its next use (a few seconds, once).

Loading a cached kernel initialises numba's runtime (NRT) only, not the
implementation registries that numba's own loader imports first (a quarter of
a second of a warm process): only a compile uses them, and it loads them.

This relies on numba's cache classes (``numba.core.caching``: a locator, a
``CompileResultCacheImpl`` and a ``FunctionCache`` subclass, the pattern of
numba's own CUDA target) and on ``Dispatcher._cache``, which
``enable_caching()`` sets; written against numba 0.68. If they are missing
or differ, the kernels run uncached, with a warning, rather than fail.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import tempfile
import threading
import warnings
from typing import Callable, Dict, Optional, Tuple

import numba

RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))


class JitCacheWarning(RuntimeWarning):
    """The numba kernel cache fell back to a temporary directory, or to none."""


def _writable(path: str) -> bool:
    """Create ``path`` if needed and check that a file can be written in it (numba's own test)."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _private_temp_root() -> Optional[str]:
    """``<tmp>/coolchic-numba-<uid>``, created 0700; None unless it is a directory only we can write to."""
    try:
        base = tempfile.gettempdir()
    except OSError:  # no usable temporary directory at all
        return None
    uid = os.getuid() if hasattr(os, "getuid") else None
    root = os.path.join(base, f"coolchic-numba-{uid if uid is not None else 'user'}")
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(root)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    # Loading a cache file unpickles it: another user's directory would run their code.
    if uid is not None and (st.st_uid != uid or st.st_mode & 0o022):
        return None
    return root


def _cache_subpath(src_dir: str) -> str:
    from numba.core.caching import _CacheLocator

    return _CacheLocator.get_suitable_cache_subpath(os.path.join(src_dir, "_.py"))


def _user_cache_root() -> str:
    from numba.misc.appdirs import AppDirs

    return AppDirs(appname="numba", appauthor=False).user_cache_dir


def _choose_cache_dir(src_dir: str) -> Optional[str]:
    """The cache directory of kernels defined in ``src_dir`` (see the module docstring), or None."""
    sub = _cache_subpath(src_dir)
    tried = []
    if numba.config.CACHE_DIR:
        tried.append(os.path.join(numba.config.CACHE_DIR, sub))
    tried.append(os.path.join(src_dir, "__pycache__"))
    try:
        tried.append(os.path.join(_user_cache_root(), sub))
    except Exception:  # no home directory to derive it from
        pass
    for path in tried:
        if _writable(path):
            return path
    root = _private_temp_root()
    if root is not None and _writable(os.path.join(root, sub)):
        path = os.path.join(root, sub)
        warnings.warn(
            f"coolchic: no writable numba cache directory among {', '.join(tried)}; "
            f"the compiled kernels are cached in {path} instead "
            f"(set NUMBA_CACHE_DIR to choose a lasting place)",
            JitCacheWarning,
            stacklevel=4,
        )
        return path
    warnings.warn(
        f"coolchic: no writable numba cache directory (tried {', '.join(tried)} and the temp directory); "
        f"the kernels are not cached and every process compiles them again (seconds). "
        f"Set NUMBA_CACHE_DIR to a writable directory to avoid it",
        JitCacheWarning,
        stacklevel=4,
    )
    return None


def _package_dirs(py_file: str) -> Tuple[str, ...]:
    own = os.path.dirname(os.path.abspath(py_file))
    return (RUNTIME_DIR,) if own == RUNTIME_DIR else (RUNTIME_DIR, own)


@functools.lru_cache(maxsize=None)
def sources_stamp(dirs: Tuple[str, ...]) -> str:
    """SHA-256 of the name and bytes of every ``.py`` file in ``dirs``: the cache key of their kernels."""
    h = hashlib.sha256()
    for d in dirs:
        for name in sorted(os.listdir(d)):
            if name.endswith(".py"):
                with open(os.path.join(d, name), "rb") as f:
                    data = f.read()
                h.update(f"{os.path.basename(d)}/{name}\0{len(data)}\0".encode())
                h.update(data)
    return h.hexdigest()


_lock = threading.Lock()
_plans: Dict[str, Optional[Tuple[str, str]]] = {}  # source directory -> (cache dir, stamp) or None
_cache_class = None  # built on first use: numba.core.caching is imported lazily


def _plan(py_file: str) -> Optional[Tuple[str, str]]:
    """(cache directory, source stamp) for the kernels of ``py_file``; decided once per directory."""
    src_dir = os.path.dirname(os.path.abspath(py_file))
    with _lock:
        if src_dir not in _plans:
            plan = None
            try:
                stamp = sources_stamp(_package_dirs(py_file))
            except OSError as e:  # sources not readable as files (zip import, frozen app)
                warnings.warn(f"coolchic: cannot read the kernel sources ({e}); the kernels are not cached",
                              JitCacheWarning, stacklevel=4)
            else:
                path = _choose_cache_dir(src_dir)
                if path is not None:
                    plan = (path, stamp)
            _plans[src_dir] = plan
        return _plans[src_dir]


def _kernel_cache_class():
    """A numba ``FunctionCache`` whose only locator is this module's policy."""
    global _cache_class
    if _cache_class is None:
        from numba.core.caching import CompileResultCacheImpl, FunctionCache, IndexDataCacheFile, _CacheLocator

        class KernelLocator(_CacheLocator):
            def __init__(self, py_func, py_file: str, path: str, stamp: str):
                self._py_file = py_file  # numba's warnings about uncachable code name it
                self._lineno = py_func.__code__.co_firstlineno
                self._path = path
                self._stamp = stamp

            def get_cache_path(self):
                return self._path

            def get_source_stamp(self):
                return self._stamp

            def get_disambiguator(self):
                return str(self._lineno)

            @classmethod
            def from_function(cls, py_func, py_file):
                plan = _plan(py_file)
                return None if plan is None else cls(py_func, py_file, *plan)

        class KernelCacheImpl(CompileResultCacheImpl):
            _locator_classes = [KernelLocator]

        class KernelCache(FunctionCache):
            """Reads and writes the chosen cache directory; where that is not the
            package's own ``__pycache__``, also reads the kernels shipped there
            (compiled at build time, see :mod:`decoder_runtime.precompile`)."""

            _impl_class = KernelCacheImpl

            def __init__(self, py_func):
                super().__init__(py_func)
                shipped = os.path.join(os.path.dirname(os.path.abspath(self._impl.locator._py_file)), "__pycache__")
                self._shipped_file = None
                if os.path.abspath(shipped) != os.path.abspath(self._cache_path) and os.path.isdir(shipped):
                    self._shipped_file = IndexDataCacheFile(cache_path=shipped,
                                                            filename_base=self._impl.filename_base,
                                                            source_stamp=self._impl.locator.get_source_stamp())

            def load_overload(self, sig, target_context):
                # numba's Cache.load_overload first refreshes the target
                # context: it imports and installs every implementation
                # registry (a quarter of a second), of which rebuilding a
                # cached kernel needs only the runtime (NRT) it links to. A
                # compile refreshes the context itself.
                from numba.core.runtime import rtsys

                rtsys.initialize(target_context)
                with self._guard_against_spurious_io_errors():
                    return self._load_overload(sig, target_context)

            def _load_overload(self, sig, target_context):
                data = super()._load_overload(sig, target_context)
                if data is None and self._enabled and self._shipped_file is not None:
                    data = self._shipped_file.load(self._index_key(sig, target_context.codegen()))
                    if data is not None:
                        data = self._impl.rebuild(target_context, data)
                return data

        _cache_class = KernelCache
    return _cache_class


def _attach_cache(disp) -> None:
    import inspect

    if not hasattr(disp, "_cache"):  # NUMBA_DISABLE_JIT: a plain Python function
        return
    try:
        if _plan(inspect.getfile(disp.py_func)) is None:
            return
        disp._cache = _kernel_cache_class()(disp.py_func)
    except Exception as e:  # a numba whose caching internals differ: run uncached rather than fail
        warnings.warn(f"coolchic: cannot set up the numba cache of {disp.py_func.__qualname__} ({e}); "
                      f"it is compiled in every process", JitCacheWarning, stacklevel=3)


def njit(func: Optional[Callable] = None, **options):
    """``numba.njit(**options)`` with the disk cache of this module; ``cache`` is not an option here."""
    if "cache" in options:
        raise TypeError("coolchic.decoder_runtime.jit.njit always caches: do not pass cache=")
    if func is None:
        return functools.partial(njit, **options)
    disp = numba.njit(**options)(func)
    _attach_cache(disp)
    return disp
