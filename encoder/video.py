"""Video coding: a sequence of frames into one sequence file (format version 5).

Frames are coded one after the other in decoding order
(``decoder_runtime.coding_structure``). Each one overfits its own Cool-chic
(``train.encode_frame``); a P or B frame's Cool-chic also outputs motion, a
mask and a blend applied to its references (``inter.py``). The references are
the frames *as the runtime decodes them*, so encoder and decoder never drift
apart: every frame section is decoded by ``decoder_runtime`` right after it is
written, checked against the encoder's own reconstruction (1 code value at
most), and that decoded frame becomes the reference of the later frames.

Per-frame choices: a B frame at hierarchy depth ``d`` uses lambda
``1.5^d * lmbda``, as the reference Cool-chic's random access does
(:func:`frame_lambda`), and ``B_ITERATION_FACTOR`` times the preset's main
iterations at every depth (:func:`frame_preset`; an intra frame, which every
later frame depends on, ``I_ITERATION_FACTOR`` times); its decoder's latents start
at 1/8 of the resolution, at 1/4 for low lambdas (:func:`inter_decoder_config`,
which also picks the P frames' by their distance). The motion starts from an
optical-flow estimate (:func:`estimate_motion`: OpenCV's DIS when
``opencv-python-headless`` is installed, else none): an inter frame trains
one candidate; a B frame's is first pulled towards that flow
(``FrameEncoder.motion_guidance``) for ``MOTION_PRETRAIN_FRACTION`` of its
main iterations, then on its own. A P frame's is guided only when its
reference is the frame just before it (a near P frame, :func:`near_p`), which
also takes the B frames' small decoder by default; further away its motion
starts from zero and its latents start at full resolution, which measured
better (:func:`motion_guided`, :func:`inter_decoder_config`).

A B frame whose reference was itself coded with motion towards its other
reference may instead be sent as a *direct* B frame: its blend weight alone,
its motion derived from that reference's (``decoder_runtime/direct.py``),
an 11-byte section. Its Cool-chic is trained all the same, and the encoder
keeps whichever costs less by the training loss at the *sequence's* lambda
(:func:`best_direct_frame`, :func:`frame_cost`): the sequence's cost is
``sum(MSE) + lambda * sum(rate)`` over its frames, which a frame no other
frame references changes by its own cost at that lambda alone (the frame's
own ``1.5^d lambda``, which weighs its bytes more, went direct more often
and lost at high rates: docs/video.md, "Direct B frames").

Where such a derivation exists, the B frame's Cool-chic is also trained as a
*correction* to the derived motion (a B frame with derived motion, its motion
``16 m + o``), starting from that motion instead of the optical flow: a frame
no other frame references trains only that one, a frame that others
reference trains both (either won on some frames), and the cheapest of the
coded frames and the direct frame is kept (``derive_b_motion``).

With ``workdir``, each finished frame's section is kept
(``frame_NNN.section``, ``frame_NNN_derived.section`` for one with derived
motion, each with a fingerprint of everything that produced it): an
interrupted encode resumes at the first unfinished frame, which itself
resumes from its own checkpoint (``frame_NNN.<fingerprint>/``, so that a
frame whose references changed since starts over).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from coolchic import __version__
from coolchic.decoder_runtime.atomic_file import atomic_write_bytes
from coolchic.decoder_runtime.coding_structure import FrameSpec, coding_structure
from coolchic.decoder_runtime.direct import (
    DIRECT_BETA_STEPS,
    SOURCE_FUTURE,
    SOURCE_NAMES,
    SOURCE_PAST,
    DirectParams,
    MotionFields,
    derived_motion,
    direct_motion,
    source_field,
)
from coolchic.decoder_runtime.errors import BitstreamError, ConfigError, EncodeError, ImageIOError
from coolchic.decoder_runtime.frame import RawImage
from coolchic.decoder_runtime.inter import dense_reference
from coolchic.decoder_runtime.latent_codec import decode_latents
from coolchic.decoder_runtime.sequence import SequenceHeader, read_sequence_frame, section_entry
from coolchic.decoder_runtime.video import DecodedFrame, blend_direct_frame, reconstruct_frame
from coolchic.export.sequence_writer import (
    assemble_sequence,
    encode_sequence_header,
    write_direct_frame,
    write_sequence_frame,
)

from .api import default_substreams, hard_round_reconstruction, mse_code_values, psnr_db, with_main_iterations
from .presets import decoder_config_to_param, load_decoder_config, load_encoder_preset
from .state import export_state
from .train import EncoderPreset, TrainerPhase, WarmupPhase, encode_frame

B_LAMBDA_FACTOR = 1.5  # lambda of a B frame at depth d: 1.5^d * lambda (the reference's random access)
# Main iterations of a B frame, in units of the preset's, at every depth. The reference gives
# deeper B frames fewer (1 - 0.2 d of its budget); with ours they stopped far from converged: on
# the bikes clip (9 frames, quick.cfg, lambda 0.002) the sequence took 6412 bytes at 38.82 dB,
# and 4154 bytes at 41.48 dB with 2.5 times the iterations at every depth (docs/video.md). An
# inter_b iteration costs about half an intra frame's: a B frame then takes about 1.3 times
# the time of the intra frame (1400 iterations in 101-114 s against 650 in 77-86 s).
B_ITERATION_FACTOR = 2.5
# Main iterations of a sequence's intra frame, in units of the preset's: every later frame is
# predicted from it. Bikes clip, frame 0, quick.cfg (400 main iterations), the frame's cost at
# the sequence lambda (frame_cost): with 1000, 1151 bytes at 41.90 dB against 1201 at 41.39 at
# lambda 0.002 (-6.9 % of cost), 969 at 41.24 against 1081 at 40.57 at 0.004 (-11.6 %), for
# 153 s instead of about 85 s on one thread (docs/video.md).
I_ITERATION_FACTOR = 2.5
# Trainings of a P frame far from its reference (not near_p), each from its own seed, the
# cheapest kept (frame_cost at the sequence lambda). Such a frame is unguided, and its
# outcome depends on its seed: bikes clip, P8 from the same I0, lambda 0.004, quick.cfg,
# 1211 bytes at 40.86 dB with one seed and 816 at 40.70 with another (docs/video.md).
FAR_P_SEEDS = 2
SEED_STRIDE = 1000  # between the seeds of one frame's trainings (each frame adds its display index)
MOTION_PRETRAIN_FRACTION = 0.3  # iterations pulled towards the optical flow, in units of the main phase
# Weight of the mean squared motion error (pixels^2) against the image MSE (in [0, 1]^2 units):
# a 1-pixel error costs about what a 30 dB image does.
MOTION_GUIDANCE_WEIGHT = 1e-3
# Farthest reference of a "near" P frame, one whose motion starts from the flow (B frames always
# do) and whose default decoder is the B frames' small one. On the bikes clip (quick.cfg,
# docs/video.md): a P frame 4 frames from its reference cost 1623 bytes at 40.21 dB guided, 918 at
# 40.35 unguided (lambda 0.004); low-delay P frames, 1 frame from theirs, took 9212 bytes at 41.38 dB
# guided, 10 225 at 40.88 unguided (9 frames, lambda 0.002), and 4881 at 41.37 with inter_b instead
# of inter. Unguided B frames lost 0.7-2.4 dB. A P frame 8 frames away with inter_b: the sequence
# took 3860 bytes at 40.20 dB against 4154 at 41.48 with inter (random access, lambda 0.002).
NEAR_P_MAX_DISTANCE = 1
# Sequence lambda at and below which B frames' latents start at 1/4 of the resolution
# (cfg/dec/inter_b_fine.cfg) rather than 1/8 (inter_b): at low lambda inter_b caps a B frame's
# residue. Bikes clip, 9 frames, random access, quick.cfg: at lambda 0.0005 the sequence took
# 8304 bytes at 43.04 dB with inter_b, 9316 at 43.66 with inter_b_fine; at 0.001 5577 at 42.26
# with inter_b, 6624 at 42.30 with inter_b_fine; at 0.004 (5 frames) inter_b_fine lost too
# (4179 bytes at 40.27 dB against 3766 at 40.36; docs/video.md).
B_FINE_MAX_LAMBDA = 0.0005


@dataclass(frozen=True)
class EncodedVideo:
    bitstream: bytes
    decoded: Tuple[RawImage, ...]  # display order, as the runtime decodes the bitstream
    structure: Tuple[FrameSpec, ...]  # decoding order
    # Per frame, decoding order: type, bytes (and, unless resumed or direct, latent_bytes and
    # param_bytes), PSNR, lambda, seconds (this call's), resumed_seconds (the recorded training
    # time of the Cool-chics it resumed from the workdir; None if unrecorded), direct (and for a
    # direct B frame its blend, its motion source, and the bytes and PSNR of the Cool-chic it
    # replaced).
    frames: Tuple[Dict[str, Any], ...]


# ---- inputs ---------------------------------------------------------------------
def read_sequence(path, n_frames: Optional[int] = None, first: int = 0, width: Optional[int] = None,
                  height: Optional[int] = None, frame_data_type: Optional[str] = None,
                  bitdepth: Optional[int] = None) -> List[RawImage]:
    """Frames ``first .. first + n_frames - 1`` of a raw YUV file (format from its name,
    ``name_WxH_FPSp_yuv420_8b.yuv``, or the arguments) or of a PNG sequence given as a
    printf pattern (``frame_%03d.png``, numbered from 0 or 1); all frames when ``n_frames`` is None."""
    from coolchic.decoder_runtime.image_io import frame_name, read_image, read_yuv, yuv_format

    text = os.fspath(path)
    if "%" in text:
        start = first if os.path.exists(frame_name(text, first)) or first else 1
        if not os.path.exists(frame_name(text, start)):
            raise ImageIOError(f"{text}: no frame {frame_name(text, first)} (nor numbered from 1)")
        frames = []
        while n_frames is None or len(frames) < n_frames:
            name = frame_name(text, start + len(frames))
            if not os.path.exists(name):
                if n_frames is None:
                    break
                raise ImageIOError(f"{text}: {n_frames} frames asked for, {name} does not exist")
            frames.append(read_image(name))
        return frames
    fmt = yuv_format(text, width, height, frame_data_type, bitdepth)
    size = os.path.getsize(text)
    total = size // fmt.frame_bytes
    count = total - first if n_frames is None else n_frames
    if first + count > total or count < 1:
        raise ImageIOError(f"{text}: frames {first} to {first + count - 1} asked for, the file has {total}")
    return [read_yuv(text, fmt, first + i) for i in range(count)]


def frame_rate_from_name(path) -> Optional[Tuple[int, int]]:
    """``25p`` / ``60p`` in a reference-style YUV file name -> (25, 1)."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    for tok in stem.lower().split("_"):
        if m := re.fullmatch(r"(\d+)p", tok):
            return (int(m.group(1)), 1) if int(m.group(1)) > 0 else None
    return None


