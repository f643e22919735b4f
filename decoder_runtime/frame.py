"""RawImage: an image as integer planes, the form in which frames enter the
encoder (read from PNG/PPM/YUV) and leave the decoder (written to the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Tuple, Union

import numpy as np

from .arch import FRAME_DATA_TYPES
from .errors import ImageIOError


class YUV420Planes(NamedTuple):
    """The numpy form of a yuv420 image: Y is H x W, U and V are H/2 x W/2.

    A tuple of planes rather than one array, since the planes differ in size;
    ``y, u, v = img`` unpacks it, ``img._asdict()`` gives a dict.
    """

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray


@dataclass(frozen=True)
class RawImage:
    """Integer code values in ``[0, 2**bitdepth - 1]``, one 2-D array per plane.

    rgb: (R, G, B); gray: (Y,); yuv444: (Y, U, V) all H x W; yuv420: Y is H x W,
    U and V are H/2 x W/2. Arrays are uint8 for bitdepth 8, uint16 above.
    """

    planes: Tuple[np.ndarray, ...]
    frame_data_type: str
    bitdepth: int

    def __post_init__(self) -> None:
        if self.frame_data_type not in FRAME_DATA_TYPES:
            raise ImageIOError(f"unknown frame data type {self.frame_data_type!r}")
        n = 1 if self.frame_data_type == "gray" else 3
        if len(self.planes) != n:
            raise ImageIOError(f"a {self.frame_data_type} image has {n} planes, got {len(self.planes)}")
        h, w = self.planes[0].shape
        want = (h // 2, w // 2) if self.frame_data_type == "yuv420" else (h, w)
        for p in self.planes[1:]:
            if p.shape != want:
                raise ImageIOError(f"chroma plane of shape {p.shape}, expected {want} for {self.frame_data_type}")

    @property
    def height(self) -> int:
        return int(self.planes[0].shape[0])

    @property
    def width(self) -> int:
        return int(self.planes[0].shape[1])

    @property
    def max_value(self) -> int:
        return (1 << self.bitdepth) - 1

    def to_numpy(self) -> Union[np.ndarray, YUV420Planes]:
        """rgb/yuv444 as H x W x 3, gray as H x W, yuv420 as :class:`YUV420Planes`."""
        if self.frame_data_type == "yuv420":
            return YUV420Planes(*self.planes)
        return self.to_hwc()

    def to_hwc(self) -> np.ndarray:
        """rgb/yuv444 as H x W x 3, gray as H x W (yuv420 has no such form: see :meth:`to_numpy`)."""
        if self.frame_data_type == "yuv420":
            raise ImageIOError("a yuv420 image has no interleaved form")
        if len(self.planes) == 1:
            return self.planes[0]
        return np.stack(self.planes, axis=-1)
