"""coolchic: an overfitted neural image codec with a torch-free decoder.

    import coolchic
    img = coolchic.decode("kodim01.cool")           # decoder_runtime.DecodedImage
    data = coolchic.encode(array, lmbda=0.001)      # bytes; needs the encoder extra

Importing this package loads nothing heavy (no torch, numba or onnxruntime):
the decoder's dependencies load on the first decode, torch on the first encode.
Subpackages: :mod:`coolchic.decoder_runtime` (decoding, no torch),
:mod:`coolchic.export` (bitstream writing, ONNX export), :mod:`coolchic.encoder`
(training, needs ``pip install coolchic[encoder]``), :mod:`coolchic.cfg`
(the shipped configurations).
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("coolchic")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def decode(source, **options):
    """:func:`coolchic.decoder_runtime.decode`: a path or bytes to a ``DecodedImage``."""
    from .decoder_runtime import decode as _decode

    return _decode(source, **options)


def encode(image, lmbda: float = 1e-3, preset: str = "fast", dec_cfg: str = "mop", **options) -> bytes:
    """:func:`coolchic.encoding.encode`: a numpy array, ``PIL.Image`` or path to bitstream bytes.

    Needs the encoder extra (PyTorch); without it, a ``MissingDependencyError``
    that says ``pip install 'coolchic[encoder]'``.
    """
    from .encoding import encode as _encode

    return _encode(image, lmbda=lmbda, preset=preset, dec_cfg=dec_cfg, **options)


__all__ = ["__version__", "decode", "encode"]