# ---- per-frame choices ----------------------------------------------------------------
def frame_lambda(lmbda: float, spec: FrameSpec) -> float:
    return lmbda * (B_LAMBDA_FACTOR ** spec.depth if spec.frame_type == "B" else 1.0)


def _main_phase(preset: EncoderPreset) -> Tuple[int, TrainerPhase]:
    for i, ph in enumerate(preset.training_phases):
        if not ph.quantize_model:
            return i, ph
    raise ConfigError(f"preset {preset.preset_name!r} has no main training phase")


def frame_preset(preset: EncoderPreset, spec: FrameSpec) -> EncoderPreset:
    """The preset of one frame: an intra frame's main phase is ``I_ITERATION_FACTOR`` times
    the preset's, its warm-up as given. An inter frame's warm-up is a single candidate, the
    motion pre-training (guided by the optical flow); a B frame's main phase is
    ``B_ITERATION_FACTOR`` times the preset's."""
    _, main = _main_phase(preset)
    n_main = main.max_itr
    if spec.frame_type == "I":
        return with_main_iterations(preset, max(1, round(n_main * I_ITERATION_FACTOR)))
    if spec.frame_type == "B":
        n_main = max(1, round(n_main * B_ITERATION_FACTOR))
    preset = with_main_iterations(preset, n_main)
    template = preset.warmup[0].training_phase if preset.warmup else main
    pre = dataclasses.replace(template, max_itr=max(1, round(MOTION_PRETRAIN_FRACTION * n_main)),
                              freq_valid=max(1, round(MOTION_PRETRAIN_FRACTION * n_main)))
    return dataclasses.replace(preset, warmup=(WarmupPhase(1, pre),))


