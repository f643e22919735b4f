"""``coolchic-decode``: decode a coolchic bitstream to an image file, without torch."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from coolchic import __version__

from .arch import DEFAULT_MAX_PIXELS
from .budget import DEFAULT_MAX_MEMORY, parse_size
from .errors import ConfigError, CoolChicError, ImageIOError
from .image_io import PNG_COMPRESS_LEVEL

PROG = "coolchic-decode"

DESCRIPTION = """\
Decode a coolchic bitstream (.cool) into an image, or a sequence file into its frames.

The output format follows the file extension and must suit the frame:
rgb -> .png (8 or 16 bit) or .ppm; gray -> .png or .pgm; yuv420/yuv444 -> .yuv
(raw planar, 8 bit as bytes, more as 16-bit little-endian). The frames of a
sequence go, in display order, into one .yuv file or into numbered images
named by a printf pattern (frame_%%03d.png). Output files are written
atomically: each appears complete or not at all.
"""

EPILOG = """\
examples:
  coolchic-decode -i kodim14.cool -o kodim14.png
  coolchic-decode -i clip.cool -o clip_1920x1080_yuv420_10b.yuv --threads 2 --verbose
  coolchic-decode -i huge.cool -o huge.png --max-memory 16G
  coolchic-decode -i clip.cool -o clip_640x272_25p_yuv420_8b.yuv      # a sequence, all frames
  coolchic-decode -i clip.cool -o frame_%03d.png                      # one PNG per frame
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-i", "--input", required=True, metavar="IN.cool", help="bitstream to decode")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="image to write (.png .ppm .pgm .yuv)")
    p.add_argument(
        "--provider",
        choices=("cpu", "cuda"),
        default="cpu",
        help="onnxruntime execution provider for upsampling and synthesis (default: cpu)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="threads for latent decoding and for upsampling and synthesis (default: 1)",
    )
    p.add_argument(
        "--max-memory",
        type=memory_size,
        default=DEFAULT_MAX_MEMORY,
        metavar="SIZE",
        help="refuse, before decoding, a bitstream whose decode would need more memory than SIZE, "
        "in bytes or with K, M, G (powers of 1024), e.g. 512M, 8G (default: 4G, enough for any shipped "
        "decoder configuration at the 16.7 Mpixel limit)",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse images of more than N pixels (default: {DEFAULT_MAX_PIXELS}, 16.7 Mpixel; an 8K frame "
        "is 33.2 Mpixel)",
    )
    p.add_argument(
        "--tile-rows",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="run upsampling and synthesis on bands of N rows, 0 for the whole frame at once (default: bands "
        "only for frames large enough to need them)",
    )
    p.add_argument(
        "--png-compress-level",
        type=int,
        choices=range(10),
        default=PNG_COMPRESS_LEVEL,
        metavar="L",
        help=f"zlib level of a PNG output, 0 (fastest) to 9 (smallest) (default: {PNG_COMPRESS_LEVEL})",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print the frame, its rate and per-stage timings")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type of the counts both CLIs take (threads, iterations)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type of a count where 0 means none (``--tile-rows``)."""
    return _int_at_least(text, 0, "an integer >= 0")


def memory_size(text: str) -> int:
    """argparse type of ``--max-memory``: bytes, or a number with K, M, G or T (powers of 1024)."""
    try:
        return parse_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def rate_line(bs, n_bytes: int) -> str:
    """Where the ``n_bytes`` of a frame go: each network's parameters (their section
    padded to a byte), the latents, and the rest (header, lengths, CRC)."""
    from .expgolomb import module_bits

    bits = module_bits(bs.arch, bs.q_params, bs.expgol)
    latent_bytes = sum(len(s) for s in bs.substreams)
    param_bytes = -(-sum(bits.values()) // 8)
    nets = ", ".join(f"{m} {b}" for m, b in bits.items())
    n_sub = len(bs.substreams)
    return (f"rate (bytes): framing {n_bytes - param_bytes - latent_bytes}, parameters {param_bytes} ({nets} bits), "
            f"latents {latent_bytes} in {n_sub} substream{'s' if n_sub > 1 else ''}")


def _file_rate_lines(path: str, sequence: bool) -> List[str]:
    """:func:`rate_line` of an image file, or of each frame of a sequence file
    (decoding order). Parsed again from the file: only -v pays for it."""
    from .bitstream import read_bitstream
    from .direct import DIRECT_BETA_STEPS, SOURCE_FUTURE
    from .sequence import index_sequence, read_sequence_frame

    with open(path, "rb") as f:
        data = f.read()
    if not sequence:
        return [rate_line(read_bitstream(data, max_pixels=None), len(data))]
    header, entries = index_sequence(data)

    def line(e) -> str:
        # A section's bytes: from its display index to its CRC (its length field excluded).
        if e.direct is not None:
            src = e.spec.refs[1] if e.direct.source == SOURCE_FUTURE else e.spec.refs[0]
            return (f"frame {e.spec.display_index} (B, direct, {e.end - e.start} bytes): blend "
                    f"{e.direct.beta_k}/{DIRECT_BETA_STEPS}, motion of frame {src}")
        derived = ""
        if e.motion_source is not None:
            src = e.spec.refs[1] if e.motion_source == SOURCE_FUTURE else e.spec.refs[0]
            derived = f", motion derived from frame {src}"
        return (f"frame {e.spec.display_index} ({e.spec.frame_type}{derived}, {e.end - e.start} bytes): "
                + rate_line(read_sequence_frame(data, header, e), e.end - e.start))

    return [line(e) for e in entries]


def _report(path_in: str, path_out: str, dec, n_bytes: int, write_s: float) -> None:
    img = dec.image
    bpp = 8 * n_bytes / (img.height * img.width)
    print(f"{path_in}: {n_bytes} bytes, {img.width}x{img.height} {img.frame_data_type} {img.bitdepth}-bit, {bpp:.4f} bpp")
    print("\n".join(_file_rate_lines(path_in, sequence=False)))
    t = dict(dec.timings)
    t["write"] = write_s
    order = ("setup", "read", "parse", "latents", "graph_build", "session", "upsampling_synthesis", "output", "write")
    parts = ", ".join(f"{k} {1e3 * t[k]:.1f}" for k in order if k in t)
    print(f"timings (ms): {parts}; total {1e3 * (t['total'] + write_s):.1f}")
    print(f"wrote {path_out}")


def main(argv: Optional[List[str]] = None, fast_exit: Optional[bool] = None) -> int:
    """Run the command; returns the exit status (0 success, 1 error, 130 interrupted).

    As a program (``argv`` not given) the process ends with ``os._exit`` once
    the output file is closed and the console flushed: tearing down numba and
    an onnxruntime session takes 100-200 ms, a quarter of a whole decode, for
    memory the kernel frees anyway. ``fast_exit=False`` keeps the interpreter.
    """
    rc = _run(argv)
    if argv is None if fast_exit is None else fast_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def _run(argv: Optional[List[str]]) -> int:
    args = build_parser().parse_args(argv)
    try:
        import time

        from .api import decode
        from .image_io import write_image

        if _is_sequence(args.input):
            return _decode_sequence(args)
        _check_output(args.output)
        dec = decode(args.input, provider=args.provider, threads=args.threads, timings=True,
                     max_memory=args.max_memory, max_pixels=args.max_pixels, tile_rows=args.tile_rows)
        t0 = time.perf_counter()
        write_image(dec.image, args.output, args.png_compress_level)
        write_s = time.perf_counter() - t0
        if args.verbose:
            _report(args.input, args.output, dec, os.path.getsize(args.input), write_s)
    except CoolChicError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `coolchic-decode -v ... | head -1`: the reader left. An image was written
        # before the report; a sequence's atomic output is dropped. Python's exit
        # must not trip over stdout again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0


def _check_output(path: str) -> None:
    """An image extension and an existing directory: checked before decoding, as a wrong
    name should not cost a decode."""
    from .image_io import IMAGE_EXTENSIONS, extension_of

    ext = extension_of(path)
    if ext not in IMAGE_EXTENSIONS:
        raise ImageIOError(f"{path}: unknown output extension {ext or '(none)'!r}; use .png .ppm .pgm or .yuv")
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise ImageIOError(f"{path}: directory {out_dir} does not exist")


def _is_sequence(path: str) -> bool:
    from .bitstream import MAGIC, SEQUENCE_VERSIONS

    try:
        with open(path, "rb") as f:
            start = f.read(len(MAGIC) + 1)
    except OSError:
        return False  # decode() reports it
    return start[: len(MAGIC)] == MAGIC and start[len(MAGIC):] in [bytes([v]) for v in SEQUENCE_VERSIONS]


def _decode_sequence(args) -> int:
    """All frames of a sequence file, display order, into one .yuv or a numbered series of images."""
    import time

    from .atomic_file import atomic_open
    from .image_io import encode_image, extension_of, frame_name, write_image
    from .video import decode_video

    out = args.output
    pattern = "%" in out
    if pattern:
        frame_name(out, 0)  # a valid pattern, before decoding
    elif extension_of(out) != ".yuv":
        raise ImageIOError(f"{out}: a sequence decodes to one .yuv file or to a pattern such as frame_%03d.png")
    _check_output(out)
    t0 = time.perf_counter()
    frames = decode_video(args.input, provider=args.provider, threads=args.threads, timings=True,
                          max_memory=args.max_memory, max_pixels=args.max_pixels)
    n = 0
    if pattern:
        for n, dec in enumerate(frames, 1):
            write_image(dec.image, frame_name(out, n - 1), args.png_compress_level)
            _frame_line(args, n - 1, dec)
    else:
        try:
            with atomic_open(out) as f:
                for n, dec in enumerate(frames, 1):
                    f.write(encode_image(dec.image, ".yuv"))
                    _frame_line(args, n - 1, dec)
        except OSError as e:
            raise ImageIOError(f"cannot write {out}: {e.strerror or e}") from None
    if args.verbose:
        total = time.perf_counter() - t0
        size = os.path.getsize(args.input)
        print(f"{args.input}: {size} bytes, {n} frames in {total:.2f} s ({n / total:.1f} frames/s); wrote {out}")
        print("\n".join(_file_rate_lines(args.input, sequence=True)))
    return 0


def _frame_line(args, index: int, dec) -> None:
    if args.verbose and dec.timings:
        t = dec.timings
        print(f"frame {index}: latents {1e3 * t.get('latents', 0):.1f} ms, synthesis "
              f"{1e3 * t.get('upsampling_synthesis', 0):.1f} ms, motion compensation "
              f"{1e3 * t.get('motion_compensation', 0):.1f} ms, total {1e3 * t['total']:.1f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
