"""A small PNG codec for 16-bit samples, the case Pillow cannot hold.

Pillow has no 16-bit-per-channel colour mode: it reads a 48-bit RGB PNG as
8-bit RGB and cannot write one. This module reads non-interlaced 16-bit PNGs
(gray, gray+alpha, RGB, RGBA) and writes 16-bit gray or RGB, per the PNG
specification (ISO/IEC 15948): chunks with CRC-32, one zlib stream over
filtered rows. Everything else goes through Pillow in :mod:`image_io`.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Dict, Tuple

import numpy as np

from .errors import ImageIOError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
_COLOUR_NAMES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def read_header(head: bytes) -> Dict[str, int]:
    """IHDR fields from the first 33 bytes of a PNG file."""
    if len(head) < 33 or head[:8] != SIGNATURE or head[12:16] != b"IHDR":
        raise ImageIOError("not a PNG file (bad signature or no IHDR chunk first)")
    w, h, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return dict(width=w, height=h, bit_depth=depth, colour_type=ctype, interlace=interlace)


def encode_png16(planes: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes for a (C, H, W) array of 16-bit samples, C = 1 (gray) or 3 (RGB)."""
    c, h, w = planes.shape
    if c not in (1, 3):
        raise ImageIOError(f"a 16-bit PNG is written from 1 or 3 planes, got {c}")
    rows = np.ascontiguousarray(np.moveaxis(planes, 0, -1), dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
    # Filter "Sub" on every row: photographic content deflates far better as
    # differences of neighbouring pixels; bytes wrap modulo 256 by definition.
    bpp = 2 * c
    sub = rows.copy()
    sub[:, bpp:] -= rows[:, :-bpp]
    raw = np.concatenate([np.full((h, 1), 1, np.uint8), sub], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0 if c == 1 else 2, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, compress_level)) + _chunk(b"IEND", b"")


def _unfilter(data: np.ndarray, h: int, stride: int, bpp: int) -> np.ndarray:
    from .jit import njit  # only this rare path pays for numba and the JIT

    global _unfilter_jit
    if _unfilter_jit is None:
        _unfilter_jit = njit(_unfilter_py)
    out = np.empty((h, stride), np.uint8)
    bad = _unfilter_jit(data, h, stride, bpp, out)
    if bad >= 0:
        raise ImageIOError(f"corrupt PNG: unknown filter type on row {bad}")
    return out


_unfilter_jit = None


def _unfilter_py(data, h, stride, bpp, out):
    """Undo the per-row filters (None, Sub, Up, Average, Paeth); returns -1 or a bad row."""
    for y in range(h):
        base = y * (stride + 1)
        ftype = data[base]
        for i in range(stride):
            x = np.int32(data[base + 1 + i])
            a = np.int32(out[y, i - bpp]) if i >= bpp else np.int32(0)
            b = np.int32(out[y - 1, i]) if y > 0 else np.int32(0)
            if ftype == 0:
                v = x
            elif ftype == 1:
                v = x + a
            elif ftype == 2:
                v = x + b
            elif ftype == 3:
                v = x + (a + b) // 2
            elif ftype == 4:
                c = np.int32(out[y - 1, i - bpp]) if (y > 0 and i >= bpp) else np.int32(0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                if pa <= pb and pa <= pc:
                    v = x + a
                elif pb <= pc:
                    v = x + b
                else:
                    v = x + c
            else:
                return y
            out[y, i] = v & 0xFF
    return -1


def decode_png16(f: BinaryIO, max_pixels: int) -> Tuple[np.ndarray, int]:
    """``(C, H, W)`` uint16 samples and the colour type of a 16-bit non-interlaced PNG."""
    hdr = read_header(f.read(33))
    w, h, ctype = hdr["width"], hdr["height"], hdr["colour_type"]
    if hdr["bit_depth"] != 16 or ctype not in _CHANNELS:
        raise ImageIOError(f"expected a 16-bit gray/RGB PNG, got {hdr['bit_depth']}-bit {_COLOUR_NAMES.get(ctype, ctype)}")
    if hdr["interlace"]:
        raise ImageIOError("interlaced (Adam7) 16-bit PNG is not supported; re-save it without interlacing")
    if not (1 <= w and 1 <= h and w * h <= max_pixels):
        raise ImageIOError(f"PNG of {w}x{h} pixels is out of range (at most {max_pixels} pixels)")
    c = _CHANNELS[ctype]
    stride = w * c * 2
    expected = h * (stride + 1)
    dec = zlib.decompressobj()
    parts, got = [], 0
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise ImageIOError("truncated PNG: no IEND chunk")
        length, kind = struct.unpack(">I4s", head)
        body = f.read(length)
        if len(body) < length or len(f.read(4)) < 4:
            raise ImageIOError(f"truncated PNG: chunk {kind!r} is cut short")
        if kind == b"IDAT":
            # Bounded inflation: a zip bomb cannot make us allocate past the image.
            try:
                chunk = dec.decompress(body, expected - got + 1)
            except zlib.error as e:
                raise ImageIOError(f"corrupt PNG: {e}") from None
            got += len(chunk)
            parts.append(chunk)
            if got > expected:
                raise ImageIOError("corrupt PNG: more image data than its size allows")
        elif kind == b"IEND":
            break
    data = b"".join(parts)
    if len(data) != expected:
        raise ImageIOError(f"truncated PNG: {len(data)} bytes of image data, expected {expected}")
    rows = _unfilter(np.frombuffer(data, np.uint8), h, stride, c * 2)
    samples = rows.view(">u2").reshape(h, w, c).astype(np.uint16)
    return np.moveaxis(samples, -1, 0), ctype