def near_p(spec: FrameSpec) -> bool:
    """A P frame at most ``NEAR_P_MAX_DISTANCE`` frames after its reference (low delay)."""
    return spec.frame_type == "P" and spec.display_index - spec.refs[0] <= NEAR_P_MAX_DISTANCE


def motion_guided(spec: FrameSpec) -> bool:
    """Whether a frame's motion is first pulled towards the optical flow: every B frame and
    every near P frame (:func:`near_p`)."""
    return spec.frame_type == "B" or near_p(spec)


def b_decoder_config(lmbda: float) -> str:
    """The B frames' default decoder configuration: ``inter_b`` (latents from 1/8 of the
    resolution), ``inter_b_fine`` (from 1/4) at a sequence lambda up to ``B_FINE_MAX_LAMBDA``."""
    return "inter_b_fine" if lmbda <= B_FINE_MAX_LAMBDA else "inter_b"


def derived_decoder_config(lmbda: float, dec_cfg_b: Optional[str] = None) -> str:
    """The decoder configuration of the Cool-chic with derived motion of a B frame that no
    other frame references: ``dec_cfg_b`` when given, else ``inter_b_derived`` (an ARM without
    hidden layer and a linear synthesis: the derived motion carries most of the frame), except
    at a sequence lambda up to ``B_FINE_MAX_LAMBDA``, where :func:`b_decoder_config`'s finer
    latents pay for larger networks. A frame that others reference keeps its own
    configuration for both its Cool-chics."""
    if dec_cfg_b is not None:
        return dec_cfg_b
    return b_decoder_config(lmbda) if lmbda <= B_FINE_MAX_LAMBDA else "inter_b_derived"


