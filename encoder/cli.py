"""coolchic-encode: the command line of the encoder.

Reads an image (PNG, PPM/PGM, raw YUV), overfits a Cool-chic decoder to it,
writes the bitstream atomically, decodes it with the torch-free runtime to
check it, and prints a summary. Decoder-configuration options follow the
reference Cool-chic (``--arm=X,Y``, ``--layers_synthesis=...``, ...) in both
underscore and hyphen spellings, and override the ``--dec-cfg`` file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from coolchic import __version__
from coolchic.decoder_runtime.cli import memory_size, positive_int

PROG = "coolchic-encode"

EPILOG = """\
examples:
  coolchic-encode -i kodim01.png -o kodim01.cool --lmbda 0.001 --preset fast
  coolchic-encode -i clip_1920x1080_30p_yuv420_10b.yuv -o clip.cool --dec-cfg lop
  coolchic-encode -i img.png -o img.cool --arm 24,2 --layers_synthesis 48-1-linear-relu,X-1-linear-none,X-3-residual-none

video (one sequence file; frames other than I and P are hierarchical B frames):
  low-delay P:    coolchic-encode -i clip_640x272_25p_yuv420_8b.yuv -o clip.cool --n-frames 9 --intra-pos 0 --p-pos 1-8
  random access:  coolchic-encode -i clip_640x272_25p_yuv420_8b.yuv -o clip.cool --n-frames 9 --intra-pos 0 --p-pos 8
  PNG frames:     coolchic-encode -i frame_%03d.png -o clip.cool --n-frames 17 --intra-period 16 --p-pos 8

