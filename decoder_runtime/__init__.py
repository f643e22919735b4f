"""coolchic decoder runtime: decodes a coolchic bitstream without PyTorch.

Stable API::

    decode(source, provider="cpu", threads=1, timings=False,
           max_pixels=None, max_memory=4 << 30) -> DecodedImage
    decode_video(source, ...) -> iterator of DecodedImage, display order
    write_image(image: RawImage, path)      # .png .ppm .pgm .yuv, atomic
    read_image(path, ...) -> RawImage
    DecodedImage.to_numpy()  # H x W x 3, H x W (gray), YUV420Planes(y, u, v)

Errors are subclasses of :class:`CoolChicError`. Importing this package is
cheap: numba and onnxruntime load on the first decode.

Safe to embed: ``decode`` may run in several threads at once (same result as
alone, bit for bit), and the package changes nothing process-wide (umask,
numba threading layer, malloc). The numba kernels are cached on disk where a
writable place exists, else compiled per process with a ``JitCacheWarning``
(:mod:`decoder_runtime.jit`); thread rules in :mod:`decoder_runtime.latent_codec`.
"""

from .api import DecodedImage, decode
from .video import decode_video
from .arch import DecoderArch
from .errors import (
    BitstreamError,
    ConfigError,
    CoolChicError,
    ImageIOError,
    InferenceError,
    MissingDependencyError,
    ProviderError,
    ResourceLimitError,
)
from .frame import RawImage, YUV420Planes
from .image_io import read_image, write_image

# One version source: the installed distribution's metadata (coolchic/__init__.py).
from coolchic import __version__  # noqa: E402

__all__ = [
    "BitstreamError",
    "ConfigError",
    "CoolChicError",
    "DecodedImage",
    "DecoderArch",
    "ImageIOError",
    "InferenceError",
    "MissingDependencyError",
    "ProviderError",
    "ResourceLimitError",
    "RawImage",
    "YUV420Planes",
    "decode",
    "decode_video",
    "read_image",
    "write_image",
    "__version__",
]