def inter_decoder_config(spec: FrameSpec, lmbda: float, dec_cfg_inter: Optional[str] = None,
                         dec_cfg_b: Optional[str] = None) -> str:
    """The decoder configuration (name or path) of a P or B frame at sequence lambda ``lmbda``.
    A B frame: ``dec_cfg_b``, by default :func:`b_decoder_config`. A P frame: ``dec_cfg_inter``,
    by default the B frames' for a near P frame (:func:`near_p`), mostly predicted like a B
    frame, and ``inter``, with full-resolution latents for its residue, further away."""
    b = dec_cfg_b if dec_cfg_b is not None else b_decoder_config(lmbda)
    if spec.frame_type == "B":
        return b
    if dec_cfg_inter is not None:
        return dec_cfg_inter
    return b if near_p(spec) else "inter"


def estimate_motion(frame: RawImage, ref: RawImage) -> Optional[np.ndarray]:
    """``(2, H, W)`` float32 motion (dx, dy) in pixels with ``frame(x) ~ ref(x + v(x))``,
    from OpenCV's DIS optical flow on the first plane (luma); None without OpenCV."""
    try:
        import cv2
    except ImportError:
        return None
    shift = frame.bitdepth - 8

    def luma8(img: RawImage) -> np.ndarray:
        return np.ascontiguousarray((img.planes[0].astype(np.uint32) >> shift).astype(np.uint8))

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(luma8(frame), luma8(ref), None)
    return np.ascontiguousarray(flow.transpose(2, 0, 1).astype(np.float32))


