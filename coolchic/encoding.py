"""``coolchic.encode``: an image in memory or on disk to bitstream bytes.

The one-call form of :func:`coolchic.encoder.api.encode_image` for
applications: it takes what Python programs hold images as (a numpy array, a
``PIL.Image``, a path), with the keyword names of ``encode_image`` and of
``coolchic-encode``. This module imports neither torch nor Pillow itself:
torch loads on the call, and its absence is a :class:`MissingDependencyError`
naming the ``encoder`` extra instead of an ``ImportError`` from deep inside.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from coolchic.decoder_runtime.errors import ConfigError, MissingDependencyError
from coolchic.decoder_runtime.frame import RawImage

ENCODER_EXTRA_HINT = "pip install 'coolchic[encoder]'"
# The keywords of encode() after the image (the Pillow plugin's save() passes these on).
ENCODE_OPTIONS = ("lmbda", "preset", "dec_cfg", "bitdepth", "overrides", "n_itr", "n_substreams", "threads",
                  "device", "workdir", "seed", "progress", "max_memory")


def require_encoder(what: str = "coolchic.encode"):
    """The encoder's API module, or :class:`MissingDependencyError` if PyTorch is absent."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            f"{what} needs the encoder extra (PyTorch), which is not installed: {ENCODER_EXTRA_HINT}"
        ) from None
    from coolchic.encoder import api

    return api


def as_raw_image(image: Any, bitdepth: Optional[int] = None) -> RawImage:
    """``image`` (numpy array, ``PIL.Image``, path or :class:`RawImage`) as a RawImage.

    ``bitdepth``: for uint16 arrays and 16-bit gray Pillow images, the bits the
    samples use (9..16); for raw ``.yuv`` paths, overrides the file name.
    """
    from coolchic.decoder_runtime import image_io

    if isinstance(image, RawImage):
        if bitdepth not in (None, image.bitdepth):
            raise ConfigError(f"bitdepth={bitdepth} contradicts the RawImage's own bitdepth {image.bitdepth}")
        return image
    if isinstance(image, (str, os.PathLike)):
        return image_io.read_image(image, bitdepth=bitdepth)
    pil = sys.modules.get("PIL.Image")  # a PIL image exists only once Pillow is imported
    if pil is not None and isinstance(image, pil.Image):
        return image_io.raw_from_pil(image, "the PIL image", bitdepth)
    if hasattr(image, "__array__") or hasattr(image, "__array_interface__"):
        return image_io.raw_from_array(image, bitdepth)
    raise ConfigError(
        f"cannot encode a {type(image).__name__}: give a numpy array (H x W x 3 or H x W), a PIL.Image or a path"
    )


def encode(
    image: Union[Any, str, Path],
    lmbda: float = 1e-3,
    preset: str = "fast",
    dec_cfg: str = "mop",
    *,
    bitdepth: Optional[int] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    n_itr: Optional[int] = None,
    n_substreams: Optional[int] = None,
    threads: Optional[int] = None,
    device: str = "cpu",
    workdir: Optional[Union[str, Path]] = None,
    seed: int = 0,
    progress: bool = False,
    max_memory: Optional[int] = None,
) -> bytes:
    """Encode ``image`` and return the bitstream, checked by decoding it.

    ``image``: a uint8 numpy array (H x W x 3 RGB or H x W gray), a uint16
    one with ``bitdepth`` (9..16), a ``PIL.Image`` (RGB, L, I;16; opaque
    alpha is dropped), or a path to a PNG, PPM/PGM or raw YUV file.
    ``lmbda``, ``preset``, ``dec_cfg``: as ``coolchic-encode --lmbda --preset
    --dec-cfg``; ``overrides``: decoder options such as ``{"arm": "16,2"}``
    (the ``--arm``, ``--layers_synthesis``, ... of the CLI). The remaining
    keywords are those of :func:`coolchic.encoder.api.encode_image`.

    Raises :class:`MissingDependencyError` without the encoder extra, and other
    :class:`CoolChicError` subclasses for bad images or options.
    """
    api = require_encoder()
    raw = as_raw_image(image, bitdepth)
    result = api.encode_image(
        raw, lmbda=lmbda, preset=preset, dec_cfg=dec_cfg, overrides=overrides, n_itr=n_itr,
        device=device, threads=threads, workdir=Path(workdir) if workdir is not None else None,
        seed=seed, n_substreams=n_substreams, progress=progress, max_memory=max_memory,
    )
    return result.bitstream
