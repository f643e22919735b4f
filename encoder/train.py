"""Training of a FrameEncoder: warm-up among random initialisations, then
training phases (SOAP on the networks, Adam on the latents, cosine learning
rate, linear soft-round temperature and noise schedules, patience; see
``optim.py``), network quantization, with a checkpoint after every stage and
every ``checkpoint_every`` iterations inside a training phase (optimizer and
random state included, so a resumed phase continues as if never stopped), so
that an interrupted encoding loses at most that much work.

Entry point: :func:`encode_frame`. The CLI drives a progress bar through the
``callback`` argument (see :class:`ProgressInfo`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from coolchic import __version__
from coolchic.decoder_runtime.errors import ConfigError, EncodeError

from .complexity import archi_table
from .coolchic import CoolChicEncoderParameter
from .cpu import set_torch_threads
from .frame_encoder import FrameData, FrameEncoder, as_frame_data, load_frame_encoder
from .loss import LossFunctionOutput, loss_function, psnr
from .optim import clip_network_grad, cosine_lr, linear_schedule, make_optimizer, set_lr, warmup_noise_level
from .nn_rate import NetworkRateProxy
from .quantizemodel import quantize_model
from .quantizer import QUANTIZER_NOISE_TYPES, QUANTIZER_TYPES, encoder_gain_for_lambda
from .rdoq import rdoq_model
from .tiling import plan_tiles, tiled_backward, whole_frame_training_bytes

MODULES_TO_OPTIMIZE = ("all", "latent", "arm", "ifce", "upsampling", "synthesis")
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1
# Iterations between checkpoints inside a training phase: at most this much
# work is lost to an interruption (about 20 s of a 512x768 image on 8 cores).
CHECKPOINT_EVERY = 200


@dataclass(frozen=True)
class TrainerPhase:
    """One training phase (field names of the reference's TrainerPhase).

    ``patience``: stop when the validation loss has not improved for that many
    iterations (validation every ``freq_valid``); the best parameters seen are
    restored at the end of the phase. Temperature and noise go linearly from
    their first to their second value over ``max_itr``. The networks train with
    SOAP (``betas_model``, eigenbases refreshed every
    ``precondition_frequency_model`` steps), the latents with Adam
    (``betas_latent``); see ``optim.py``.
    """

    lr: float = 1e-2
    betas_model: Tuple[float, float] = (0.95, 0.95)
    betas_latent: Tuple[float, float] = (0.9, 0.999)
    precondition_frequency_model: int = 10
    max_itr: int = 5000
    freq_valid: int = 100
    patience: int = 10000
    quantize_model: bool = False
    rdoq: bool = False  # after quantize_model: rdoq_model (rdoq.py)
    schedule_lr: bool = False
    softround_temperature: Tuple[float, float] = (0.3, 0.3)
    # None: the warm-up level of the lambda being trained (optim.warmup_noise_level).
    noise_parameter: Optional[Tuple[float, float]] = (1.0, 1.0)
    quantizer_noise_type: str = "kumaraswamy"
    quantizer_type: str = "softround"
    optimized_module: Tuple[str, ...] = ("all",)
    # Weight of the networks' (differentiable, estimated) rate in the training
    # loss, in units of lambda; 0 leaves it out as the reference does.
    network_rate_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.max_itr < 0 or self.freq_valid < 1 or self.patience < 1 or self.precondition_frequency_model < 1:
            raise ConfigError("max_itr must be >= 0, freq_valid, patience and precondition_frequency_model >= 1")
        for name in ("betas_model", "betas_latent"):
            b = getattr(self, name)
            if len(b) != 2 or not all(0.0 <= x < 1.0 for x in b):
                raise ConfigError(f"{name} must be two numbers in [0, 1), got {b!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.quantizer_type not in QUANTIZER_TYPES:
            raise ConfigError(f"quantizer_type must be one of {QUANTIZER_TYPES}, got {self.quantizer_type!r}")
        if self.quantizer_noise_type not in QUANTIZER_NOISE_TYPES:
            raise ConfigError(
                f"quantizer_noise_type must be one of {QUANTIZER_NOISE_TYPES}, got {self.quantizer_noise_type!r}"
            )
        for m in self.optimized_module:
            if m not in MODULES_TO_OPTIMIZE:
                raise ConfigError(f"optimized_module {m!r} is not one of {MODULES_TO_OPTIMIZE}")


@dataclass(frozen=True)
class WarmupPhase:
    """Keep the ``candidates`` best systems, then train each with ``training_phase``."""

    candidates: int
    training_phase: TrainerPhase


@dataclass(frozen=True)
class EncoderPreset:
    preset_name: str
    warmup: Tuple[WarmupPhase, ...] = ()
    training_phases: Tuple[TrainerPhase, ...] = ()

    @property
    def total_iterations(self) -> int:
        return sum(w.candidates * w.training_phase.max_itr for w in self.warmup) + sum(
            p.max_itr for p in self.training_phases
        )

    def stage_names(self) -> List[str]:
        return (["warmup"] if self.warmup else []) + [f"phase{i}" for i in range(len(self.training_phases))]


@dataclass(frozen=True)
class ProgressInfo:
    """What a progress bar needs; ``iteration`` counts every training iteration so far."""

    stage: str
    iteration: int
    total_iterations: int
    loss: float
    psnr_db: float
    rate_bpp: float  # estimated latent rate (+ network rate once quantized)
    validation: bool = False  # True: measured with hard rounding, as decoded


ProgressCallback = Callable[[ProgressInfo], None]


@dataclass(frozen=True)
class PhaseResult:
    iterations: int
    loss: float
    psnr_db: float
    rate_bpp: float
    stopped_early: bool
    quantize_s: float = 0.0  # quantize_model and rdoq_model, inside the phase's time


@dataclass
class EncodeResult:
    frame_encoder: FrameEncoder
    loss: float
    psnr_db: float
    rate_latent_bpp: float
    rate_nn_bpp: float
    iterations: int
    seconds: float
    log: List[str] = field(default_factory=list)

    @property
    def rate_bpp(self) -> float:
        return self.rate_latent_bpp + self.rate_nn_bpp


class _Counter:
    """Iterations done so far, shared by all stages (for the progress callback)."""

    def __init__(self, done: int, total: int):
        self.done, self.total = done, total


# ---- evaluation ---------------------------------------------------------------
@torch.no_grad()
def evaluate(frame_encoder: FrameEncoder, frame: FrameData, lmbda: float) -> LossFunctionOutput:
    """Loss with hard-rounded latents and output rounded to the bit depth, as decoded."""
    was_training = frame_encoder.training
    frame_encoder.set_to_eval()
    out = frame_encoder(quantizer_noise_type="none", quantizer_type="hardround")
    _, nn_bits = frame_encoder.coolchic_encoder.get_network_rate()
    res = loss_function(out.decoded_planes, out.rate, frame.planes, lmbda, rate_mlp_bit=nn_bits, compute_logs=True)
    if was_training:
        frame_encoder.set_to_train()
    return res


def loss_backward(frame_encoder: FrameEncoder, frame: FrameData, lmbda: float, quant: dict,
                  nn_bits=0.0, compute_logs: bool = False) -> LossFunctionOutput:
    """The training loss, its gradient accumulated into ``.grad``: whole frame, or
    band by band when the encoder has a tile plan (``tiling.tiled_backward``, always with logs).

    ``quant``: the quantizer keywords of ``FrameEncoder.forward``; ``nn_bits``:
    the (differentiable) network rate in bits.
    """
    plan = frame_encoder.coolchic_encoder.tile_plan
    if plan is None:
        out = frame_encoder(**quant)
        res = loss_function(out.decoded_planes, out.rate, frame.planes, lmbda, rate_mlp_bit=nn_bits,
                            compute_logs=compute_logs)
        guidance = out.additional_data.get("guidance_loss")
        (res.loss if guidance is None else res.loss + guidance).backward()
        return res
    step = tiled_backward(frame_encoder, frame.planes, lmbda, plan, **quant)
    n_pixels = frame.height * frame.width
    nn_bpp = 0.0
    if isinstance(nn_bits, torch.Tensor):
        (lmbda * nn_bits / n_pixels).backward()
        nn_bpp = float(nn_bits.detach()) / n_pixels
    return LossFunctionOutput(loss=torch.tensor(step.loss + lmbda * nn_bpp), mse=step.mse,
                              rate_latent_bpp=step.rate_latent_bits / n_pixels, rate_nn_bpp=nn_bpp,
                              psnr_db=psnr(step.mse))


# ---- one phase ----------------------------------------------------------------
def _parameters_to_optimize(frame_encoder: FrameEncoder, modules: Sequence[str]) -> Tuple[List, List]:
    """(network parameters, latent parameters) that ``modules`` selects."""
    cc = frame_encoder.coolchic_encoder
    latents = list(cc.latent_grids) + list(cc.hyper_latent_grids)
    if "all" in modules:
        params = list(cc.parameters())
    else:
        params = []
        for m in modules:
            if m == "latent":
                params += latents
            elif getattr(cc, m, None) is not None:
                params += list(getattr(cc, m).parameters())
    latent_ids = {id(p) for p in latents}
    params = [p for p in params if p.requires_grad]
    return [p for p in params if id(p) not in latent_ids], [p for p in params if id(p) in latent_ids]


def train_phase(
    frame_encoder: FrameEncoder,
    frame: FrameData,
    phase: TrainerPhase,
    lmbda: float,
    callback: Optional[ProgressCallback] = None,
    stage: str = "",
    counter: Optional[_Counter] = None,
    callback_every: int = 10,
    save_progress: Optional[Callable[[dict], None]] = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    resume_from: Optional[dict] = None,
) -> PhaseResult:
    """Train ``frame_encoder`` in place for one phase; keeps the best validated state.

    ``save_progress(state)`` is called every ``checkpoint_every`` iterations
    with what :func:`train_phase` needs, given back as ``resume_from`` (with
    ``frame_encoder`` holding the parameters of that moment), to go on.
    """
    counter = counter or _Counter(0, phase.max_itr)
    net_params, latent_params = _parameters_to_optimize(frame_encoder, phase.optimized_module)
    if phase.quantizer_type == "hardround":
        # round() has no gradient: the latents stay as they are.
        latent_params = []
    if not (net_params or latent_params) or phase.max_itr == 0:
        res = evaluate(frame_encoder, frame, lmbda)
        return PhaseResult(0, float(res.loss), res.psnr_db, res.total_rate_bpp, False)
    optimizer = make_optimizer(net_params, latent_params, phase.lr, phase.betas_model, phase.betas_latent,
                               phase.precondition_frequency_model)
    frame_encoder.set_to_train()
    cc = frame_encoder.coolchic_encoder
    if net_params:
        # Training moves the networks off their quantization grid.
        cc.reset_quantization_info()

    if resume_from is None:
        best = evaluate(frame_encoder, frame, lmbda)
        best_loss, best_itr, first = float(best.loss), 0, 1
        best_state = frame_encoder.get_param()
    else:
        optimizer.load_state_dict(resume_from["optimizer"])
        best_loss, best_itr = resume_from["best_loss"], resume_from["best_itr"]
        best_state = resume_from["best_state"]
        first = resume_from["itr"] + 1
        torch.set_rng_state(resume_from["rng"])  # the same quantization noise as an uninterrupted run
    stopped_early = False
    noise_pair = phase.noise_parameter or (warmup_noise_level(lmbda),) * 2
    nn_rate = NetworkRateProxy(cc.named_transmitted_params()) if phase.network_rate_weight and net_params else None
    itr = first - 1
    for itr in range(first, phase.max_itr + 1):
        frac = (itr - 1) / phase.max_itr
        if phase.schedule_lr:
            set_lr(optimizer, cosine_lr(phase.lr, frac))
        log_now = callback is not None and itr % callback_every == 0
        quant = dict(quantizer_noise_type=phase.quantizer_noise_type, quantizer_type=phase.quantizer_type,
                     soft_round_temperature=linear_schedule(phase.softround_temperature, frac),
                     noise_parameter=linear_schedule(noise_pair, frac))
        optimizer.zero_grad(set_to_none=True)
        nn_bits = 0.0
        if nn_rate is not None:
            nn_bits = phase.network_rate_weight * nn_rate()
        res = loss_backward(frame_encoder, frame, lmbda, quant, nn_bits, log_now)
        if net_params:
            clip_network_grad(net_params)
        optimizer.step()
        counter.done += 1
        if log_now:
            callback(ProgressInfo(stage, counter.done, counter.total, float(res.loss.detach()), res.psnr_db,
                                  res.rate_latent_bpp))

        if itr % phase.freq_valid == 0 or itr == phase.max_itr:
            val = evaluate(frame_encoder, frame, lmbda)
            if callback is not None:
                callback(ProgressInfo(stage, counter.done, counter.total, float(val.loss), val.psnr_db,
                                      val.total_rate_bpp, validation=True))
            if float(val.loss) < best_loss:
                best_loss, best_itr = float(val.loss), itr
                best_state = frame_encoder.get_param()
            elif itr - best_itr >= phase.patience:
                stopped_early = True
                break
        if save_progress is not None and itr % checkpoint_every == 0 and itr < phase.max_itr:
            save_progress({"itr": itr, "optimizer": optimizer.state_dict(), "best_loss": best_loss,
                           "best_itr": best_itr, "best_state": best_state, "rng": torch.get_rng_state()})
    # Skipped iterations still count, so a progress bar ends full.
    counter.done += phase.max_itr - itr
    frame_encoder.set_param(best_state)
    t_quantize = time.perf_counter()
    if phase.quantize_model:
        quantize_model(frame_encoder, frame, lmbda)
        if phase.rdoq:
            rdoq_model(frame_encoder, frame, lmbda)
    t_quantize = time.perf_counter() - t_quantize
    final = evaluate(frame_encoder, frame, lmbda)
    return PhaseResult(itr, float(final.loss), final.psnr_db, final.total_rate_bpp, stopped_early, t_quantize)


# ---- warm-up ------------------------------------------------------------------
def warmup(
    frame: FrameData,
    make_candidate: Callable[[int], FrameEncoder],
    phases: Sequence[WarmupPhase],
    lmbda: float,
    callback: Optional[ProgressCallback] = None,
    counter: Optional[_Counter] = None,
    callback_every: int = 10,
) -> FrameEncoder:
    """Train several random initialisations briefly; return the best one.

    ``make_candidate(i)`` builds the i-th freshly initialised candidate. Phase k
    starts from the ``phases[k].candidates`` best so far.
    """
    n0 = phases[0].candidates
    pool = [(math.inf, make_candidate(i)) for i in range(n0)]
    for k, wp in enumerate(phases):
        pool = sorted(pool, key=lambda c: c[0])[: wp.candidates]
        scored = []
        for _, cand in pool:
            res = train_phase(cand, frame, wp.training_phase, lmbda, callback, f"warmup{k}", counter, callback_every)
            scored.append((res.loss, cand))
        pool = scored
    return min(pool, key=lambda c: c[0])[1]


# ---- full encoding with checkpoints -------------------------------------------
def _fingerprint(frame: FrameData, param: CoolChicEncoderParameter, preset: EncoderPreset, lmbda: float,
                 seed: int, n_substreams: int, frame_type: str = "I", references: Sequence[Tensor] = (),
                 motion_offset: Optional[Tensor] = None) -> str:
    h = hashlib.sha256()
    for p in tuple(frame.planes) + tuple(references) + ((motion_offset,) if motion_offset is not None else ()):
        h.update(p.detach().cpu().numpy().tobytes())
    meta = {
        "param": param.to_dict(),
        "preset": repr(preset),
        "lmbda": lmbda,
        "seed": seed,
        "n_substreams": n_substreams,
        "frame_type": frame_type,
        "frame": [frame.frame_data_type, frame.bitdepth, frame.height, frame.width],
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _save_checkpoint(path: str, stage_done: int, fe: FrameEncoder, fingerprint: str, iterations: int,
                     seconds: float, log: List[str], in_phase: Optional[dict] = None) -> None:
    """``in_phase``: the state of the stage after ``stage_done``, part-trained (see train_phase)."""
    blob = {
        "version": CHECKPOINT_VERSION,
        "stage_done": stage_done,
        "frame_encoder": fe.save().getvalue(),
        "fingerprint": fingerprint,
        "iterations": iterations,
        "seconds": seconds,
        "log": list(log),
        "in_phase": in_phase,
    }
    tmp = path + ".tmp"
    torch.save(blob, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint


def _load_checkpoint(path: str, fingerprint: str):
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise EncodeError(f"{path}: unreadable checkpoint ({type(e).__name__}); remove it to start over") from None
    if not isinstance(blob, dict) or blob.get("version") != CHECKPOINT_VERSION:
        raise EncodeError(f"{path}: not a checkpoint of this encoder version; remove it to start over")
    if blob["fingerprint"] != fingerprint:
        raise EncodeError(
            f"{path} was written for another image, architecture, preset, lambda or seed; "
            "use another workdir or remove it"
        )
    return blob


def encode_frame(
    frame,
    coolchic_param: CoolChicEncoderParameter,
    preset: EncoderPreset,
    lmbda: float,
    *,
    workdir: Optional[str] = None,
    resume: bool = False,
    device: str = "cpu",
    seed: int = 0,
    callback: Optional[ProgressCallback] = None,
    callback_every: int = 10,
    checkpoint_every: int = CHECKPOINT_EVERY,
    frame_type: str = "I",
    num_threads: Optional[int] = None,
    n_substreams: int = 1,
    max_memory: Optional[int] = None,
    log_fn: Optional[Callable[[str], None]] = None,
    references: Sequence[Tensor] = (),
    motion_guidance: Optional[Tuple[Tensor, float]] = None,
    motion_offset: Optional[Tensor] = None,
) -> EncodeResult:
    """Overfit a FrameEncoder to ``frame`` (RawImage or FrameData).

    ``coolchic_param.img_size`` is set from the frame. With ``workdir``, writes
    ``archi.txt``, ``log.txt`` and a checkpoint after each stage (warm-up, each
    training phase) and every ``checkpoint_every`` iterations of a training
    phase; ``resume=True`` continues from that checkpoint.
    ``callback`` gets a ProgressInfo every ``callback_every`` iterations and at
    every validation. On the CPU, torch threads default to the available cores.
    ``n_substreams``: the stripes the bitstream will use; training sees the
    latent context they leave. ``max_memory``: training memory budget in bytes
    (None: ``tiling.default_max_memory()``); above it the frame trains in
    bands (``tiling.plan_tiles``), which ``log_fn`` (a line sink) is told.
    ``frame_type`` "P" or "B": ``references`` are the decoded reference
    frames (dense, see ``FrameEncoder.set_references``); ``motion_guidance``
    (target motion, weight) pulls the warm-up candidates' motion towards an
    optical-flow estimate (``FrameEncoder.motion_guidance``), then is dropped.
    ``motion_offset`` (1, 4, H, W): a B frame's derived motion in pixels, to which its
    Cool-chic's motion adds (``InterCodingModule.motion_offset``).
    """
    if not lmbda > 0:
        raise ConfigError(f"lambda must be positive, got {lmbda}")
    t_start = time.time()
    if torch.device(device).type == "cpu":
        set_torch_threads(num_threads)  # not configure_cpu: malloc tuning is the application's choice
    frame = as_frame_data(frame, device)
    param = coolchic_param.with_image_size(frame.height, frame.width)
    if param.encoder_gain is None:
        param = dataclasses.replace(param, encoder_gain=encoder_gain_for_lambda(lmbda))
    stages = preset.stage_names()
    if not stages:
        raise ConfigError(f"preset {preset.preset_name!r} has neither warm-up nor training phases")
    if not any(p.quantize_model for p in preset.training_phases):
        raise ConfigError(f"preset {preset.preset_name!r} never quantizes the networks (no quantize_model phase)")

    arch = param.to_arch(frame.frame_data_type, frame.bitdepth, frame_type)
    # The bands cut the synthesis, not yet the motion compensation: inter frames train whole.
    tile_plan = plan_tiles(arch, max_memory) if frame_type == "I" else None
    references = tuple(r.to(device) for r in references)
    if motion_offset is not None:
        motion_offset = motion_offset.to(device)

    def prepare(fe: FrameEncoder) -> FrameEncoder:
        fe.coolchic_encoder.set_n_substreams(n_substreams)
        fe.coolchic_encoder.set_tile_plan(tile_plan)
        fe.to_device(device)
        if frame_type != "I":
            fe.set_references(references)
            fe.inter_coding_module.motion_offset = motion_offset
        return fe

    def make_candidate(i: int) -> FrameEncoder:
        torch.manual_seed(seed * 1000 + i)
        fe = FrameEncoder(param, frame_type, frame.frame_data_type, frame.bitdepth)
        fe.reinitialize_parameters()
        fe = prepare(fe)
        if motion_guidance is not None:
            fe.motion_guidance = (motion_guidance[0].to(device), float(motion_guidance[1]))
        return fe

    fingerprint = _fingerprint(frame, param, preset, lmbda, seed, n_substreams, frame_type, references, motion_offset)
    ckpt_path = os.path.join(workdir, CHECKPOINT_NAME) if workdir else None
    fe: Optional[FrameEncoder] = None
    first_stage, iterations_before, seconds_before, log = 0, 0, 0.0, []
    in_phase: Optional[dict] = None
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        if resume and os.path.exists(ckpt_path):
            blob = _load_checkpoint(ckpt_path, fingerprint)
            fe = prepare(load_frame_encoder(io.BytesIO(blob["frame_encoder"])))
            first_stage = blob["stage_done"] + 1
            iterations_before, seconds_before, log = blob["iterations"], blob["seconds"], blob["log"]
            in_phase = blob.get("in_phase")
            if in_phase is not None:
                where = f"at iteration {in_phase['itr']} of {stages[first_stage]}"
            else:
                where = f"after stage {stages[blob['stage_done']]}"
            log.append(f"resumed {where} by coolchic {__version__}")
        else:
            for stale in (ckpt_path, os.path.join(workdir, "log.txt")):
                if os.path.exists(stale):
                    os.remove(stale)
            log.append(f"coolchic {__version__}: lambda {lmbda:g}, preset {preset.preset_name}, seed {seed}")
        with open(os.path.join(workdir, "log.txt"), "a") as f:
            f.write(log[-1] + "\n")

    def add_line(line: str) -> None:
        """A line of the encoding's log (EncodeResult.log, and workdir/log.txt)."""
        log.append(line)
        if workdir:
            with open(os.path.join(workdir, "log.txt"), "a") as f:
                f.write(line + "\n")

    if tile_plan is not None:
        line = (f"{tile_plan.describe(arch)}: whole-frame training would take about "
                f"{whole_frame_training_bytes(arch) / 2**30:.1f} GiB")
        add_line(line)
        if log_fn is not None:
            log_fn(line)
    if fe is None and not preset.warmup:
        fe = make_candidate(0)
    if workdir:
        with open(os.path.join(workdir, "archi.txt"), "w") as f:
            f.write(archi_table(arch))

    # A resumed encoding starts counting from the iterations already done.
    counter = _Counter(iterations_before, preset.total_iterations)
    for k in range(first_stage, len(stages)):
        name = stages[k]
        t_stage = time.perf_counter()
        if name == "warmup":
            fe = warmup(frame, make_candidate, preset.warmup, lmbda, callback, counter, callback_every)
            fe.motion_guidance = None
            res = evaluate(fe, frame, lmbda)
            line = (f"warmup: loss {float(res.loss):.6f} psnr {res.psnr_db:.3f} dB rate {res.total_rate_bpp:.4f} bpp"
                    f" ({time.perf_counter() - t_stage:.1f} s)")
        else:
            i = int(name[len("phase"):])
            save_progress = None
            if workdir:
                def save_progress(state, k=k):
                    _save_checkpoint(ckpt_path, k - 1, fe, fingerprint, counter.done,
                                     seconds_before + time.time() - t_start, log, state)
            r = train_phase(fe, frame, preset.training_phases[i], lmbda, callback, name, counter, callback_every,
                            save_progress, checkpoint_every, in_phase)
            in_phase = None
            line = (f"{name}: {r.iterations} itr{' (early stop)' if r.stopped_early else ''} loss {r.loss:.6f} "
                    f"psnr {r.psnr_db:.3f} dB rate {r.rate_bpp:.4f} bpp ({time.perf_counter() - t_stage:.1f} s"
                    + (f", quantization {r.quantize_s:.1f} s)" if preset.training_phases[i].quantize_model else ")"))
        add_line(line)
        if workdir:
            _save_checkpoint(ckpt_path, k, fe, fingerprint, counter.done,
                             seconds_before + time.time() - t_start, log)

    if not fe.coolchic_encoder.is_quantized():
        quantize_model(fe, frame, lmbda)
    res = evaluate(fe, frame, lmbda)
    return EncodeResult(
        frame_encoder=fe,
        loss=float(res.loss),
        psnr_db=res.psnr_db,
        rate_latent_bpp=res.rate_latent_bpp,
        rate_nn_bpp=res.rate_nn_bpp,
        iterations=counter.done,
        seconds=seconds_before + time.time() - t_start,
        log=log,
    )
