"""From decoded latents to the image: ONNX upsampling and synthesis, then
integer code values in the frame's format (docs/architecture.md section 5).
"""

from __future__ import annotations

import time
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from .arch import DecoderArch
from .common_randomness import common_randomness_grids
from .errors import InferenceError
from .frame import RawImage


def to_raw_image(x: np.ndarray, frame_data_type: str, bitdepth: int) -> RawImage:
    """``(n_out, H, W)`` synthesis output in [0, 1] -> integer planes of a RawImage."""
    m = (1 << bitdepth) - 1
    dtype = np.uint8 if bitdepth <= 8 else np.uint16
    # In place on float32: this runs on the full frame of every decode.
    # fmax/fmin rather than clip: a NaN (weights of a hostile file can
    # overflow float32) becomes 0, not an undefined integer and a warning.
    y = np.fmax(x, np.float32(0.0), dtype=np.float32)
    np.fmin(y, np.float32(1.0), out=y)
    y *= np.float32(m)
    np.rint(y, out=y)
    planes: List[np.ndarray] = [p.astype(dtype) for p in y]
    if frame_data_type == "yuv420":
        planes = [planes[0]] + [np.ascontiguousarray(p[::2, ::2]) for p in planes[1:]]
    return RawImage(tuple(planes), frame_data_type, bitdepth)


def synthesize(
    arch: DecoderArch,
    float_params: Mapping[str, np.ndarray],
    latents: Sequence[np.ndarray],
    provider: str = "cpu",
    threads: int = 1,
    timings: Optional[Dict[str, float]] = None,
) -> np.ndarray:
    """The clamped synthesis output ``(n_out, H, W)`` float32, run on onnxruntime."""
    from .onnx_graph import build_decoder_model_bytes, input_feed
    from .ort_session import cached_session, ort_error_text

    t0 = time.perf_counter()
    model_bytes = build_decoder_model_bytes(arch, float_params)
    t1 = time.perf_counter()
    sess = cached_session(model_bytes, provider, threads)
    t2 = time.perf_counter()
    feed = input_feed(arch, latents, common_randomness_grids(arch))
    try:
        (out,) = sess.run(["image"], feed)
    except Exception as e:  # onnxruntime's errors are untyped; a caller gets a CoolChicError
        raise InferenceError(
            f"onnxruntime failed to run the upsampling and synthesis of a {arch.img_size[0]}x{arch.img_size[1]} "
            f"frame: {ort_error_text(e)}"
        ) from e
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
) -> RawImage:
    """Decoded image from the latent grids (finest first) and the dequantized weights.

    ``timings``, when given, receives the seconds spent in ``graph_build``,
    ``session``, ``upsampling_synthesis`` and ``output``.
    """
    x = synthesize(arch, float_params, latents, provider, threads, timings)
    t0 = time.perf_counter()
    img = to_raw_image(x, arch.frame_data_type, arch.bitdepth)
    if timings is not None:
        timings["output"] = time.perf_counter() - t0
    return img
