"""Post-training quantization of the transmitted networks (reference name and
signature: ``quantize_model(frame_encoder, frame, lmbda)``).

For each module sent (arm, ifce, upsampling, synthesis, in bitstream order) a
greedy search picks the power-of-two steps 2^-s of its weights and of its
biases, and the Exp-Golomb count of each, minimising the usual loss
``MSE + lambda * (latent rate + network rate)``. To take seconds rather than the
reference's minutes:

- the weight step is searched first (biases kept in full precision), then the
  bias step with the chosen weight step, then the 3 x 3 (weight, bias) pairs
  around that choice: 2 x 17 + 8 evaluations, not 17 x 17;
- the ARM and the IFCE only change the latent rate: no synthesis is run;
- the upsampled latents are computed once and reused while the synthesis is
  searched; the latent rate is reused while upsampling or synthesis are.
"""

from __future__ import annotations

import contextlib
import time
from typing import Dict, Optional

import torch

from coolchic.decoder_runtime.errors import EncodeError

from .frame_encoder import FrameEncoder, as_frame_data
from .loss import squared_error_and_count
from .nn_rate import MAX_PARAM_INT, POSSIBLE_SHIFTS, best_expgol_count


def _set_quantized(params, fp, shifts: Dict[str, Optional[int]]) -> bool:
    """Write round(fp / step) * step into ``params``; False if an integer is too large."""
    for name, p in params.items():
        kind = name.rsplit(".", 1)[1]
        s = shifts.get(kind)
        if s is None:
            p.copy_(fp[name])
            continue
        q = torch.round(fp[name] * float(1 << s))
        if q.numel() and q.abs().max().item() > MAX_PARAM_INT:
            return False
        p.copy_(q / float(1 << s))
    return True


def _module_nn_bits(cc, module: str, shifts: Dict[str, Optional[int]]):
    """Total bits and best Exp-Golomb count of each quantized kind of ``module``."""
    bits, counts = 0, {}
    for kind, s in shifts.items():
        if s is None:
            continue
        counts[kind], b = best_expgol_count(cc.module_integer_params(module, kind, s))
        bits += b
    return bits, counts


def _refine_pair(shifts: Dict[str, Optional[int]], cost_of) -> Dict[str, Optional[int]]:
    """Best (weight, bias) shift pair among the 3 x 3 around the one-at-a-time choice.

    The weight step is chosen with float biases, so the pair can be off by one
    step once the biases are quantized too; the nine neighbours catch that.
    """
    if set(shifts) != {"weight", "bias"}:
        return shifts
    best_cost, best = cost_of(shifts), dict(shifts)
    for dw in (-1, 0, 1):
        for db in (-1, 0, 1):
            trial = {"weight": shifts["weight"] + dw, "bias": shifts["bias"] + db}
            if (dw, db) == (0, 0) or not all(0 <= v <= POSSIBLE_SHIFTS[-1] for v in trial.values()):
                continue
            c = cost_of(trial)
            if c is not None and (best_cost is None or c < best_cost):
                best_cost, best = c, trial
    return best


@torch.no_grad()
def quantize_model(frame_encoder: FrameEncoder, frame, lmbda: float, verbose: bool = False) -> FrameEncoder:
    """Quantize the networks of ``frame_encoder`` (in place) for the frame it encodes.

    ``frame`` is a RawImage or FrameData. Returns ``frame_encoder``, whose
    ``coolchic_encoder.nn_q_step`` / ``nn_expgol_cnt`` then hold the shift s of
    each step 2^-s and each Exp-Golomb count.
    """
    start = time.time()
    fe = frame_encoder
    with hard_rounded(fe, frame) as (cc, frame, n_pixels, flat):
        _quantize_modules(fe, cc, frame, n_pixels, flat, lmbda, verbose)
    if verbose:
        print(f"quantize_model: {time.time() - start:.1f} s")
    return fe


@contextlib.contextmanager
def hard_rounded(frame_encoder: FrameEncoder, frame):
    """``(coolchic_encoder, FrameData, pixels, flat hard-rounded latents)``, the
    frame encoder in eval mode meanwhile (as decoded)."""
    cc = frame_encoder.coolchic_encoder
    frame = as_frame_data(frame, next(cc.parameters()).device)
    was_training = frame_encoder.training
    frame_encoder.set_to_eval()
    try:
        h, w = cc.arch.img_size
        yield cc, frame, h * w, cc.quantized_flat_latents()
    finally:
        if was_training:
            frame_encoder.set_to_train()


def decoded_mse(frame_encoder: FrameEncoder, frame, dense) -> float:
    """MSE of the decoded frame (output rounded to the bit depth) from the synthesis input ``dense``."""
    return synthesis_output_mse(frame_encoder, frame, frame_encoder.coolchic_encoder.synthesize(dense))


def synthesis_output_mse(frame_encoder: FrameEncoder, frame, raw) -> float:
    """MSE of the decoded frame (output rounded to the bit depth) from the synthesis output ``raw``."""
    out = frame_encoder.postprocess(raw, raw.new_zeros(0))
    sse, n = squared_error_and_count(out.decoded_planes, frame.planes)
    return float(sse) / n


def _quantize_modules(fe, cc, frame, n_pixels, flat, lmbda, verbose) -> None:
    cache = {"rate": None, "dense": None, "sse": None}

    def latent_bits() -> float:
        if cache["rate"] is None:
            cache["rate"] = float(cc.latent_rate(flat).sum())
        return cache["rate"]

    def dense():
        if cache["dense"] is None:
            cache["dense"] = cc.dense_latent(flat)
        return cache["dense"]

    def mse() -> float:
        if cache["sse"] is None:
            cache["sse"] = decoded_mse(fe, frame, dense())
        return cache["sse"]

    invalidates = {"arm": ("rate",), "ifce": ("rate",), "upsampling": ("dense", "sse"), "synthesis": ("sse",)}

    def cost_of(module, params, fp, trial) -> Optional[float]:
        """The loss with ``module`` quantized with ``trial`` shifts (None: a value too large)."""
        if not _set_quantized(params, fp, trial):
            return None
        for key in invalidates[module]:
            cache[key] = None
        nn_bits, _ = _module_nn_bits(cc, module, trial)
        return mse() + lmbda * (latent_bits() + nn_bits) / n_pixels

    for module in cc.modules_to_send:
        params = cc.named_transmitted_params(module)
        fp = {n: p.detach().clone() for n, p in params.items()}
        shifts: Dict[str, Optional[int]] = {k: None for k in cc.nn_q_step[module]}
        for kind in list(shifts):
            best = None
            for s in POSSIBLE_SHIFTS:
                trial = dict(shifts, **{kind: s})
                cost = cost_of(module, params, fp, trial)
                if cost is None:
                    continue
                if best is None or cost < best[0]:
                    best = (cost, s)
            if best is None:
                raise EncodeError(f"quantize_model: no quantization step fits the {module} {kind}s")
            shifts[kind] = best[1]
        shifts = _refine_pair(shifts, lambda trial: cost_of(module, params, fp, trial))
        _set_quantized(params, fp, shifts)
        for key in invalidates[module]:
            cache[key] = None
        _, counts = _module_nn_bits(cc, module, shifts)
        cc.nn_q_step[module] = dict(shifts)
        cc.nn_expgol_cnt[module] = counts
        if verbose:
            print(f"quantize_model: {module} shifts {shifts} expgol {counts}")
