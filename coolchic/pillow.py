"""Pillow plugin for coolchic bitstreams (``.cool``), in the manner of
``pillow_avif`` and ``pillow_jxl``: importing this module registers the format.

    import coolchic.pillow  # noqa: F401
    from PIL import Image
    im = Image.open("kodim14.cool")        # header only; pixels on load()
    im.info["bpp"], im.info["dec_cfg"]["arm"]
    im.save("copy.cool", lmbda=0.001, preset="fast")   # needs the encoder extra

Decoding uses the torch-free runtime (:func:`coolchic.decoder_runtime.decode`).
Modes: 8-bit RGB -> ``RGB``; 8-bit gray -> ``L``; 9..16-bit gray -> ``I;16``
holding the code values unscaled (``info["bitdepth"]`` says how many bits are
used); 9..16-bit RGB -> ``RGB`` rounded to 8 bits (Pillow has no 16-bit RGB
mode; :func:`coolchic.decode` gives the full precision).

yuv420 and yuv444 frames become ``RGB`` through the ITU-R BT.709 matrix
(Kr = 0.2126, Kb = 0.0722) in limited ("TV") range, the convention of raw
YUV test sequences: Y' in [16, 235] and Cb, Cr in [16, 240] at 8 bits, scaled
by 2^(bitdepth - 8) above; yuv420 chroma is repeated over each 2x2 block.

Video sequences (format versions 2 and 4) open like animated formats: ``n_frames``,
``is_animated``, ``seek(k)`` / ``tell()`` in display order (``ImageSequence``
works), ``info["duration"]`` in milliseconds when the file gives a frame rate,
``info["frame_type"]`` of the current frame. Frames are decoded in order by
:func:`coolchic.decoder_runtime.decode_video`, which holds only the reference
frames it still needs; seeking forward decodes the frames between, seeking
backward starts again from the first frame (as the GIF plugin does).

Errors follow Pillow's conventions: another format or an unreadable header
makes ``Image.open`` raise ``UnidentifiedImageError``; a corrupted file makes
``verify()`` raise ``SyntaxError`` (as the PNG plugin does on a bad CRC; every
frame section's CRC for a sequence) and ``load()`` raise ``OSError`` (an
:class:`ImageIOError`, so a ``CoolChicError`` too); ``seek`` past the last
frame raises ``EOFError``.
"""

from __future__ import annotations

import zlib
from typing import IO, Dict, Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageFile

from coolchic.decoder_runtime.errors import CoolChicError, ImageIOError
from coolchic.decoder_runtime.frame import RawImage

FORMAT = "COOLCHIC"
EXTENSION = ".cool"
MIME = "image/x-coolchic"
_CODEC = "coolchic"
_SEQ_CODEC = "coolchic_frame"

# BT.709 luma weights; the matrix below follows from them.
KR, KB = 0.2126, 0.0722


def _accept(prefix: bytes) -> bool:
    from coolchic.decoder_runtime.bitstream import MAGIC, READABLE_VERSIONS

    return prefix[: len(MAGIC)] == MAGIC and prefix[len(MAGIC):len(MAGIC) + 1] in [
        bytes([v]) for v in READABLE_VERSIONS]


def yuv_to_rgb8(img: RawImage) -> np.ndarray:
    """An H x W x 3 uint8 RGB array from a yuv420 or yuv444 :class:`RawImage` (BT.709, limited range)."""
    s = float(1 << (img.bitdepth - 8))
    y = img.planes[0].astype(np.float32) / s
    u, v = (p.astype(np.float32) / s for p in img.planes[1:])
    if img.frame_data_type == "yuv420":
        h, w = y.shape
        u, v = (np.pad(np.repeat(np.repeat(p, 2, 0), 2, 1), ((0, h % 2), (0, w % 2)), mode="edge") for p in (u, v))
    kg = 1.0 - KR - KB
    yy = (y - 16.0) * (255.0 / 219.0)
    cb = (u - 128.0) * (255.0 / 224.0)
    cr = (v - 128.0) * (255.0 / 224.0)
    r = yy + 2 * (1 - KR) * cr
    g = yy - (2 * KB * (1 - KB) / kg) * cb - (2 * KR * (1 - KR) / kg) * cr
    b = yy + 2 * (1 - KB) * cb
    return np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)


def _mode_of(frame_data_type: str, bitdepth: int) -> str:
    if frame_data_type == "gray":
        return "L" if bitdepth == 8 else "I;16"
    return "RGB"