# ---- resume ---------------------------------------------------------------------------
def _fingerprint(target: RawImage, refs: Sequence[RawImage], spec: FrameSpec, meta: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    for img in (target, *refs):
        for p in img.planes:
            h.update(np.ascontiguousarray(p).tobytes())
    h.update(json.dumps({"spec": dataclasses.asdict(spec), **meta}, sort_keys=True, default=str).encode())
    return h.hexdigest()


# ---- encoding -------------------------------------------------------------------------
def encode_video(
    frames: Sequence[RawImage],
    intra_pos: Sequence[int] = (0,),
    p_pos: Sequence[int] = (),
    lmbda: float = 1e-3,
    preset: str = "fast",
    dec_cfg: str = "mop",
    dec_cfg_inter: Optional[str] = None,
    dec_cfg_b: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    n_itr: Optional[int] = None,
    device: str = "cpu",
    threads: Optional[int] = None,
    workdir: Optional[Path] = None,
    seed: int = 0,
    n_substreams: Optional[int] = None,
    fps: Optional[Tuple[int, int]] = None,
    motion_init: bool = True,
    direct_b: bool = True,
    derive_b_motion: bool = True,
    far_p_seeds: int = FAR_P_SEEDS,
    log_fn: Optional[Callable[[str], None]] = None,
    frame_callback: Optional[Callable[[int, int, Dict[str, Any]], None]] = None,
    progress_fn: Optional[Callable[[int], Tuple[Any, Any]]] = None,
) -> EncodedVideo:
    """Encode ``frames`` (display order) with the given coding structure into a sequence file.

    ``intra_pos``, ``p_pos``: display indices of the I and P frames (every other
    frame is a hierarchical B frame). ``dec_cfg`` is the intra frames' decoder
    configuration, ``dec_cfg_inter`` the P frames', ``dec_cfg_b`` the B frames'; by
    default (None) they follow :func:`inter_decoder_config`: ``inter_b`` for the B frames
    (latents at 1/8 of the resolution and coarser, small networks; ``inter_b_fine``, from
    1/4, at lambda up to ``B_FINE_MAX_LAMBDA``), the same for a P frame right after its
    reference, ``inter`` (lop with one 3x3 residual layer) for a P frame further away.
    ``motion_init``: start the motion of the B frames, and of the P frames
    whose reference is the frame before, from an optical-flow estimate
    (:func:`motion_guided`).
    ``direct_b``: a B frame whose reference carries motion towards its other reference
    may be sent as a direct B frame (its blend weight alone, :func:`best_direct_frame`)
    when that costs less than its trained Cool-chic by the training loss at ``lmbda``
    (:func:`frame_cost`); the Cool-chic is trained either way.
    ``derive_b_motion``: where a B frame's motion can be derived, its Cool-chic codes only
    the correction to it, with :func:`derived_decoder_config`'s decoder in a frame that no
    other frame references (a frame that others reference also trains one of its own
    motion, and the cheaper is kept).
    ``far_p_seeds``: trainings of a P frame far from its reference, each from its own seed,
    the cheapest kept (``FAR_P_SEEDS``).
    ``frame_callback(k, n, summary)`` after each frame (k-th in decoding order);
    ``progress_fn(total_iterations)`` -> (bar or None, training callback) for each frame.
    Raises ConfigError for bad options, EncodeError if a frame does not decode
    to what the encoder computed.
    """
    if not frames:
        raise ConfigError("no frames to encode")
    if isinstance(far_p_seeds, bool) or not isinstance(far_p_seeds, int) or far_p_seeds < 1:
        raise ConfigError(f"far_p_seeds must be a positive integer, got {far_p_seeds!r}")
    if not (isinstance(lmbda, (int, float)) and lmbda > 0 and np.isfinite(lmbda)):
        raise ConfigError(f"lmbda must be a positive number, got {lmbda!r}")
    first = frames[0]
    for i, f in enumerate(frames):
        if (f.height, f.width, f.frame_data_type, f.bitdepth) != (first.height, first.width, first.frame_data_type,
                                                                 first.bitdepth):
            raise ConfigError(f"frame {i} is a {f.width}x{f.height} {f.frame_data_type} {f.bitdepth}-bit frame, "
                              f"frame 0 a {first.width}x{first.height} {first.frame_data_type} {first.bitdepth}-bit one")
    n = len(frames)
    structure = coding_structure(n, intra_pos, p_pos)
    base_preset = load_encoder_preset(preset)
    if n_itr is not None:
        base_preset = with_main_iterations(base_preset, n_itr)
    cfg_intra = load_decoder_config(dec_cfg)
    # Every frame's configuration, read (and checked) before the first frame trains.
    cfg_by_name: Dict[str, Dict[str, Any]] = {}

    def config(name: str) -> Dict[str, Any]:
        if name not in cfg_by_name:
            cfg_by_name[name] = load_decoder_config(name)
        return cfg_by_name[name]

    frame_cfg: Dict[int, Dict[str, Any]] = {}
    for spec in structure:
        frame_cfg[spec.display_index] = cfg_intra if spec.frame_type == "I" else config(
            inter_decoder_config(spec, lmbda, dec_cfg_inter, dec_cfg_b))
    cfg_derived = config(derived_decoder_config(lmbda, dec_cfg_b)) if derive_b_motion else None
    n_sub = n_substreams or default_substreams(first.height)
    h, w = first.height, first.width
    seq_header = SequenceHeader(h, w, first.frame_data_type, first.bitdepth, n, fps, 0)
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)

    run = _SequenceRun(seq_header, lmbda, n_sub, seed, device, threads, motion_init,
                       Path(workdir) if workdir is not None else None, log_fn, progress_fn)
    decoded: Dict[int, RawImage] = {}
    motion: Dict[int, Dict[int, np.ndarray]] = {}  # kept while a later frame references the frame
    uses = Counter(r for spec in structure for r in spec.refs)
    sections: List[bytes] = []
    summaries: List[Dict[str, Any]] = []
    for k, spec in enumerate(structure):
        t0 = time.perf_counter()
        target = frames[spec.display_index]
        refs = [decoded[r] for r in spec.refs]
        lam = frame_lambda(lmbda, spec)
        fpreset = frame_preset(base_preset, spec)
        param = decoder_config_to_param(frame_cfg[spec.display_index], overrides, (h, w))
        found = None
        if spec.frame_type == "B" and (direct_b or derive_b_motion):
            found = best_direct_frame(target, spec, refs, motion)
        # A B frame whose motion can be derived trains with it; one that later frames reference
        # also trains on its own (measured: each wins on some frames), and the cheaper is kept.
        job = _FrameJob(spec, target, tuple(refs), lam, fpreset, param)
        candidates = []
        if derive_b_motion and found is not None:
            # The small decoder only where no frame references this one. Bikes clip, 9 frames,
            # random access, quick.cfg, the same I and P frames (docs/video.md): on the four
            # depth-3 frames the sequence gained about 2.5, 0.8 and 0.3 % of rate at lambda
            # 0.004, 0.002 and 0.001; given to the depth 1-2 frames' derived candidates too,
            # -0.3, -2.1 and +7 % (at 0.001 B4's small derived candidate lost to its own motion,
            # 678 bytes at 40.20 dB, where inter_b's had taken 564 at 41.69).
            derived_job = job
            if uses[spec.display_index] == 0:
                derived_job = dataclasses.replace(job, param=decoder_config_to_param(cfg_derived, overrides, (h, w)))
            candidates.append(_coded_frame(run, derived_job, motion, found[0].source))
        if not candidates or uses[spec.display_index] > 0:
            candidates.append(_coded_frame(run, job, motion, None))
        if spec.frame_type == "P" and not near_p(spec):
            candidates += [_coded_frame(run, job, motion, None, k * SEED_STRIDE) for k in range(1, far_p_seeds)]
        best = min(candidates, key=lambda c: c["cost"])
        section, frame, sizes, resumed = best["section"], best["frame"], best["sizes"], best["resumed"]
        image = frame.image
        direct = None
        if direct_b and found is not None:
            d_section = write_direct_frame(spec, found[0], n)
            if frame_cost(target, found[1].image, len(d_section), lmbda) < best["cost"]:
                direct = {"coded_bytes": len(section), "coded_psnr_db": psnr_db(target, image),
                          "blend": found[0].beta_k / DIRECT_BETA_STEPS, "source": SOURCE_NAMES[found[0].source]}
                section, frame, image, sizes = d_section, found[1], found[1].image, {}
        derived = direct is None and best["source"] is not None
        decoded[spec.display_index] = image
        for r in spec.refs:
            uses[r] -= 1
            if uses[r] <= 0:
                motion.pop(r, None)
        if uses[spec.display_index] > 0 and frame.motion:
            motion[spec.display_index] = frame.motion
        sections.append(section)
        s = {"display_index": spec.display_index, "type": spec.frame_type, "refs": list(spec.refs),
             "depth": spec.depth, "lmbda": lam, "bytes": len(section), "psnr_db": psnr_db(target, image),
             "seconds": time.perf_counter() - t0, "resumed_seconds": _resumed_seconds(candidates),
             "resumed": resumed, "direct": direct is not None,
             "derived_motion": derived, **sizes, **(direct or {})}
        summaries.append(s)
        if frame_callback is not None:
            frame_callback(k, n, s)
    data = assemble_sequence(encode_sequence_header(h, w, first.frame_data_type, first.bitdepth, n, fps), sections)
    return EncodedVideo(data, tuple(decoded[i] for i in range(n)), structure, tuple(summaries))


