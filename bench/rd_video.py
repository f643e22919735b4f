"""Video rate-distortion benchmark: coolchic random access against x265, x264
and coolchic all-intra, on YUV 4:2:0.

    python bench/rd_video.py [--video PATH] [--size WxH] [--n-frames 9]
                             [--lmbda 0.004,0.002,0.001,0.0005] [--preset fast]
                             [--dec-cfg mop] [--dec-cfg-inter NAME] [--dec-cfg-b NAME] [--no-direct-b]
                             [--no-derived-motion]
                             [--crfs 22,27,32,37,42] [--gop N]
                             [--skip-coolchic] [--skip-intra] [--anchors-only]
                             [--resume] [--workdir DIR] [--psnr-mode mse411]
                             [--out bench/results/rd_video.tsv]

Reads the first ``--n-frames`` frames of a raw 8-bit YUV 4:2:0 clip (default
../shared/data/video/bikes_640x272_25p_yuv420_8b.yuv; the size is taken from
a ``_WxH_`` in the name unless ``--size`` gives it) and codes them:

- coolchic video (``coolchic.encoder.video.encode_video``), random access:
  intra at frame 0, P at the last frame (``--p-pos``), the frames between
  hierarchical B, each one sent as a direct B frame where that costs less
  (``--no-direct-b``: never); one bitstream per lambda of ``--lmbda``;
- coolchic all-intra: every frame alone with ``encode_image``, same lambdas;
- x265 and x264, preset medium with their default B frames, one intra frame
  (keyint = ``--gop``, default the number of frames), CRF ``--crfs``, through
  PyAV (bench/video_anchors.py; the ``bench`` extra). The anchors' streams are
  counted without their SEI (the encoder's version string).

Rate: bpp = 8 * bytes of the whole stream / (W * H * frames). Distortion:
PSNR-YUV as the reference Cool-chic reports its video results,
-10 log10((4 MSE_Y + MSE_U + MSE_V) / 6) on the sequence's MSEs (``mse411``;
``--psnr-mode psnr611`` for JVET's per-frame (6 PSNR_Y + PSNR_U + PSNR_V) / 8,
``mse611`` for ../shared/data/video/SOURCE.md's, see ``video_anchors.psnr_yuv``).
Every codec is scored on the same frames by the same function.

BD-rate (%, negative = fewer bits at equal PSNR): the ``bjontegaard``
package's pchip fit (bench/rd_kodak.py's ``bd_rate``) of coolchic against
x265, x264 and coolchic all-intra. Coolchic points are appended to
``<out>.coolchic.tsv`` as they come; ``--resume`` reuses those of the same run
options (an interrupted run goes on); ``--workdir DIR`` keeps each video
point's frame sections in ``DIR/lmbda_<lambda>`` (``encode_video``'s resume
directory), so that an interrupted point, or a variant that changes only
later frames, does not train its finished frames again (its encode time then
adds the training time the workdir recorded for them: nan for a workdir
written before that record). Writes ``<out>``
(TSV: codec, param, bytes, bpp, psnr_yuv) and ``<out>.png`` (matplotlib). Last line:
``bd_rate_vs_x265=<value> %``, or ``x265_points=<n>`` when coolchic video is
skipped.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
SHARED = REPO.parent / "shared"
VIDEO = SHARED / "data" / "video" / "bikes_640x272_25p_yuv420_8b.yuv"

from video_anchors import PSNR_MODES, anchor_curve, bd_rate, psnr_yuv, read_yuv420  # noqa: E402

ANCHORS = {"x265": "libx265", "x264": "libx264"}


def frame_size(args) -> tuple:
    text = args.size or args.video.name
    m = re.search(r"(\d+)x(\d+)", text)
    if not m:
        sys.exit(f"no WxH in {text!r}: give --size")
    return int(m.group(1)), int(m.group(2))


def _run_key(args, p_pos, lmbda) -> str:
    from coolchic.decoder_runtime.coding_structure import coding_structure
    from coolchic.encoder.video import FAR_P_SEEDS, I_ITERATION_FACTOR, derived_decoder_config, inter_decoder_config

    # The configurations as resolved at this lambda, so that a default that picks them by
    # distance or lambda keys the same run as naming them.
    specs = coding_structure(args.n_frames, (0,), tuple(p_pos))

    def names(frame_type):
        return ",".join(sorted({inter_decoder_config(s, lmbda, args.dec_cfg_inter, args.dec_cfg_b)
                                for s in specs if s.frame_type == frame_type}))

    derived = ""
    if args.derive_b_motion:
        # Points recorded before inter_b_derived trained derived motion with the B frames' decoder.
        name = derived_decoder_config(lmbda, args.dec_cfg_b)
        derived = "|derived" + ("" if name in names("B").split(",") else f":{name}")
    # Points recorded before direct B frames existed keep their key: they are --no-direct-b's.
    return (f"{args.video.name}|{args.n_frames}|{args.preset}|{args.dec_cfg}|{names('P')}|"
            f"{names('B')}|p{','.join(map(str, p_pos))}{'|direct' if args.direct_b else ''}{derived}"
            # Points recorded before the intra frame trained longer in a sequence, and before far P
            # frames trained from several seeds, have neither field.
            f"{f'|i{I_ITERATION_FACTOR:g}' if I_ITERATION_FACTOR != 1 else ''}"
            f"{f'|pseeds{FAR_P_SEEDS}' if FAR_P_SEEDS != 1 else ''}")


def _same_run(recorded: str, key: str, codec: str) -> bool:
    """Whether a recorded point belongs to this run: all-intra coding depends only on the clip,
    the frame count, the preset and the intra decoder (the key's first four fields)."""
    if codec == "coolchic-intra":
        return recorded.split("|")[:4] == key.split("|")[:4]
    return recorded == key


def _point(codec, param, n_bytes, frames, decoded, seconds, psnr_mode) -> dict:
    h, w = frames[0][0].shape
    return {
        "codec": codec,
        "param": param,
        "bytes": n_bytes,
        "bpp": 8 * n_bytes / (w * h * len(frames)),
        "psnr": psnr_yuv(frames, decoded, mode=psnr_mode),
        "psnr_all": {m: psnr_yuv(frames, decoded, mode=m) for m in PSNR_MODES},
        "seconds": seconds,
    }


def encode_coolchic(codec, frames, lmbda, args, p_pos, threads):
    """One coolchic point: ``coolchic`` (video, random access) or ``coolchic-intra`` (frame by frame)."""
    from coolchic.decoder_runtime.frame import RawImage

    raws = [RawImage(tuple(f), "yuv420", 8) for f in frames]
    t0, recorded = time.perf_counter(), 0.0
    if codec == "coolchic":
        from coolchic.encoder.video import encode_video

        res = encode_video(raws, intra_pos=(0,), p_pos=tuple(p_pos), lmbda=lmbda, preset=args.preset,
                           dec_cfg=args.dec_cfg, dec_cfg_inter=args.dec_cfg_inter, dec_cfg_b=args.dec_cfg_b,
                           direct_b=args.direct_b, derive_b_motion=args.derive_b_motion, threads=threads,
                           workdir=args.workdir / f"lmbda_{lmbda:g}" if args.workdir else None,
                           frame_callback=lambda k, n, s: print(
                               f"  frame {s['display_index']} ({s['type']}{', direct' if s['direct'] else ''}"
                               f"{', derived motion' if s['derived_motion'] else ''}): "
                               f"{s['bytes']} bytes, {s['psnr_db']:.3f} dB"
                               + (f" (its Cool-chic: {s['coded_bytes']} bytes, {s['coded_psnr_db']:.3f} dB)"
                                  if s['direct'] else ""), flush=True))
        n_bytes = len(res.bitstream)
        decoded = [tuple(r.planes) for r in res.decoded]
        # A point resumed from --workdir: add its frames' training time as the workdir recorded it.
        resumed = [f["resumed_seconds"] for f in res.frames]
        recorded = float("nan") if None in resumed else sum(resumed)
    else:
        from coolchic.encoder.api import encode_image

        n_bytes, decoded = 0, []
        for raw in raws:
            res = encode_image(raw, lmbda=lmbda, preset=args.preset, dec_cfg=args.dec_cfg, threads=threads)
            n_bytes += len(res.bitstream)
            decoded.append(tuple(res.decoded.planes))
    return _point(codec, lmbda, n_bytes, frames, decoded, time.perf_counter() - t0 + recorded, args.psnr_mode)


def run_coolchic(codecs, frames, lmbdas, args, p_pos):
    """Coolchic points of ``codecs`` at each lambda; appended to <out>.coolchic.tsv, reused with --resume."""
    from coolchic.encoder.cpu import configure_cpu

    threads = configure_cpu(args.threads)  # an application's choice, as coolchic-encode makes it
    part = args.out.with_suffix(".coolchic.tsv")
    done = {}
    if part.exists() and args.resume:
        for r in csv.DictReader(part.open(), delimiter="\t"):
            if _same_run(r["run"], _run_key(args, p_pos, float(r["lmbda"])), r["codec"]):
                done[(r["codec"], float(r["lmbda"]))] = {
                    "codec": r["codec"], "param": float(r["lmbda"]), "bytes": int(r["bytes"]),
                    "bpp": float(r["bpp"]), "psnr": float(r[args.psnr_mode]),
                    "psnr_all": {m: float(r[m]) for m in PSNR_MODES}, "seconds": float(r["encode_s"]),
                }
    if not part.exists():
        part.write_text("\t".join(["run", "codec", "lmbda", "bytes", "bpp", *PSNR_MODES, "encode_s"]) + "\n")
    todo = [(c, lm) for c in codecs for lm in lmbdas if (c, lm) not in done]
    print(f"coolchic: {len(done)} points reused, {len(todo)} to encode ({threads} threads)", flush=True)
    for c, lm in todo:
        pt = encode_coolchic(c, frames, lm, args, p_pos, threads)
        done[(c, lm)] = pt
        with part.open("a") as f:
            f.write("\t".join(str(v) for v in [_run_key(args, p_pos, lm), c, lm, pt["bytes"], pt["bpp"],
                                                *(pt["psnr_all"][m] for m in PSNR_MODES), pt["seconds"]]) + "\n")
        print_point(pt)
    return {c: [done[(c, lm)] for lm in lmbdas] for c in codecs}


def print_point(pt) -> None:
    print(f"{pt['codec']}\t{pt['param']}\t{pt['bytes']}\t{pt['bpp']:.5f}\t{pt['psnr']:.3f}\t{pt['seconds']:.1f}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, default=VIDEO, help="raw 8-bit YUV 4:2:0 clip")
    ap.add_argument("--size", default=None, help="WxH (default: from the file name)")
    ap.add_argument("--n-frames", type=int, default=9)
    ap.add_argument("--p-pos", default=None, help="coolchic P frames, comma-separated (default: the last frame)")
    ap.add_argument("--lmbda", default="0.004,0.002,0.001,0.0005", help="coolchic lambdas")
    ap.add_argument("--preset", default="fast", help="coolchic encoder preset")
    ap.add_argument("--dec-cfg", default="mop", help="coolchic decoder configuration (intra frames)")
    ap.add_argument("--dec-cfg-inter", default=None,
                    help="coolchic decoder configuration of P frames (default: by distance to the reference, "
                    "as coolchic-encode)")
    ap.add_argument("--dec-cfg-b", default=None,
                    help="coolchic decoder configuration of B frames (default: by lambda, as coolchic-encode)")
    ap.add_argument("--no-direct-b", dest="direct_b", action="store_false",
                    help="coolchic: never send a B frame as a direct B frame")
    ap.add_argument("--no-derived-motion", dest="derive_b_motion", action="store_false",
                    help="coolchic: never derive a B frame's motion from a reference's")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="coolchic video: keep each point's frame sections in DIR/lmbda_<lambda> and resume from them")
    ap.add_argument("--threads", type=int, default=None, help="coolchic encoder threads (default: all cores)")
    ap.add_argument("--crfs", default="22,27,32,37,42", help="x265 / x264 CRFs")
    ap.add_argument("--gop", type=int, default=None, help="x265 / x264 intra period (default: --n-frames)")
    ap.add_argument("--skip-coolchic", action="store_true", help="no coolchic video encodes")
    ap.add_argument("--skip-intra", action="store_true", help="no coolchic all-intra encodes")
    ap.add_argument("--anchors-only", action="store_true", help="x265 and x264 only")
    ap.add_argument("--resume", action="store_true", help="reuse the coolchic points of <out>.coolchic.tsv")
    ap.add_argument("--psnr-mode", default="mse411", choices=PSNR_MODES, help="PSNR-YUV convention")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "rd_video.tsv")
    args = ap.parse_args()
    if args.anchors_only:
        args.skip_coolchic = args.skip_intra = True
    if not args.skip_coolchic:
        try:
            from coolchic.encoder.video import encode_video  # noqa: F401
        except ImportError as e:
            sys.exit(f"coolchic video encoder not available ({e}): run with --skip-coolchic")
    width, height = frame_size(args)
    lmbdas = [float(v) for v in args.lmbda.split(",")]
    crfs = [float(v) if "." in v else int(v) for v in args.crfs.split(",")]
    n = args.n_frames
    p_pos = [int(v) for v in args.p_pos.split(",")] if args.p_pos else ([n - 1] if n > 1 else [])
    gop = args.gop or n
    frames = read_yuv420(args.video, width, height, n)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{args.video.name}: {n} frames {width}x{height}; PSNR-YUV {args.psnr_mode}")

    print("codec\tparam\tbytes\tbpp\tpsnr_yuv\tencode_s")
    points = {}
    t_anchor = time.perf_counter()
    for name, codec in ANCHORS.items():
        t0 = time.perf_counter()
        curve = anchor_curve(frames, codec, crfs, gop=gop, psnr_mode=args.psnr_mode)
        dt = (time.perf_counter() - t0) / len(crfs)
        points[name] = [dict(codec=name, param=p["crf"], bytes=p["bytes"], bpp=p["bpp"], psnr=p["psnr"], seconds=dt)
                        for p in curve]
        for pt in points[name]:
            print_point(pt)
    t_anchor = time.perf_counter() - t_anchor
    print(f"anchors: {t_anchor:.1f} s for {len(ANCHORS) * len(crfs)} encodes + decodes (gop {gop})")

    ours = [c for c, skip in (("coolchic", args.skip_coolchic), ("coolchic-intra", args.skip_intra)) if not skip]
    if ours:
        points.update(run_coolchic(ours, frames, lmbdas, args, p_pos))

    def curve(name):
        return [(p["bpp"], p["psnr"]) for p in points[name]]

    print("\nBD-rate (%, negative = fewer bits at equal PSNR-YUV; pchip)")
    pairs = [("x264", "x265")]
    for c in ours:
        pairs += [(c, "x265"), (c, "x264")]
    if len(ours) == 2:
        pairs.append(("coolchic", "coolchic-intra"))
    bd = {}
    for a, b in pairs:
        bd[(a, b)] = bd_rate(curve(a), curve(b))
        print(f"{a} vs {b}\t{bd[(a, b)]:+.1f}")

    with args.out.open("w") as f:
        f.write("codec\tparam\tbytes\tbpp\tpsnr_yuv\n")
        for pts in points.values():
            for p in pts:
                f.write(f"{p['codec']}\t{p['param']}\t{p['bytes']}\t{p['bpp']}\t{p['psnr']}\n")
    print(f"wrote {args.out}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 5))
        for name in points:
            c = sorted(curve(name))
            v = bd.get((name, "x265"), float("nan"))
            label = name if name == "x265" else f"{name} (BD-rate vs x265 {v:+.1f} %)"
            ax.plot([b for b, _ in c], [p for _, p in c], "s-" if name.startswith("coolchic") else "o-", ms=3,
                    label=label)
        ax.set_xlabel("bpp")
        ax.set_ylabel(f"PSNR-YUV (dB, {args.psnr_mode})")
        title = f"{args.video.name}, {n} frames"
        if ours:
            title += f"; coolchic {args.preset}, {args.dec_cfg}"
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.4)
        ax.legend(fontsize=8)
        png = args.out.with_suffix(".png")
        fig.savefig(png, dpi=120, bbox_inches="tight")
        print(f"wrote {png}")
    except ImportError:
        print("matplotlib not installed (pip install '.[bench]'): no plot")
    if "coolchic" in points:
        print(f"bd_rate_vs_x265={bd[('coolchic', 'x265')]:.1f} %")
    else:
        print(f"x265_points={len(points['x265'])}")


if __name__ == "__main__":
    main()
