"""Post-training quantization of the transmitted networks (reference name and
signature: ``quantize_model(frame_encoder, frame, lmbda)``).

For each module sent (arm, ifce, upsampling, synthesis, in bitstream order) a
greedy search picks the power-of-two steps 2^-s of its weights and of its
biases, and the Exp-Golomb count of each, minimising the usual loss
``MSE + lambda * (latent rate + network rate)``. To take seconds rather than the
reference's minutes:

- the weight step is searched first (biases kept in full precision), then the
  bias step with the chosen weight step: 2 x 17 evaluations, not 17 x 17;
- the ARM and the IFCE only change the latent rate: no synthesis is run;
- the upsampled latents are computed once and reused while the synthesis is
  searched; the latent rate is reused while upsampling or synthesis are.
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import torch

from decoder_runtime.errors import EncodeError

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


@torch.no_grad()
def quantize_model(frame_encoder: FrameEncoder, frame, lmbda: float, verbose: bool = False) -> FrameEncoder:
    """Quantize the networks of ``frame_encoder`` (in place) for the frame it encodes.

    ``frame`` is a RawImage or FrameData. Returns ``frame_encoder``, whose
    ``coolchic_encoder.nn_q_step`` / ``nn_expgol_cnt`` then hold the shift s of
    each step 2^-s and each Exp-Golomb count.
    """
    start = time.time()
    fe = frame_encoder
    cc = fe.coolchic_encoder
    device = next(cc.parameters()).device
    frame = as_frame_data(frame, device)
    was_training = fe.training
    fe.set_to_eval()
    h, w = cc.arch.img_size
    n_pixels = h * w

    flat = cc.quantized_flat_latents()
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
            out = fe.postprocess(cc.synthesis(dense()), flat.new_zeros(0))
            sse, n = squared_error_and_count(out.decoded_planes, frame.planes)
            cache["sse"] = float(sse) / n
        return cache["sse"]

    invalidates = {"arm": ("rate",), "ifce": ("rate",), "upsampling": ("dense", "sse"), "synthesis": ("sse",)}

    for module in cc.modules_to_send:
        params = cc.named_transmitted_params(module)
        fp = {n: p.detach().clone() for n, p in params.items()}
        shifts: Dict[str, Optional[int]] = {k: None for k in cc.nn_q_step[module]}
        for kind in list(shifts):
            best = None
            for s in POSSIBLE_SHIFTS:
                trial = dict(shifts, **{kind: s})
                if not _set_quantized(params, fp, trial):
                    continue
                for key in invalidates[module]:
                    cache[key] = None
                nn_bits, _ = _module_nn_bits(cc, module, trial)
                cost = mse() + lmbda * (latent_bits() + nn_bits) / n_pixels
                if best is None or cost < best[0]:
                    best = (cost, s)
            if best is None:
                raise EncodeError(f"quantize_model: no quantization step fits the {module} {kind}s")
            shifts[kind] = best[1]
        _set_quantized(params, fp, shifts)
        for key in invalidates[module]:
            cache[key] = None
        _, counts = _module_nn_bits(cc, module, shifts)
        cc.nn_q_step[module] = dict(shifts)
        cc.nn_expgol_cnt[module] = counts
        if verbose:
            print(f"quantize_model: {module} shifts {shifts} expgol {counts}")

    if was_training:
        fe.set_to_train()
    if verbose:
        print(f"quantize_model: {time.time() - start:.1f} s")
    return fe
