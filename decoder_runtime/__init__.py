"""coolchic decoder runtime: decodes a coolchic bitstream without PyTorch.

Stable API::

    decode(source, provider="cpu", threads=1, timings=False) -> DecodedImage
    write_image(image: RawImage, path)      # .png .ppm .pgm .yuv, atomic
    read_image(path, ...) -> RawImage

Errors are subclasses of :class:`CoolChicError`. Importing this package is
cheap: numba and onnxruntime load on the first decode.
"""

from .api import DecodedImage, decode
from .arch import DecoderArch
from .errors import BitstreamError, ConfigError, CoolChicError, ImageIOError, ProviderError
from .frame import RawImage
from .image_io import read_image, write_image

__version__ = "0.1.0"

__all__ = [
    "BitstreamError",
    "ConfigError",
    "CoolChicError",
    "DecodedImage",
    "DecoderArch",
    "ImageIOError",
    "ProviderError",
    "RawImage",
    "decode",
    "read_image",
    "write_image",
    "__version__",
]
