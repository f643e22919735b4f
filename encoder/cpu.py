"""Process-wide CPU settings that make training iterations cheap.

Two things matter on a CPU-only machine:

- torch threads: one per available core (``os.sched_getaffinity``), since
  hyper-threads and oversubscription slow the small kernels down;
- glibc malloc: tensors above 32 MB (the ARM activations of a 512x768 image)
  are served by mmap and returned to the kernel on free, so every iteration
  page-faults its working set again (measured 45 000 faults and 4x slower
  elementwise ops). Raising the mmap and trim thresholds keeps that memory in
  the heap. This only affects this process, and only with glibc.

The malloc tuning changes how the whole process allocates memory, so only an
application may choose it: :func:`configure_cpu` is called by
``coolchic-encode`` (encoder/cli.py) and the benchmarks, never by the library
(``encode_frame``, ``encode_image``), which only sets torch's thread count
(:func:`set_torch_threads`). An application embedding the encoder calls
:func:`configure_cpu` itself if it wants the tuning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_configured = False


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def tune_malloc() -> bool:
    """Keep large freed blocks in the heap (glibc only); True if applied."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1
        return ok and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    except (OSError, AttributeError):
        return False


def set_torch_threads(num_threads: Optional[int] = None) -> int:
    """Set torch's intra-op threads (default: available cores); returns the number in use."""
    n = num_threads or available_cores()
    torch.set_num_threads(n)
    return n


def configure_cpu(num_threads: Optional[int] = None) -> int:
    """For applications only: :func:`set_torch_threads`, and tune malloc once per process.

    Returns the number of threads in use.
    """
    global _configured
    n = set_torch_threads(num_threads)
    if not _configured:
        tune_malloc()
        _configured = True
    return n