@dataclass(frozen=True)
class _SequenceRun:
    """What every frame of one ``encode_video`` call shares."""

    header: SequenceHeader
    lmbda: float  # the sequence's: the one that compares a frame's candidates (frame_cost)
    n_sub: int
    seed: int
    device: str
    threads: Optional[int]
    motion_init: bool
    workdir: Optional[Path]
    log_fn: Optional[Callable[[str], None]]
    progress_fn: Optional[Callable[[int], Tuple[Any, Any]]]


@dataclass(frozen=True)
class _FrameJob:
    """One frame to code: its spec, pixels, decoded references and training choices."""

    spec: FrameSpec
    target: RawImage
    refs: Tuple[RawImage, ...]
    lmbda: float  # the frame's (frame_lambda)
    preset: EncoderPreset
    param: Any  # CoolChicEncoderParameter


def _coded_frame(run: _SequenceRun, job: _FrameJob, motion: MotionFields, source: Optional[int],
                 seed_offset: int = 0) -> Dict[str, Any]:
    """The frame's own Cool-chic, its motion derived from reference ``source``'s unless None,
    trained from the sequence's seed plus ``seed_offset``: resumed from the workdir when its
    fingerprint matches, else trained; then decoded by the runtime and checked against the
    encoder's reconstruction. Returns the section, the decoded frame, its sizes, whether it
    was resumed, ``source`` and its cost (frame_cost)."""
    spec = job.spec
    offset = None if source is None else derived_motion(motion, spec.display_index, spec.refs, source)
    guided = run.motion_init and motion_guided(spec) and source is None
    seed = run.seed + seed_offset
    meta = {"lmbda": job.lmbda, "preset": repr(job.preset), "param": job.param.to_dict(), "seed": seed,
            "n_sub": run.n_sub, "n_frames": run.header.n_frames, "guided": guided, "version": __version__}
    if source is not None:
        meta.update(motion_source=source, offset=hashlib.sha256(offset.tobytes()).hexdigest())
    fp = _fingerprint(job.target, job.refs, spec, meta)
    name = f"frame_{spec.display_index:03d}" + ("" if source is None else "_derived") + (
        f"_seed{seed_offset}" if seed_offset else "")
    section_path = os.path.join(run.workdir, name + ".section") if run.workdir else None
    section, own, sizes, resumed, seconds = None, None, {}, False, None
    if section_path and os.path.exists(section_path) and os.path.exists(section_path + ".json"):
        with open(section_path + ".json") as f:
            record = json.load(f)
        if record.get("fingerprint") == fp:
            with open(section_path, "rb") as g:
                section = g.read()
            resumed, seconds = True, record.get("seconds")
    if section is None:
        t0 = time.perf_counter()
        # The checkpoint directory is the fingerprint's: one left by other inputs (a reference
        # that changed since) is not resumed.
        ckpt = os.path.join(run.workdir, f"{name}.{fp[:16]}") if run.workdir else None
        section, own, sizes = _encode_one(job.target, job.refs, spec, job.param, job.preset, job.lmbda, run.device,
                                          run.threads, seed, run.n_sub, run.header.n_frames, ckpt, guided,
                                          run.log_fn, run.progress_fn, offset, source)
        seconds = time.perf_counter() - t0
    frame = _decode_section(section, run.header, spec, job.refs, offset)
    if own is not None:
        diff = max(int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))
                   for a, b in zip(own.planes, frame.image.planes))
        if diff > 1:
            raise EncodeError(f"frame {spec.display_index}: the runtime decodes it {diff} code values away "
                              f"from the encoder's reconstruction")
    if section_path and not resumed:
        atomic_write_bytes(section_path, section)
        atomic_write_bytes(section_path + ".json", json.dumps({"fingerprint": fp, "seconds": seconds}).encode())
    return {"section": section, "frame": frame, "sizes": sizes, "resumed": resumed, "source": source,
            "train_seconds": seconds, "cost": frame_cost(job.target, frame.image, len(section), run.lmbda)}


