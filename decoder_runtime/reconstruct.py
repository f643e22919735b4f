"""From decoded latents to the image: ONNX upsampling and synthesis, then
integer code values in the frame's format (docs/architecture.md section 5).
"""

from __future__ import annotations

import time
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .arch import DecoderArch
from .common_randomness import common_randomness_grids
from .errors import InferenceError
from .frame import RawImage


def write_code_values(x: np.ndarray, bitdepth: int, out: Sequence[np.ndarray]) -> None:
    """Float planes in [0, 1] (any float32 values) to integer code values, written into ``out``.

    A yuv420 chroma plane keeps every other sample of the full-resolution
    plane, taken before the arithmetic (a quarter of it); its other values
    are never read.
    """
    m = np.float32((1 << bitdepth) - 1)
    for dst, p in zip(out, x):
        if dst.shape != p.shape:
            p = p[::2, ::2]
        # fmax/fmin rather than clip: a NaN (weights of a hostile file can
        # overflow float32) becomes 0, not an undefined integer and a warning.
        y = np.fmax(p, np.float32(0.0), dtype=np.float32)
        np.fmin(y, np.float32(1.0), out=y)
        y *= m
        np.rint(y, out=y)
        dst[...] = y


def empty_planes(n: int, h: int, w: int, frame_data_type: str, bitdepth: int) -> list:
    """The integer planes of an ``n``-plane ``h`` x ``w`` frame, uninitialised (yuv420 chroma halved)."""
    dtype = np.uint8 if bitdepth <= 8 else np.uint16
    chroma = (h // 2, w // 2) if frame_data_type == "yuv420" else (h, w)
    return [np.empty((h, w), dtype)] + [np.empty(chroma, dtype) for _ in range(n - 1)]


def write_rows(x: np.ndarray, arch: DecoderArch, planes: Sequence[np.ndarray], y0: int, y1: int) -> None:
    """:func:`write_code_values` of output rows ``y0..y1-1`` (a tile's or a band's ``x``) into ``planes``."""
    c0, c1 = (y0 // 2, y1 // 2) if arch.frame_data_type == "yuv420" else (y0, y1)
    write_code_values(x, arch.bitdepth, [planes[0][y0:y1]] + [p[c0:c1] for p in planes[1:]])


def to_raw_image(x: np.ndarray, frame_data_type: str, bitdepth: int) -> RawImage:
    """``(n_out, H, W)`` synthesis output in [0, 1] -> integer planes of a RawImage."""
    planes = empty_planes(*x.shape, frame_data_type, bitdepth)
    write_code_values(x, bitdepth, planes)
    return RawImage(tuple(planes), frame_data_type, bitdepth)


def run_graph(sess, feed: Mapping[str, np.ndarray], what: str) -> np.ndarray:
    """The ``image`` output of the decoder graph; onnxruntime's untyped errors become :class:`InferenceError`."""
    from .ort_session import ort_error_text

    try:
        (out,) = sess.run(["image"], feed)
    except Exception as e:
        raise InferenceError(f"onnxruntime failed to run the upsampling and synthesis of {what}: {ort_error_text(e)}") from e
    return out


def synthesize(
    arch: DecoderArch,
    float_params: Mapping[str, np.ndarray],
    latents: Sequence[np.ndarray],
    provider: str = "cpu",
    threads: int = 1,
    timings: Optional[Dict[str, float]] = None,
) -> np.ndarray:
    """The clamped synthesis output ``(n_out, H, W)`` float32, run on onnxruntime.

    The graph takes the weights as inputs: every file of the same architecture
    and size runs in the same cached session.
    """
    from .onnx_graph import build_decoder_graph, input_feed
    from .ort_session import cached_session

    t0 = time.perf_counter()
    model_bytes, weight_feed = build_decoder_graph(arch, float_params, weights_as_inputs=True)
    t1 = time.perf_counter()
    sess = cached_session(model_bytes, provider, threads)
    t2 = time.perf_counter()
    feed = input_feed(arch, latents, common_randomness_grids(arch))
    feed.update(weight_feed)
    out = run_graph(sess, feed, f"a {arch.img_size[0]}x{arch.img_size[1]} frame")
    t3 = time.perf_counter()
    if timings is not None:
        timings["graph_build"] = t1 - t0
        timings["session"] = t2 - t1
        timings["upsampling_synthesis"] = t3 - t2
    return out[0]


def reconstruct(
    arch: DecoderArch,
    float_params: Mapping[str, np.ndarray],
    latents: Sequence[np.ndarray],
    provider: str = "cpu",
    threads: int = 1,
    timings: Optional[Dict[str, float]] = None,
    tile_rows: Optional[int] = None,
) -> RawImage:
    """Decoded image from the latent grids (finest first) and the dequantized weights.

    ``tile_rows``: compute the frame in tiles of that many output rows
    (:func:`reconstruct_tiles`); None: tiles only when the whole frame's graph
    would need more than ``tiling.TILE_GRAPH_BUDGET``; 0: the whole frame.
    A whole frame on the CPU with ``threads`` > 1 runs as that many bands of
    rows at once (:func:`reconstruct_bands`).

    ``timings``, when given, receives the seconds spent in ``graph_build``,
    ``session``, ``upsampling_synthesis`` and ``output``.
    """
    from .tiling import TILE_GRAPH_BUDGET, parallel_bands, tile_rows_for

    if tile_rows is None:
        tile_rows = tile_rows_for(arch, TILE_GRAPH_BUDGET)
    if tile_rows:
        return reconstruct_tiles(arch, float_params, latents, tile_rows, provider, threads, timings)
    bands = parallel_bands(arch, threads) if provider == "cpu" else []
    if bands:
        return reconstruct_bands(arch, float_params, latents, bands, timings)
    x = synthesize(arch, float_params, latents, provider, threads, timings)
    t0 = time.perf_counter()
    img = to_raw_image(x, arch.frame_data_type, arch.bitdepth)
    if timings is not None:
        timings["output"] = time.perf_counter() - t0
    return img


def reconstruct_bands(
    arch: DecoderArch,
    float_params: Mapping[str, np.ndarray],
    latents: Sequence[np.ndarray],
    bands: Sequence[Tuple[int, int]],
    timings: Optional[Dict[str, float]] = None,
) -> RawImage:
    """:func:`reconstruct` with each band of output rows (``tiling.parallel_bands``) on its own thread.

    onnxruntime's own threads gain little on this graph: its small
    convolutions, pads and concatenations run on one core whatever the
    setting. Bands are independent graphs (``decoder_runtime.tiling``), each
    run single-threaded in its cached session, concurrently (``run``
    releases the GIL); each writes its rows of the output planes. Up to float
    summation order a band computes what the whole frame does (the bench
    bitstreams decode to the same pixels, bit for bit).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .onnx_graph import build_decoder_graph
    from .ort_session import cached_session
    from .tiling import plan_rows, tile_feed

    h, w = arch.img_size
    planes = empty_planes(arch.n_out, h, w, arch.frame_data_type, arch.bitdepth)
    seed = arch.common_randomness_seed if arch.flag_common_randomness else None
    t0 = time.perf_counter()
    graphs = []
    for y0, y1 in bands:
        win = plan_rows(arch, y0, y1)
        model, weights = build_decoder_graph(arch, float_params, win, weights_as_inputs=True)
        graphs.append((y0, y1, win, model, weights))
    t1 = time.perf_counter()

    def band(i: int) -> Tuple[float, float]:
        """(session, output) seconds of band i; its session is made (or found) on its own thread."""
        y0, y1, win, model, weights = graphs[i]
        t = time.perf_counter()
        sess = cached_session(model, "cpu", 1)
        t_session = time.perf_counter() - t
        feed = dict(tile_feed(arch, win, latents, seed), **weights)
        out = run_graph(sess, feed, f"rows {y0}-{y1} of a {h}x{w} frame")
        t = time.perf_counter()
        write_rows(out[0], arch, planes, y0, y1)
        return t_session, time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=len(graphs), thread_name_prefix="coolchic-bands") as pool:
        spent = list(pool.map(band, range(len(graphs))))
    t2 = time.perf_counter()
    if timings is not None:
        # The bands overlap: each stage counts its slowest band.
        session, output = max(s for s, _ in spent), max(o for _, o in spent)
        timings.update(graph_build=t1 - t0, session=session, output=output,
                       upsampling_synthesis=t2 - t1 - session - output)
    return RawImage(tuple(planes), arch.frame_data_type, arch.bitdepth)


def reconstruct_tiles(
    arch: DecoderArch,
    float_params: Mapping[str, np.ndarray],
    latents: Sequence[np.ndarray],
    tile_rows: int,
    provider: str = "cpu",
    threads: int = 1,
    timings: Optional[Dict[str, float]] = None,
) -> RawImage:
    """:func:`reconstruct` a band of ``tile_rows`` output rows at a time (``decoder_runtime.tiling``).

    Memory grows with the tile; the output planes are the only full-frame
    arrays. Consecutive tiles with the same window relative to their start
    share one onnxruntime session (all but the first and the last ones).
    """
    from .onnx_graph import build_decoder_model_bytes
    from .ort_session import make_session
    from .tiling import can_split, plan_rows, tile_bounds, tile_feed, tile_key

    if not can_split(arch):
        return reconstruct(arch, float_params, latents, provider, threads, timings, tile_rows=0)
    h, w = arch.img_size
    planes = empty_planes(arch.n_out, h, w, arch.frame_data_type, arch.bitdepth)
    seed = arch.common_randomness_seed if arch.flag_common_randomness else None
    key, sess = None, None
    t = dict.fromkeys(("graph_build", "session", "upsampling_synthesis", "output"), 0.0)
    for y0, y1 in tile_bounds(h, tile_rows, 1 << max(arch.latent_levels)):
        t0 = time.perf_counter()
        win = plan_rows(arch, y0, y1)
        if tile_key(arch, win) != key:
            # One session alive at a time (their tensors come from the shared
            # CPU arena of ort_session, as large as one tile's).
            key, sess = tile_key(arch, win), None
            model = build_decoder_model_bytes(arch, float_params, win)
            t1 = time.perf_counter()
            sess = make_session(model, provider, threads, mem_pattern=False)
            t["graph_build"] += t1 - t0
            t["session"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        out = run_graph(sess, tile_feed(arch, win, latents, seed), f"rows {y0}-{y1} of a {h}x{w} frame")
        t3 = time.perf_counter()
        write_rows(out[0], arch, planes, y0, y1)
        del out  # onnxruntime's output may hold its session's memory until released
        t["upsampling_synthesis"] += t3 - t2
        t["output"] += time.perf_counter() - t3
    if timings is not None:
        timings.update(t)
    return RawImage(tuple(planes), arch.frame_data_type, arch.bitdepth)
