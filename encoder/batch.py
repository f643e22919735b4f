"""coolchic-encode-batch: many images, every core, every machine (Ray).

Each (image, lambda) pair is one Ray task that claims ``--threads`` CPUs, so
Ray runs as many encodes at once as the cluster has cores. Without
``--address`` a local Ray starts on this machine; ``--address auto`` or
``ray://host:port`` joins a running cluster, whose nodes need coolchic
installed (with the encoder extra) and ``OUTDIR`` on a shared filesystem.

Resumable: an output that exists and decodes is skipped, and every task
keeps its training checkpoints in ``OUTDIR/.work/`` until its output is
written, so an interrupted run resumes each image where it stopped. A failing
image does not stop the others: failures are listed at the end and the exit
status is 1. ``OUTDIR/results.tsv`` gets one row per output (rewritten
atomically after each one): image, lambda, bytes, bpp, PSNR, encode and
decode seconds, host.

The driver imports neither torch nor the training code: only the tasks do.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from coolchic import __version__
from coolchic.decoder_runtime.atomic_file import atomic_write_bytes
from coolchic.decoder_runtime.cli import positive_int
from coolchic.decoder_runtime.errors import ConfigError, CoolChicError, MissingDependencyError
from coolchic.decoder_runtime.image_io import IMAGE_EXTENSIONS, extension_of

from .cli import add_decoder_options, add_effort_options, decoder_overrides

PROG = "coolchic-encode-batch"
TSV_NAME = "results.tsv"
TSV_COLUMNS = ("image", "lambda", "bytes", "bpp", "psnr_db", "encode_s", "decode_s", "host")
WORK_NAME = ".work"

EPILOG = """\
inputs: image files (.png .ppm .pgm .pnm .yuv), folders (their images, not
recursive), globs such as 'kodak/*.png' or 'data/**/*.png' (quoted: expanded
here), or list files (any other existing file: one image path per line,
relative to the list file, # comments).

outputs: OUTDIR/<name>.cool, or OUTDIR/<name>_lmbda<L>.cool with several
lambdas; OUTDIR/results.tsv. Exit status: 0 all done, 1 some images failed,
2 bad options, 130 interrupted (run it again to resume).

examples:
  coolchic-encode-batch kodak/ -o out/ --lmbda 0.004,0.001 --preset fast
  coolchic-encode-batch 'frames/*.png' -o out/ --threads 2 --address auto
  coolchic-encode-batch list.txt -o out/ --address ray://head:10001
"""


@dataclass(frozen=True)
class Job:
    """One encode: ``image`` at ``lmbda`` into ``output``, checkpoints in ``workdir``."""

    image: str
    lmbda: float
    output: str
    workdir: str


@dataclass(frozen=True)
class EncodeOptions:
    """What every task of a run shares (the options of ``coolchic-encode``)."""

    preset: str = "fast"
    dec_cfg: str = "mop"
    overrides: Tuple[Tuple[str, object], ...] = ()
    n_itr: Optional[int] = None
    n_substreams: Optional[int] = None
    threads: int = 1
    seed: int = 0
    max_memory: Optional[int] = None  # per task


@dataclass(frozen=True)
class Outcome:
    """What a task reports: ``status`` is "encoded", "skipped" or "failed"."""

    job: Job
    status: str
    n_bytes: int = 0
    bpp: float = math.nan
    psnr_db: float = math.nan
    encode_s: float = math.nan
    decode_s: float = math.nan
    host: str = ""
    error: str = ""


# ---- inputs and jobs ----------------------------------------------------------
def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _images_in(folder: Path) -> List[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and extension_of(p) in IMAGE_EXTENSIONS)


def _read_list_file(path: Path) -> List[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line if os.path.isabs(line) else str(path.parent / line))
    return out


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """The image paths that ``inputs`` name, in order, each once.

    A named image that does not exist stays in the list (its task fails and
    says so); a folder or glob that holds no image is a :class:`ConfigError`.
    """
    images: List[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _images_in(p)
            what = "folder"
        elif extension_of(item) in IMAGE_EXTENSIONS and not _is_glob(item):
            found, what = [item], ""
        elif _is_glob(item):
            found = sorted(f for f in glob.glob(item, recursive=True) if extension_of(f) in IMAGE_EXTENSIONS)
            what = "glob"
        elif p.is_file():
            found, what = _read_list_file(p), "list file"
        else:
            raise ConfigError(f"{item}: no such image, folder or list file")
        if what and not found:
            raise ConfigError(f"{item}: this {what} names no image ({' '.join(IMAGE_EXTENSIONS)})")
        images.extend(found)
    seen = set()
    return [x for x in images if not (x in seen or seen.add(x))]


def plan_jobs(images: Sequence[str], lambdas: Sequence[float], outdir: Path) -> List[Job]:
    """One job per (image, lambda); refuses two images that would write the same output."""
    jobs, owner = [], {}
    for image in images:
        stem = Path(image).stem
        for lmbda in lambdas:
            name = stem if len(lambdas) == 1 else f"{stem}_lmbda{lmbda:g}"
            if name in owner:
                raise ConfigError(f"{owner[name]} and {image} would both be written to {outdir / (name + '.cool')}")
            owner[name] = image
            jobs.append(Job(image, lmbda, str(outdir / f"{name}.cool"), str(outdir / WORK_NAME / name)))
    return jobs


# ---- one task ------------------------------------------------------------------
def _existing_output(job: Job, image) -> Optional[Outcome]:
    """The outcome of an output already there that decodes to the image's size; else None."""
    from coolchic.decoder_runtime import decode

    from .api import psnr_db

    if not os.path.isfile(job.output):
        return None
    t0 = time.perf_counter()
    try:
        dec = decode(job.output).image
    except CoolChicError:
        return None  # damaged or foreign: encode again
    decode_s = time.perf_counter() - t0
    if (dec.height, dec.width, dec.frame_data_type) != (image.height, image.width, image.frame_data_type):
        return None
    n_bytes = os.path.getsize(job.output)
    return Outcome(job, "skipped", n_bytes, 8 * n_bytes / (image.height * image.width), psnr_db(image, dec),
                   decode_s=decode_s, host=socket.gethostname())


def run_job(job: Job, options: EncodeOptions) -> Outcome:
    """Encode one image (the body of a Ray task); every error becomes a "failed" Outcome."""
    host = socket.gethostname()
    try:
        from coolchic.decoder_runtime.image_io import read_image
        from coolchic.encoding import require_encoder

        api = require_encoder(PROG)
        image = read_image(job.image)
        done = _existing_output(job, image)
        if done is not None:
            return done
        from . import cpu

        cpu.configure_cpu(options.threads)  # a worker process is ours: tune it as the CLI does
        t0 = time.perf_counter()
        result = api.encode_image(
            image, lmbda=job.lmbda, preset=options.preset, dec_cfg=options.dec_cfg,
            overrides=dict(options.overrides), n_itr=options.n_itr, threads=options.threads,
            workdir=Path(job.workdir), seed=options.seed, n_substreams=options.n_substreams,
            max_memory=options.max_memory,
        )
        api.write_outputs(result, Path(job.output))
        encode_s = time.perf_counter() - t0
        shutil.rmtree(job.workdir, ignore_errors=True)  # the output exists: its checkpoints are done with
        s = result.summary
        return Outcome(job, "encoded", s["bytes"], s["bpp"], s["psnr_db"], encode_s, s["decode_s"], host)
    except CoolChicError as e:
        return Outcome(job, "failed", host=host, error=str(e))
    except MemoryError:
        return Outcome(job, "failed", host=host, error="out of memory (try a lighter --dec-cfg or fewer tasks per node)")
    except Exception as e:  # a bug must not stop the other images; the summary shows it
        return Outcome(job, "failed", host=host, error=f"{type(e).__name__}: {e}")


# ---- results table ---------------------------------------------------------------
def _fmt(v: float, digits: int) -> str:
    return "" if math.isnan(v) else f"{v:.{digits}f}"


def tsv_row(o: Outcome) -> List[str]:
    return [o.job.image, f"{o.job.lmbda:g}", str(o.n_bytes), _fmt(o.bpp, 6), _fmt(o.psnr_db, 4),
            _fmt(o.encode_s, 2), _fmt(o.decode_s, 3), o.host]


class ResultsTable:
    """``results.tsv``: one row per (image, lambda), kept across runs, rewritten atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: Dict[Tuple[str, str], List[str]] = {}
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            for line in lines[1:]:
                cells = line.split("\t")
                if len(cells) == len(TSV_COLUMNS):
                    self.rows[(cells[0], cells[1])] = cells

    def add(self, o: Outcome) -> None:
        row = tsv_row(o)
        key = (row[0], row[1])
        if o.status == "skipped" and key in self.rows:
            return  # keep the row of the run that encoded it (its encode time)
        self.rows[key] = row
        text = "\n".join(["\t".join(TSV_COLUMNS)] + ["\t".join(r) for r in self.rows.values()]) + "\n"
        atomic_write_bytes(self.path, text.encode("utf-8"))


# ---- command line -----------------------------------------------------------------
def _lambdas(text: str) -> List[float]:
    out = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part!r}") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"lambdas must be positive finite numbers, got {part!r}")
        out.append(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Encode many images with coolchic, one Ray task per image and lambda, "
        "on this machine or on a Ray cluster; resumable.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, globs or list files")
    p.add_argument("-o", "--output-dir", required=True, type=Path, metavar="OUTDIR",
                   help="where the .cool files and results.tsv go (created if needed)")
    rd = p.add_argument_group("rate-distortion and effort")
    rd.add_argument("--lmbda", type=_lambdas, default=[1e-3], metavar="L[,L...]",
                    help="rate constraint(s); several, comma separated, give one output per lambda. Default 1e-3")
    add_effort_options(rd)
    add_decoder_options(p)
    run = p.add_argument_group("execution")
    run.add_argument("--threads", type=positive_int, default=1, metavar="N",
                     help="CPU threads of each encode, and the CPUs its Ray task claims (default 1: "
                     "one image per core is the fastest way through a data set)")
    run.add_argument("--address", metavar="ADDR",
                     help="join a Ray cluster: 'auto' (this node belongs to one) or ray://host:port; "
                     "default: start a local Ray on this machine")
    run.add_argument("--num-cpus", type=positive_int, metavar="N",
                     help="local Ray only: CPUs it may use (default: all)")
    run.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar nor per-image lines")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _fail(msg: str, code: int = 2) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


def _import_ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            f"{PROG} needs the batch extra (Ray), which is not installed: pip install 'coolchic[batch]'"
        ) from None
    return ray


def _start_ray(ray, args) -> bool:
    """Start or join Ray unless this process already did; True when we must shut it down."""
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, configure_logging=True, logging_level="WARNING", log_to_driver=False)
    if args.address:
        ray.init(address=args.address, **kw)
    else:
        ray.init(num_cpus=args.num_cpus, **kw)
    return True


def _line(o: Outcome) -> str:
    name = f"{o.job.image} (lambda {o.job.lmbda:g})"
    if o.status == "failed":
        return f"{name}: FAILED: {o.error}"
    what = "already done" if o.status == "skipped" else f"encode {o.encode_s:.1f} s"
    return f"{name}: {o.n_bytes} bytes, {o.bpp:.4f} bpp, PSNR {o.psnr_db:.2f} dB, {what} on {o.host}"


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        images = expand_inputs(args.inputs)
        outdir: Path = args.output_dir
        if outdir.exists() and not outdir.is_dir():
            raise ConfigError(f"{outdir} exists and is not a directory")
        jobs = plan_jobs(images, args.lmbda, outdir)
        ray = _import_ray()
        outdir.mkdir(parents=True, exist_ok=True)
        table = ResultsTable(outdir / TSV_NAME)
    except (CoolChicError, OSError) as e:
        return _fail(str(e))
    options = EncodeOptions(
        preset=args.preset, dec_cfg=args.dec_cfg, overrides=tuple(sorted(decoder_overrides(args).items())),
        n_itr=args.n_itr, n_substreams=args.substreams, threads=args.threads, seed=args.seed,
        max_memory=args.max_memory,
    )
    from tqdm import tqdm

    owns_ray = False
    outcomes: List[Outcome] = []
    try:
        owns_ray = _start_ray(ray, args)
        # max_retries: a worker that dies (killed, node lost) is retried once; an
        # error inside run_job is already an Outcome, never an exception.
        task = ray.remote(run_job).options(num_cpus=args.threads, max_retries=1)
        pending = {task.remote(job, options): job for job in jobs}
        with tqdm(total=len(jobs), unit="image", disable=True if args.quiet else None, dynamic_ncols=True) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready[0])
                try:
                    o = ray.get(ready[0])
                except Exception as e:  # the worker died (e.g. killed for memory)
                    o = Outcome(job, "failed", error=f"the Ray task died: {type(e).__name__}: {str(e)[:500]}")
                outcomes.append(o)
                if o.status != "failed":
                    table.add(o)
                if not args.quiet:
                    bar.write(_line(o), file=sys.stderr)
                bar.update(1)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if owns_ray:
            ray.shutdown()
    work = outdir / WORK_NAME
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    return _summary(outcomes, outdir / TSV_NAME)


def _summary(outcomes: Sequence[Outcome], tsv: Path) -> int:
    count = {s: sum(o.status == s for o in outcomes) for s in ("encoded", "skipped", "failed")}
    print(f"{count['encoded']} encoded, {count['skipped']} already done, {count['failed']} failed; results in {tsv}")
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"  failed: {o.job.image} (lambda {o.job.lmbda:g}): {o.error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