def _resumed_seconds(candidates: Sequence[Dict[str, Any]]) -> Optional[float]:
    """The training time, as their workdir recorded it, of a frame's Cool-chics that this call
    resumed rather than trained; None where a workdir of an older version did not record it."""
    times = [c["train_seconds"] for c in candidates if c["resumed"]]
    return None if any(t is None for t in times) else float(sum(times))


def _encode_one(target, refs, spec, param, preset, lam, device, threads, seed, n_sub, n_frames, workdir,
                guided, log_fn, progress_fn, motion_offset: Optional[np.ndarray] = None,
                motion_source: Optional[int] = None) -> Tuple[bytes, RawImage, Dict[str, int]]:
    dense_refs = [torch.from_numpy(dense_reference(r.planes, r.bitdepth))[None] for r in refs]
    guidance = None
    if guided:
        flows = [estimate_motion(target, r) for r in refs]
        if all(f is not None for f in flows):
            guidance = (torch.from_numpy(np.concatenate(flows))[None], MOTION_GUIDANCE_WEIGHT)
        elif log_fn is not None:
            log_fn("no optical flow (pip install opencv-python-headless): the motion starts from zero")
    bar, callback = progress_fn(preset.total_iterations) if progress_fn else (None, None)
    try:
        result = encode_frame(target, param, preset, lam, workdir=workdir, resume=workdir is not None, device=device,
                              seed=seed + spec.display_index, callback=callback, num_threads=threads,
                              n_substreams=n_sub, frame_type=spec.frame_type, references=dense_refs,
                              motion_guidance=guidance, log_fn=log_fn,
                              motion_offset=None if motion_offset is None else torch.from_numpy(motion_offset)[None])
    finally:
        if bar is not None:
            bar.close()
    fe = result.frame_encoder
    state = export_state(fe)
    written = write_sequence_frame(spec, state.arch, state.q_params, state.shifts, state.expgol, state.latents,
                                   n_sub, n_frames, motion_source=motion_source)
    sizes = {"latent_bytes": written.latent_bytes, "param_bytes": written.param_bytes}
    return written.data, hard_round_reconstruction(fe), sizes


