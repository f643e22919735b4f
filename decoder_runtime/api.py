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
import stat
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np

from .arch import synthesis_latents
from .budget import DEFAULT_MAX_MEMORY, format_bytes, parse_size
from .errors import BitstreamError, ResourceLimitError
from .frame import RawImage, YUV420Planes

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

    def to_numpy(self) -> Union[np.ndarray, YUV420Planes]:
        """H x W x 3 (rgb, yuv444) or H x W (gray) integer array; for yuv420 a
        :class:`YUV420Planes` named tuple ``(y, u, v)`` of 2-D arrays."""
        return self.image.to_numpy()

    @property
    def frame_data_type(self) -> str:
        return self.image.frame_data_type

    @property
    def bitdepth(self) -> int:
        return self.image.bitdepth


def open_bitstream(source):
    """``open(source, "rb")``, its failures as :class:`BitstreamError` naming the path."""
    path = os.fspath(source)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise BitstreamError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BitstreamError(f"{path}: is a directory, not a bitstream") from None
    except OSError as e:
        raise BitstreamError(f"{path}: cannot read: {e.strerror or e}") from None


def decode_options(provider: str, max_pixels: Optional[int], max_memory: Union[int, str, None]):
    """(max_pixels, max_memory) with their defaults applied and sizes parsed, once the
    provider is known to exist: a missing one fails before any time goes to the latents."""
    from .bitstream import DEFAULT_MAX_PIXELS
    from .ort_session import provider_names

    provider_names(provider)
    return (DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
            None if max_memory is None else parse_size(max_memory))


def _read_source(source, max_pixels: Optional[int], max_memory: Optional[int]) -> bytes:
    """The bytes of a bitstream file, vetted from its first bytes before the rest is read.

    Another format, a file longer than its header allows, or a decode above
    the limits is refused after reading ``HEADER_PEEK`` bytes, whatever the
    file's size.
    """
    from .bitstream import HEADER_PEEK, check_file_start

    path = os.fspath(source)
    try:
        with open_bitstream(path) as f:
            st = os.fstat(f.fileno())
            regular = stat.S_ISREG(st.st_mode)
            prefix = f.read(HEADER_PEEK)
            if len(prefix) < HEADER_PEEK:
                size = len(prefix)  # all of it, whatever fstat said
            else:
                # A pipe or a device has no size: its start is a lower bound.
                size = max(st.st_size, len(prefix)) if regular else len(prefix)
            limit = check_file_start(prefix, size, max_pixels, max_memory)
            if len(prefix) < HEADER_PEEK:
                return prefix
            if regular:
                f.seek(0)
                data = f.read(size + 1)
                if len(data) != size:
                    raise BitstreamError(f"{path}: the file changed size while it was read")
            else:
                data = prefix + f.read(limit + 1 - len(prefix))
    except OSError as e:
        raise BitstreamError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        # The file grew, or is not a regular file.
        raise BitstreamError(f"{path}: more than the {limit} bytes a bitstream of this header can hold")
    return data


def out_of_memory(img_size: Tuple[int, int], max_memory: Optional[int], what: str) -> ResourceLimitError:
    """The error for a MemoryError within ``max_memory``: beyond what this machine
    has, still the caller's error type (``decode``, ``decode_video``)."""
    h, w = img_size
    limit = "no limit" if max_memory is None else format_bytes(max_memory)
    return ResourceLimitError(
        f"the system ran out of memory while decoding this {h}x{w} {what} (max_memory: {limit}); set "
        f"max_memory (--max-memory) below the memory available to refuse such files before decoding"
    )


def decode(
    source: Source,
    provider: str = "cpu",
    threads: int = 1,
    timings: bool = False,
    max_pixels: Optional[int] = None,
    max_memory: Union[int, str, None] = DEFAULT_MAX_MEMORY,
    tile_rows: Optional[int] = None,
) -> DecodedImage:
    """Decode a coolchic bitstream given as a path or as bytes.

    ``provider``: onnxruntime execution provider, ``"cpu"`` or ``"cuda"``
    (:class:`ProviderError` when absent). ``threads``: threads of the latent
    decoder and, on the CPU, of the upsampling and synthesis (the frame as
    that many bands of rows at once; the same pixels as one thread).
    ``timings``: fill ``DecodedImage.timings``.
    ``max_pixels``: refuse larger images (default: the bitstream reader's
    limit, 16.7 Mpixel), a guard against absurd headers.
    ``max_memory``: refuse, from the header and before allocating, a decode
    whose memory bound (:func:`decoder_runtime.budget.estimate_memory`) is
    above this many bytes; an int or a string such as ``"512M"`` or ``"8G"``
    (default 4 GiB, enough for any shipped configuration at 16.7 Mpixel;
    None: no limit). Above it, :class:`ResourceLimitError` (a
    :class:`BitstreamError`) names the figures.
    ``tile_rows``: run upsampling and synthesis on bands of that many rows
    (:mod:`decoder_runtime.tiling`); None (default): bands only for a frame
    whose whole graph would need more than 192 MiB; 0: never.
    """
    t: Dict[str, float] = {}
    start = time.perf_counter()
    # Loaded on first use: numba and onnxruntime are most of a cold start.
    from .bitstream import read_bitstream
    from .latent_codec import decode_latents
    from .reconstruct import reconstruct

    max_pixels, max_memory = decode_options(provider, max_pixels, max_memory)
    t["setup"] = time.perf_counter() - start
    if not isinstance(source, (bytes, bytearray, memoryview)):
        t_read = time.perf_counter()
        data = _read_source(source, max_pixels, max_memory)
        t["read"] = time.perf_counter() - t_read
    else:
        data = bytes(source)
    t0 = time.perf_counter()
    bs = read_bitstream(data, max_pixels=max_pixels, max_memory=max_memory)
    t1 = time.perf_counter()
    try:
        grids = decode_latents(bs, threads=threads)
        t2 = time.perf_counter()
        latents = synthesis_latents(bs.arch, grids)
        image = reconstruct(bs.arch, bs.float_params(), latents, provider=provider, threads=threads, timings=t,
                            tile_rows=tile_rows)
    except MemoryError:
        raise out_of_memory(bs.arch.img_size, max_memory, "bitstream") from None
    t["parse"] = t1 - t0
    t["latents"] = t2 - t1
    t["total"] = time.perf_counter() - start
    return DecodedImage(image, t if timings else None)
