"""The library API of the decoder: bitstream in, image out, no torch.

    >>> import decoder_runtime
    >>> dec = decoder_runtime.decode("kodim14.cool", timings=True)
    >>> dec.image.frame_data_type, dec.image.bitdepth, dec.to_numpy().shape
    ('rgb', 8, (512, 768, 3))
    >>> decoder_runtime.write_image(dec.image, "kodim14.png")

Pipeline: parse (``bitstream.read_bitstream``), entropy-decode the latents
(``latent_codec.decode_latents``, numba), then upsampling and synthesis on
onnxruntime (``reconstruct``). Everything a user can get wrong raises a
subclass of :class:`~decoder_runtime.errors.CoolChicError`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, Optional, Union

import numpy as np

from .arch import synthesis_latents
from .errors import BitstreamError
from .frame import RawImage

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


@dataclass(frozen=True)
class DecodedImage:
    """A decoded frame and, when asked for, the seconds spent in each stage.

    ``timings`` keys, in pipeline order: ``setup`` (loading numba and
    onnxruntime on the first call, provider check), ``read`` (from a path only), ``parse``, ``latents``,
    ``graph_build``, ``session``, ``upsampling_synthesis``, ``output``, ``total``.
    """

    image: RawImage
    timings: Optional[Dict[str, float]] = None

    def to_numpy(self) -> np.ndarray:
        """H x W x 3 (rgb, yuv444) or H x W (gray) integer array; yuv420 has no such form."""
        return self.image.to_hwc()

    @property
    def frame_data_type(self) -> str:
        return self.image.frame_data_type

    @property
    def bitdepth(self) -> int:
        return self.image.bitdepth


def _read_source(source: Source) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = os.fspath(source)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BitstreamError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BitstreamError(f"{path}: is a directory, not a bitstream") from None
    except OSError as e:
        raise BitstreamError(f"{path}: cannot read: {e.strerror or e}") from None


def decode(
    source: Source,
    provider: str = "cpu",
    threads: int = 1,
    timings: bool = False,
    max_pixels: Optional[int] = None,
) -> DecodedImage:
    """Decode a coolchic bitstream given as a path or as bytes.

    ``provider``: onnxruntime execution provider, ``"cpu"`` or ``"cuda"``
    (:class:`ProviderError` when absent). ``threads``: threads of the latent
    decoder and of onnxruntime. ``timings``: fill ``DecodedImage.timings``.
    ``max_pixels``: refuse larger images (default: the bitstream reader's
    limit, 16.7 Mpixel), a guard against absurd headers.
    """
    t: Dict[str, float] = {}
    start = time.perf_counter()
    # Loaded on first use: numba and onnxruntime are most of a cold start.
    from .bitstream import read_bitstream
    from .latent_codec import decode_latents
    from .ort_session import provider_names
    from .reconstruct import reconstruct

    # Fail on a missing provider before spending time on the latents.
    provider_names(provider)
    t["setup"] = time.perf_counter() - start
    if not isinstance(source, (bytes, bytearray, memoryview)):
        t_read = time.perf_counter()
        data = _read_source(source)
        t["read"] = time.perf_counter() - t_read
    else:
        data = bytes(source)
    t0 = time.perf_counter()
    bs = read_bitstream(data) if max_pixels is None else read_bitstream(data, max_pixels=max_pixels)
    t1 = time.perf_counter()
    grids = decode_latents(bs, threads=threads)
    t2 = time.perf_counter()
    latents = synthesis_latents(bs.arch, grids)
    image = reconstruct(bs.arch, bs.float_params(), latents, provider=provider, threads=threads, timings=t)
    t["parse"] = t1 - t0
    t["latents"] = t2 - t1
    t["total"] = time.perf_counter() - start
    return DecodedImage(image, t if timings else None)