def _decode_section(section: bytes, header: SequenceHeader, spec: FrameSpec, refs: Sequence[RawImage],
                    motion_offset: Optional[np.ndarray] = None) -> DecodedFrame:
    """The runtime's decoding of one frame section (``varint length`` + body), with its motion
    (``motion_offset``: its derived motion, for a B frame with derived motion)."""
    entry = dataclasses.replace(section_entry(section, header.n_frames), spec=spec)  # the depth is the encoder's, not in the file
    if (entry.motion_source is None) != (motion_offset is None):
        raise EncodeError(f"frame {spec.display_index}: its section and its derived motion disagree")
    bs = read_sequence_frame(section, header, entry)
    grids = decode_latents(bs, threads=1)
    dense = [dense_reference(x.planes, x.bitdepth) for x in refs]
    return reconstruct_frame(bs, grids, dense, ref_indices=spec.refs, motion_offset=motion_offset)


def frame_cost(target: RawImage, image: RawImage, n_bytes: int, lmbda: float) -> float:
    """The training loss's rate-distortion cost of a coded frame: MSE over every sample
    (values in [0, 1]) + lambda * bits per pixel."""
    return mse_code_values(target, image) / target.max_value ** 2 + lmbda * 8 * n_bytes / (target.height * target.width)


def best_direct_frame(target: RawImage, spec: FrameSpec, refs: Sequence[RawImage],
                      motion: MotionFields) -> Optional[Tuple[DirectParams, DecodedFrame]]:
    """The direct B frame (``decoder_runtime/direct.py``) closest to ``target`` in MSE over
    each motion source its references offer and each blend weight, as the runtime decodes
    it; None when neither reference carries motion towards the other."""
    dense = [dense_reference(x.planes, x.bitdepth) for x in refs]
    best = None
    for source in (SOURCE_FUTURE, SOURCE_PAST):
        try:
            field = source_field(motion, spec.display_index, spec.refs, source)
        except BitstreamError:  # this source has no motion towards the other reference
            continue
        v0, v1 = direct_motion(spec.display_index, spec.refs, source, field)  # once for every blend
        for k in range(DIRECT_BETA_STEPS + 1):
            frame = blend_direct_frame(v0, v1, k, spec.refs, dense, target.frame_data_type, target.bitdepth)
            cost = frame_cost(target, frame.image, 0, 0.0)
            if best is None or cost < best[0]:
                best = (cost, DirectParams(k, source), frame)
    return None if best is None else best[1:]