Decoder configurations (--dec-cfg): vlop, lop, mop, hop, vhop (about 330, 620,
1240, 1770, 2830 multiplications per pixel), or a path to a .cfg file.
Encoder presets (--preset): fast, medium, slow (1600, 10000, 30000 iterations:
warm-up among 5 then 2 candidates, main soft-round phase, 100 (fast) or 500
hard-round iterations, then network quantization and RDOQ), debug, or a .cfg file.
With --workdir, an interrupted encode resumes from its last checkpoint.
"""


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return v


def add_effort_options(group) -> None:
    """--preset, --n-itr, --substreams: shared with coolchic-encode-batch."""
    group.add_argument("--preset", default="fast", metavar="NAME", help="encoder preset (debug, fast, medium, slow or a .cfg). Default fast")
    group.add_argument("--n-itr", "--n_itr", type=positive_int, metavar="N", help="override the iterations of the preset's main (soft-round) phase")
    group.add_argument("--substreams", type=int, default=None, choices=range(1, 65), metavar="1..64",
                       help="independent latent substreams, decodable in parallel (default: one per 256 rows)")
    group.add_argument("--max-memory", "--max_memory", dest="max_memory", type=memory_size, metavar="SIZE",
                       help="training memory budget, e.g. 4G: a larger frame trains in bands of rows, "
                       "same result (default: half the machine's RAM)")


def add_decoder_options(p: argparse.ArgumentParser) -> None:
    """--dec-cfg and the reference-style overrides: shared with coolchic-encode-batch."""
    dec = p.add_argument_group("decoder configuration (override --dec-cfg)")
    dec.add_argument("--dec-cfg", "--dec_cfg", default="mop", metavar="NAME", help="vlop, lop, mop, hop, vhop or a .cfg path. Default mop")
    dec.add_argument("--arm", metavar="X,Y", help="ARM as <context and hidden width>,<hidden layers>, e.g. 16,2")
    dec.add_argument("--layers-synthesis", "--layers_synthesis", dest="layers_synthesis", metavar="LAYERS",
                     help="synthesis layers <out>-<kernel>-<linear|residual>-<relu|none>, comma separated")
    dec.add_argument("--upsampling-kernel-size", "--upsampling_kernel_size", dest="upsampling_kernel_size",
                     type=int, metavar="K", help="upsampling transposed-convolution kernel size (even, >= 4)")
    dec.add_argument("--static-upsampling-kernel", "--static_upsampling_kernel", dest="static_upsampling_kernel",
                     action="store_true", default=None, help="do not learn (nor transmit) the upsampling kernels")
    dec.add_argument("--n-ft-per-res", "--n_ft_per_res", dest="n_ft_per_res", metavar="LIST",
                     help="features per latent resolution, e.g. 1,1,1,1,1,1,1 (only 1s are supported)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Encode an image, or a video into a sequence file, with coolchic (overfitted neural codec).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument("-i", "--input", required=True, type=Path, metavar="IMAGE", help="PNG (8/16 bit, RGB or gray), PPM/PGM, or raw .yuv")
    io.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.cool", help="bitstream to write (written atomically)")
    io.add_argument("--width", type=positive_int, metavar="W", help="raw YUV: width, when the file name does not say it")
    io.add_argument("--height", type=positive_int, metavar="H", help="raw YUV: height, when the file name does not say it")
    io.add_argument("--chroma", "--frame-data-type", dest="frame_data_type", choices=("yuv420", "yuv444"),
                    help="raw YUV: chroma format, when the file name does not say it")
    io.add_argument("--bitdepth", type=int, choices=range(8, 17), metavar="8..16",
                    help="raw YUV: bit depth, when the file name does not say it")
    io.add_argument("--frame", type=int, default=0, metavar="N",
                    help="raw YUV: index of the frame to encode, or of a sequence's first frame (default 0)")
    io.add_argument("--export-onnx", type=Path, metavar="DIR",
                    help="also export the upsampling + synthesis of this bitstream as ONNX into DIR")

    vid = p.add_argument_group("video (coding structure as the reference Cool-chic's)")
    vid.add_argument("--n-frames", "--n_frames", type=positive_int, default=None, metavar="N",
                     help="frames to code: more than 1 (or an input pattern such as frame_%%03d.png) writes a "
                     "sequence file")
    vid.add_argument("--intra-pos", "--intra_pos", default=None, metavar="POS",
                     help="display indices of the intra frames, e.g. 0 or 0,16 or 0-2 (default 0)")
    vid.add_argument("--p-pos", "--p_pos", default="", metavar="POS",
                     help="display indices of the P frames, same syntax (default none)")
    vid.add_argument("--intra-period", "--intra_period", type=positive_int, default=None, metavar="K",
                     help="one intra frame every K frames (instead of --intra-pos)")
    vid.add_argument("--dec-cfg-inter", "--dec_cfg_inter", default=None, metavar="NAME",
                     help="decoder configuration of the P frames, whose Cool-chic also outputs the motion, "
                     "mask and blend (default: the B frames' for a P frame right after its reference, as in "
                     "low delay; inter, lop with one 3x3 residual layer, further away)")
    vid.add_argument("--dec-cfg-b", "--dec_cfg_b", default=None, metavar="NAME",
                     help="decoder configuration of the B frames (default inter_b: latents from 1/8 of the "
                     "resolution down, small networks, as a B frame is mostly predicted; inter_b_fine, from 1/4, "
                     "at --lmbda 0.0005 and below; a B frame with derived motion: inter_b_derived, inter_b's "
                     "latents with a one-layer ARM and a linear synthesis, above --lmbda 0.0005)")
    vid.add_argument("--no-motion-init", dest="motion_init", action="store_false",
                     help="start every frame's motion from zero instead of an optical-flow estimate "
                     "(OpenCV DIS), which B frames and the P frames right after their reference use")
    vid.add_argument("--no-direct-b", dest="direct_b", action="store_false",
                     help="never send a B frame as a direct B frame (its blend weight alone, its motion "
                     "derived from a reference's), even where that costs less than its own Cool-chic")
    vid.add_argument("--no-derived-motion", dest="derive_b_motion", action="store_false",
                     help="train every B frame's motion on its own, never as a correction to the motion "
                     "derived from a reference's")

    rd = p.add_argument_group("rate-distortion and effort")
    rd.add_argument("--lmbda", type=_positive_float, default=1e-3, metavar="L",
                    help="rate constraint: loss = MSE + lmbda * rate (bpp). Default 1e-3")
    add_effort_options(rd)
    add_decoder_options(p)

    run = p.add_argument_group("execution")
    run.add_argument("--workdir", type=Path, metavar="DIR", help="logs, archi.txt and checkpoints; an interrupted run resumes from here")
    run.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="training device (default cpu)")
    run.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for training (default: all cores, at most 8)")
    run.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    run.add_argument("--log-every", type=int, default=100, metavar="N",
                     help="when stderr is not a terminal (logs, CI), a progress line every N iterations "
                     "instead of a bar (default 100; 0: none)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar nor progress lines")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def decoder_overrides(args: argparse.Namespace) -> dict:
    """The reference-style decoder options given on the command line."""
    keys = ("arm", "layers_synthesis", "upsampling_kernel_size", "static_upsampling_kernel", "n_ft_per_res")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def _unwritable(args: argparse.Namespace) -> Optional[str]:
    """Why an output place cannot be written, checked before training rather than after it."""
    from coolchic.decoder_runtime.atomic_file import check_writable_dir

    places = [("output directory", args.output.parent, False), ("workdir", args.workdir, True),
              ("--export-onnx directory", args.export_onnx, True)]
    for what, path, create in places:
        if path is None:
            continue
        try:
            check_writable_dir(path, create=create)
        except OSError as e:
            return f"cannot write to the {what} {path}: {e.strerror or e}"
    return None


def _fail(msg: str, code: int = 2) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        return _fail("the encoder needs PyTorch: pip install 'coolchic[encoder]'")

    from coolchic.decoder_runtime.errors import CoolChicError
    from coolchic.decoder_runtime.image_io import read_image

    from .api import encode_image, write_outputs

    t_start = time.perf_counter()
    try:
        if not args.input.exists() and "%" not in str(args.input):
            return _fail(f"input file not found: {args.input}")
        if args.output.exists() and args.output.is_dir():
            return _fail(f"output is a directory: {args.output}")
        if not args.output.parent.exists():
            return _fail(f"output directory does not exist: {args.output.parent}")
        problem = _unwritable(args)
        if problem:
            return _fail(problem)
        if (args.n_frames or 1) > 1 or "%" in str(args.input) or args.intra_pos or args.p_pos or args.intra_period:
            return _encode_video(args, t_start)
        image = read_image(
            args.input, width=args.width, height=args.height,
            frame_data_type=args.frame_data_type, bitdepth=args.bitdepth, frame_index=args.frame,
        )
        if args.device == "cpu":
            # Process-wide malloc tuning: the CLI's choice as an application, never the library's.
            from . import cpu

            cpu.configure_cpu(args.threads)
        result = encode_image(
            image,
            lmbda=args.lmbda,
            preset=args.preset,
            dec_cfg=args.dec_cfg,
            overrides=decoder_overrides(args),
            n_itr=args.n_itr,
            device=args.device,
            threads=args.threads,
            workdir=args.workdir,
            seed=args.seed,
            n_substreams=args.substreams,
            max_memory=args.max_memory,
            progress=not args.quiet and sys.stderr.isatty(),
            log_every=None if args.quiet or sys.stderr.isatty() else max(0, args.log_every),
        )
        write_outputs(result, args.output, args.export_onnx)
    except KeyboardInterrupt:
        hint = f" Run it again with --workdir {args.workdir} to resume." if args.workdir else ""
        print(f"\n{PROG}: interrupted; no output was written.{hint}", file=sys.stderr)
        return 130
    except CoolChicError as e:
        return _fail(str(e))
    except MemoryError:
        return _fail("out of memory (try a smaller image or a lighter --dec-cfg)")
    s = result.summary
    elapsed = time.perf_counter() - t_start
    print(
        f"{args.output}: {s['bytes']} bytes, {s['bpp']:.4f} bpp, PSNR {s['psnr_db']:.2f} dB, "
        f"{s['mac_per_pixel']:.0f} MAC/pixel, encode {elapsed:.1f} s "
        f"(training and quantization {s['train_s']:.1f} s, bitstream {s['write_s']:.2f} s, check decode {s['decode_s']:.2f} s)"
    )
    if args.export_onnx:
        print(f"ONNX upsampling + synthesis: {os.fspath(args.export_onnx)}")
    return 0


def _encode_video(args: argparse.Namespace, t_start: float) -> int:
    """The sequence path of :func:`main` (its errors are caught there)."""
    from coolchic.decoder_runtime.atomic_file import atomic_write_bytes
    from coolchic.decoder_runtime.coding_structure import intra_period_positions, parse_positions

    from .api import _progress_bar, _progress_log
    from .video import encode_video, frame_rate_from_name, read_sequence

    frames = read_sequence(args.input, args.n_frames, args.frame, args.width, args.height, args.frame_data_type,
                           args.bitdepth)
    n = len(frames)
    if args.intra_period and args.intra_pos:
        return _fail("give --intra-pos or --intra-period, not both")
    intra = (intra_period_positions(n, args.intra_period) if args.intra_period
             else parse_positions(args.intra_pos or "0", n, "--intra-pos"))
    p_pos = parse_positions(args.p_pos, n, "--p-pos") if args.p_pos else ()
    if args.device == "cpu":
        from . import cpu

        cpu.configure_cpu(args.threads)
    bars = not args.quiet and sys.stderr.isatty()
    log_every = None if args.quiet or bars else max(0, args.log_every)

    def progress(total: int):
        bar, cb = _progress_bar(total, bars)
        if cb is None and log_every:
            cb = _progress_log(log_every)
        return bar, cb

    def frame_done(k: int, total: int, s: dict) -> None:
        if not args.quiet:
            print(f"frame {k + 1}/{total} (display {s['display_index']}, {s['type']}, lambda {s['lmbda']:g}): "
                  f"{s['bytes']} bytes, PSNR {s['psnr_db']:.2f} dB, {s['seconds']:.1f} s"
                  f"{' (resumed)' if s['resumed'] else ''}"
                  f"{' (direct: its Cool-chic took ' + str(s['coded_bytes']) + ' bytes)' if s['direct'] else ''}"
                  f"{' (derived motion)' if s['derived_motion'] else ''}",
                  file=sys.stderr, flush=True)

    def log_line(text: str) -> None:
        if not args.quiet:
            print(f"coolchic: {text}", file=sys.stderr, flush=True)

    res = encode_video(frames, intra, p_pos, lmbda=args.lmbda, preset=args.preset, dec_cfg=args.dec_cfg,
                       dec_cfg_inter=args.dec_cfg_inter, dec_cfg_b=args.dec_cfg_b, overrides=decoder_overrides(args),
                       n_itr=args.n_itr, device=args.device, threads=args.threads, workdir=args.workdir, seed=args.seed,
                       n_substreams=args.substreams, fps=frame_rate_from_name(args.input),
                       motion_init=args.motion_init, direct_b=args.direct_b,
                       derive_b_motion=args.derive_b_motion, log_fn=log_line,
                       frame_callback=frame_done, progress_fn=progress if (bars or log_every) else None)
    atomic_write_bytes(args.output, res.bitstream)
    h, w = frames[0].height, frames[0].width
    bpp = 8 * len(res.bitstream) / (n * h * w)
    psnr = sum(s["psnr_db"] for s in res.frames) / n
    print(f"{args.output}: {n} frames, {len(res.bitstream)} bytes, {bpp:.4f} bpp, mean PSNR {psnr:.2f} dB, "
          f"encode {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