def _pixels(img: RawImage) -> bytes:
    """The raw bytes of ``img`` in the Pillow mode :func:`_mode_of` gives it."""
    if img.frame_data_type in ("yuv420", "yuv444"):
        return yuv_to_rgb8(img).tobytes()
    arr = img.to_hwc()
    if img.frame_data_type == "gray":
        return np.ascontiguousarray(arr, dtype="<u2" if img.bitdepth > 8 else np.uint8).tobytes()
    if img.bitdepth > 8:
        arr = np.rint(arr.astype(np.float32) * (255.0 / img.max_value)).astype(np.uint8)
    return np.ascontiguousarray(arr).tobytes()


class _Frames:
    """The frames of a sequence file in display order, decoded on demand.

    Holds one :func:`decode_video` generator: frame ``k`` after the last one
    given continues it, an earlier one starts it again.
    """

    def __init__(self, source: Union[str, bytes]):
        self._source = source
        self._gen: Optional[Iterator] = None
        self._next = 0
        self._last = None  # (index, RawImage)

    def get(self, k: int):
        from coolchic.decoder_runtime import decode_video

        if self._last is not None and self._last[0] == k:
            return self._last[1]
        if self._gen is None or k < self._next:
            self._gen = decode_video(self._source, threads=1)
            self._next = 0
        while self._next <= k:
            frame = next(self._gen).image
            self._last = (self._next, frame)
            self._next += 1
        return self._last[1]


class CoolChicImageFile(ImageFile.ImageFile):
    """A ``.cool`` file: the header is read on open, the frame decoded on ``load()``."""

    format = FORMAT
    format_description = "coolchic overfitted neural image codec"
    _n_frames = 1
    _frame = 0
    _sequence = None  # (SequenceHeader, entries in decoding order) of a video file

    @property
    def n_frames(self) -> int:
        return self._n_frames

    @property
    def is_animated(self) -> bool:
        return self._n_frames > 1

    def _open(self) -> None:
        from coolchic.decoder_runtime.arch import decoder_options
        from coolchic.decoder_runtime.bitstream import HEADER_PEEK, MAGIC, SEQUENCE_VERSIONS, read_header
        from coolchic.encoder.complexity import total_mac_per_pixel

        assert self.fp is not None
        start = self.fp.tell()
        prefix = self.fp.read(HEADER_PEEK)
        if not _accept(prefix):
            raise SyntaxError("not a coolchic bitstream")
        self.fp.seek(0, 2)
        n_bytes = self.fp.tell() - start
        self.fp.seek(start)
        if prefix[len(MAGIC)] in SEQUENCE_VERSIONS:
            return self._open_sequence(start, n_bytes)
        try:
            header = read_header(prefix, n_bytes=n_bytes)
        except CoolChicError as e:
            raise SyntaxError(f"broken coolchic header: {e}") from None
        arch = header.arch
        h, w = arch.img_size
        self._size = (w, h)
        self._mode = _mode_of(arch.frame_data_type, arch.bitdepth)
        self.info.update({
            "bpp": 8 * n_bytes / (h * w),
            "bitdepth": arch.bitdepth,
            "frame_data_type": arch.frame_data_type,
            "dec_cfg": decoder_options(arch),
            "mac_per_pixel": total_mac_per_pixel(arch),
            "substreams": header.n_substreams,
        })
        if arch.frame_data_type in ("yuv420", "yuv444"):
            self.info["yuv_to_rgb"] = "BT.709 limited range"
        self._start = start
        self.tile = [ImageFile._Tile(_CODEC, (0, 0, w, h), start, None)]

    def _open_sequence(self, start: int, n_bytes: int) -> None:
        import io

        from coolchic.decoder_runtime.sequence import index_sequence_file

        # The index reads each section's start only; a file-like that does not
        # start at its first byte is copied, so that offsets are the file's.
        f = self.fp if start == 0 else io.BytesIO(self.fp.read())
        try:
            header, entries = index_sequence_file(f)
        except CoolChicError as e:
            raise SyntaxError(f"broken coolchic sequence: {e}") from None
        self._sequence = (header, entries)
        self._n_frames = header.n_frames
        self._size = (header.width, header.height)
        self._mode = _mode_of(header.frame_data_type, header.bitdepth)
        self.info.update({
            "bpp": 8 * n_bytes / (header.height * header.width * header.n_frames),
            "bitdepth": header.bitdepth,
            "frame_data_type": header.frame_data_type,
        })
        if header.fps is not None:
            num, den = header.fps
            self.info["fps"] = num / den
            self.info["duration"] = 1000.0 * den / num
        if header.frame_data_type in ("yuv420", "yuv444"):
            self.info["yuv_to_rgb"] = "BT.709 limited range"
        filename = self.filename if isinstance(self.filename, str) and self.filename else None
        if filename is None:
            f.seek(0 if f is not self.fp else start)
            source: Union[str, bytes] = f.read()
        else:
            source = filename
        self._frames = _Frames(source)
        self._start = start
        # load() drops self.fp; seek() gives it back for the next frame (the GIF plugin's way).
        self._close_exclusive_fp_after_loading = False
        self._fp = self.fp
        self._seek_frame(0)

    def _seek_frame(self, frame: int) -> None:
        header, entries = self._sequence
        self.fp = self._fp
        self._frame = frame
        self.info["frame_type"] = next(e.spec.frame_type for e in entries if e.spec.display_index == frame)
        self.tile = [ImageFile._Tile(_SEQ_CODEC, (0, 0, header.width, header.height), 0, (self._frames, frame))]

    def seek(self, frame: int) -> None:
        """Go to frame ``frame`` (display order); ``EOFError`` past the last one."""
        if not self._seek_check(frame):
            return
        if self._sequence is not None:
            self._seek_frame(frame)

    def tell(self) -> int:
        return self._frame

    def verify(self) -> None:
        """Check the file's CRC-32s (every frame section's, for a sequence) without decoding;
        ``SyntaxError`` if one does not match."""
        if self.fp is None:
            raise RuntimeError("verify must be called directly after open")
        if self._sequence is not None:  # (the sequence header's CRC was checked on open)
            for e in self._sequence[1]:  # a section at a time: memory follows the frames, not the file
                self.fp.seek(self._start + e.start)
                body = self.fp.read(e.end - e.start)
                if len(body) < 4 or zlib.crc32(body[:-4]) != int.from_bytes(body[-4:], "little"):
                    raise SyntaxError(f"broken coolchic sequence: the section of frame {e.spec.display_index} "
                                      f"fails its CRC-32 (corrupted or truncated)")
        else:
            self.fp.seek(self._start)
            data = self.fp.read()
            if len(data) < 4 or zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
                raise SyntaxError("broken coolchic file: CRC-32 mismatch (corrupted or truncated)")
        if self._exclusive_fp:
            self.fp.close()
        self.fp = None


