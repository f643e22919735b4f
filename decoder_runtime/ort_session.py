"""onnxruntime sessions for the decoder graph: provider choice, threads, and
a small cache so that decoding the same bitstream twice builds one session.

The session shares its process with the numba latent decoder, so its thread
pool must not spin: an idle onnxruntime worker that busy-waits steals the
cores numba needs.

CPU sessions allocate from one memory arena registered in onnxruntime's
environment (``session.use_env_allocators``), not from an arena of their own:
a session's arena dies with it, so each new file's first run used to touch
fresh pages (3 000 to 11 000 page faults at 512x768, mop; 10 to 15 ms of a
50 ms run). The shared arena keeps those pages for the next file's session,
and for the process's life: about what the cached session held anyway
(one arena, ~80 MB at 512x768; the tiled path bounds it for large frames).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Union

from .errors import InferenceError, ProviderError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# The graph takes the weights as inputs (onnx_graph), so a session serves every
# stream of its architecture and size. Eight: a frame's bands with several
# threads (reconstruct_bands), a video's P and B graphs, and other shapes.
# A session holds its graph only, its tensors living in the shared arena: 1 MB
# each for kodim01's mop graph after a run (RSS of one to four sessions of
# it: 213, 214, 214, 215 MB). clear_session_cache() releases them (the shared
# CPU arena stays: see above).
_CACHE_SIZE = 8
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


_arena_lock = threading.Lock()
_arena_state = {"tried": False, "ok": False}


def shared_cpu_arena() -> bool:
    """Register the CPU arena that CPU sessions share (once per process); whether one is registered.

    If the registration fails, each session keeps its own arena, as
    onnxruntime does by default. (onnxruntime 1.32 accepts a second
    registration for the CPU without an error; an arena a host application
    registered first is then the one shared.)
    """
    import onnxruntime as ort

    with _arena_lock:
        if not _arena_state["tried"]:
            _arena_state["tried"] = True
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                # The default extension (next power of two) measured a lower peak than
                # growing by what is asked: 223 against 247 MB for coolchic-decode of kodim01.
                ort.create_and_register_allocator(info, ort.OrtArenaCfg({}))
                _arena_state["ok"] = True
            except Exception:  # untyped onnxruntime errors; not worth failing a decode for
                _arena_state["ok"] = False
        return _arena_state["ok"]


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
    so = session_options(threads, mem_pattern)
    if provider == "cpu" and shared_cpu_arena():
        so.add_session_config_entry("session.use_env_allocators", "1")
    try:
        sess = ort.InferenceSession(bytes(data), so, providers=providers)
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
