"""onnxruntime sessions for the decoder graph: provider choice, threads, and
a small cache so that decoding the same bitstream twice builds one session.

The session shares its process with the numba latent decoder, so its thread
pool must not spin: an idle onnxruntime worker that busy-waits steals the
cores numba needs.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Union

from .errors import InferenceError, ProviderError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# One session: decoding the same stream again skips the session build, while
# an app decoding many streams holds one memory arena (~80 MB at 512x768),
# not one per stream. clear_session_cache() releases it.
_CACHE_SIZE = 1
_cache: "OrderedDict[tuple, object]" = OrderedDict()
# decode() may run in several threads: the cache's dict operations take this
# lock; sessions are built outside it, and onnxruntime allows concurrent
# run() calls on one session.
_cache_lock = threading.Lock()


def provider_names(provider: str) -> list:
    """onnxruntime provider list for ``"cpu"`` or ``"cuda"``, checked against this install."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ProviderError(f"unknown execution provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted not in available:
        raise ProviderError(
            f"execution provider {provider!r} ({wanted}) is not available in this onnxruntime "
            f"(available: {', '.join(available)}); for cuda install onnxruntime-gpu with a matching CUDA, "
            f"or decode with --provider cpu"
        )
    # CPU stays listed after CUDA: onnxruntime places there any node CUDA lacks.
    return [wanted] if wanted == PROVIDERS["cpu"] else [wanted, PROVIDERS["cpu"]]


def session_options(threads: int = 1, mem_pattern: bool = True):
    """onnxruntime's options for the decoder graph.

    ``mem_pattern=False`` for a session that runs several times (the tiles of
    ``reconstruct_tiles``): from its second run onnxruntime allocates the
    planned pattern as one block beside the arena the first run grew, which
    doubles the memory (measured on 128-row tiles of a 48-channel graph:
    236 MB peak with the pattern, 129 MB without, same speed).
    """
    import onnxruntime as ort

    if threads < 1:
        raise ProviderError(f"threads must be at least 1, got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # EXTENDED measured fastest on the mop graph at 512x768 (21 ms against
    # 22 basic, 24 disabled, 29 all: the NCHWc layout of ALL costs more in
    # reorders than it gains on 3-channel convolutions).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    so.enable_mem_pattern = mem_pattern
    return so


def ort_error_text(e: BaseException, limit: int = 400) -> str:
    """An onnxruntime exception as one line of at most ``limit`` characters (CLI errors are one line)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def make_session(model: Union[bytes, "object"], provider: str = "cpu", threads: int = 1, mem_pattern: bool = True):
    """A new ``onnxruntime.InferenceSession`` for a ModelProto or its serialized bytes (options: :func:`session_options`)."""
    import onnxruntime as ort

    data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    providers = provider_names(provider)
    try:
        sess = ort.InferenceSession(bytes(data), session_options(threads, mem_pattern), providers=providers)
    except Exception as e:  # onnxruntime raises its own untyped errors
        if provider != "cpu":
            raise ProviderError(f"could not start the {provider} execution provider: {ort_error_text(e)}") from e
        raise InferenceError(f"onnxruntime could not build the decoder graph: {ort_error_text(e)}") from e
    if provider != "cpu" and sess.get_providers()[0] != providers[0]:
        # onnxruntime falls back to CPU silently when the CUDA libraries fail to load.
        raise ProviderError(f"onnxruntime could not start {providers[0]}; it fell back to {sess.get_providers()}")
    return sess


def cached_session(model_bytes: bytes, provider: str = "cpu", threads: int = 1):
    """:func:`make_session`, reusing the last session if it was built for the same bytes."""
    key = (hashlib.sha256(model_bytes).digest(), provider, threads)
    with _cache_lock:
        sess = _cache.get(key)
        if sess is not None:
            _cache.move_to_end(key)
            return sess
    sess = make_session(model_bytes, provider, threads)
    with _cache_lock:
        # Two threads may have built the same session: the last one stays cached.
        _cache[key] = sess
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return sess


def clear_session_cache() -> None:
    with _cache_lock:
        _cache.clear()