class CoolChicDecoder(ImageFile.PyDecoder):
    """Reads the whole bitstream from the file and decodes it with the runtime."""

    _pulls_fd = True

    def decode(self, buffer) -> tuple:
        from coolchic.decoder_runtime import decode

        assert self.fd is not None
        data = self.fd.read()
        try:
            img = decode(data, threads=1).image
        except CoolChicError as e:
            raise ImageIOError(f"cannot decode coolchic file: {e}") from None
        if (img.width, img.height) != (self.state.xsize, self.state.ysize) or _mode_of(
                img.frame_data_type, img.bitdepth) != self.mode:
            raise ImageIOError("cannot decode coolchic file: the file changed since it was opened")
        self.set_as_raw(_pixels(img), "I;16" if self.mode == "I;16" else None)
        return -1, 0


class CoolChicFrameDecoder(ImageFile.PyDecoder):
    """One frame of a sequence file, from the image's :class:`_Frames` (the tile's arguments)."""

    _pulls_fd = True

    def decode(self, buffer) -> tuple:
        frames, k = self.args
        try:
            img = frames.get(k)
        except CoolChicError as e:
            raise ImageIOError(f"cannot decode frame {k} of the coolchic sequence: {e}") from None
        self.set_as_raw(_pixels(img), "I;16" if self.mode == "I;16" else None)
        return -1, 0


def _save(im: Image.Image, fp: IO[bytes], filename) -> None:
    """``im.save(..., lmbda=, preset=, dec_cfg=, ...)``: the keywords of :func:`coolchic.encode`."""
    from coolchic.encoding import ENCODE_OPTIONS, encode

    opts: Dict = {k: v for k, v in im.encoderinfo.items() if k in ENCODE_OPTIONS}
    if im.mode.startswith("I") and "bitdepth" not in opts and "bitdepth" in im.info:
        opts["bitdepth"] = im.info["bitdepth"]  # a 10-bit coolchic image saved again stays 10 bits
    fp.write(encode(im, **opts))


Image.register_open(FORMAT, CoolChicImageFile, _accept)
Image.register_save(FORMAT, _save)
Image.register_extension(FORMAT, EXTENSION)
Image.register_mime(FORMAT, MIME)
Image.register_decoder(_CODEC, CoolChicDecoder)
Image.register_decoder(_SEQ_CODEC, CoolChicFrameDecoder)
