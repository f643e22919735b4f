"""Rate-distortion optimised quantization of the network parameters (the
reference's ``rdoq_model``), run after :func:`quantize_model`.

Each transmitted parameter is an integer ``v`` times its module's step
``2^-s``. ``quantize_model`` rounds to the nearest integer; here a greedy pass
moves single integers where that lowers the cost the encoder minimises

    J = MSE + lambda * (latent bits + network bits) / (H * W)

Parameters are visited in a seeded random order, module by module. For each
non-zero one, ``v`` moves by 1, 2, ... first toward zero (fewer Exp-Golomb
bits), then away from it, while J keeps falling; a move that does not lower J
is undone, so J never rises. Parameters at zero stay there: leaving zero costs
at least two bits, which training with the network rate in the loss already
weighed. Trying them took half to two thirds of the pass's evaluations and did
not end with a lower J (kodim01 and kodim02 crops, ``fast``: J -0.94 %
and -0.60 % in 717 and 1007 evaluations without them, -0.79 % and -0.59 %
in 2210 and 2205 with them; docs/compression.md). The Exp-Golomb bits of
one integer (``exp_golomb_nbits``) make the network-rate change of a move
exact without recounting the module.
Only what a module changes is recomputed: the latent rate for the ARM (from
a cached ARM input) and the IFCE, the synthesis output for the synthesis
(from cached upsampled latents, and from the cached input of the layer that
moved), both for the upsampling. Finally each Exp-Golomb count is re-chosen
for the new integers (which can only lower J).
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np
import torch
from torch import Tensor

from coolchic.decoder_runtime.expgolomb import exp_golomb_nbits

from .arm import arm_input, laplace_rate
from .frame_encoder import FrameEncoder
from .nn_rate import MAX_PARAM_INT, best_expgol_count
from .quantizemodel import decoded_mse, hard_rounded, synthesis_output_mse

MAX_MOVE = 15  # the reference's bound on |change| of one integer
# Pixel-evaluations one pass may spend: each evaluation decodes the frame (or
# its latent rate), so a 12 Mpixel frame would take 30 times a 512x768 one's
# minutes. 256x256 crops (mop, fast) take 700-1000 evaluations (2 200 when the
# zeros were tried too), far under the cap of 6 000 at 512x768; a 12 Mpixel
# frame stops after 196, in the same seeded order.
MAX_PIXEL_EVALUATIONS = 6_000 * 512 * 768


def evaluation_cap(n_pixels: int) -> int:
    """Evaluations a pass may spend on a frame of ``n_pixels`` (see :data:`MAX_PIXEL_EVALUATIONS`)."""
    return max(1, MAX_PIXEL_EVALUATIONS // max(1, n_pixels))


@torch.no_grad()
def rdoq_model(frame_encoder: FrameEncoder, frame, lmbda: float, seed: int = 0,
               time_budget_s: Optional[float] = None, verbose: bool = False,
               max_evaluations: Optional[int] = None) -> Dict[str, float]:
    """Refine the quantized networks of ``frame_encoder`` in place (see module docstring).

    Returns ``{"cost_before", "cost_after", "moves", "evaluations", "seconds"}``.
    ``time_budget_s`` and ``max_evaluations`` (None: :func:`evaluation_cap`
    of the frame's size) stop the pass early; the model stays valid, every
    accepted move having lowered J.
    """
    start = time.time()
    if not frame_encoder.coolchic_encoder.is_quantized():
        raise ValueError("rdoq_model needs a quantized model: run quantize_model first")
    with hard_rounded(frame_encoder, frame) as (cc, frame, n_pixels, flat):
        cap = evaluation_cap(n_pixels) if max_evaluations is None else max_evaluations
        res = _rdoq(frame_encoder, cc, frame, n_pixels, flat, lmbda, seed, start, time_budget_s, cap)
    if verbose:
        print(f"rdoq_model: {res['moves']} moves in {res['evaluations']} evaluations, "
              f"J {res['cost_before']:.6g} -> {res['cost_after']:.6g}, {res['seconds']:.1f} s")
    return res


def _rdoq(fe, cc, frame, n_pixels, flat, lmbda, seed, start, time_budget_s, max_evaluations) -> Dict[str, float]:
    a = cc.arch
    state: Dict[str, object] = {"u": None, "dense": None, "inputs": None}

    def latent_bits(module: str) -> float:
        if module == "arm" and cc.tile_plan is None:  # a tiled frame has no whole ARM input to cache
            if state["u"] is None:
                state["u"] = arm_input(flat, cc.ifce, cc.arm_indices(), a.spatial_context_arm, a.arm_input_dim)
            mu, log_scale = cc.arm(state["u"])
            return float(laplace_rate(flat, mu, log_scale).sum())
        return float(cc.latent_rate(flat).sum())

    def mse(module: str) -> float:
        if module == "upsampling" or state["dense"] is None:
            state["dense"] = cc.dense_latent(flat)
        return decoded_mse(fe, frame, state["dense"])

    # A synthesis move reruns the synthesis from the input of its own layer only.
    syn = cc.synthesis
    syn_layer = {id(c.weight): i for i, c in enumerate(syn.layers)}
    syn_layer.update({id(c.bias): i for i, c in enumerate(syn.layers)})
    if syn.stabiliser is not None:
        syn_layer[id(syn.stabiliser.weight)] = len(syn.layers)

    def synthesis_mse(t: Tensor) -> float:
        i, inputs = syn_layer[id(t)], state["inputs"]
        return synthesis_output_mse(fe, frame, syn.forward_from(i, inputs[i], inputs[0]))

    nn_bits_total = cc.get_network_rate()[1]
    base_lat, base_mse = latent_bits("ifce"), mse("upsampling")
    cost_before = base_mse + lmbda * (base_lat + nn_bits_total) / n_pixels
    gen = torch.Generator().manual_seed(seed)
    moves = evals = 0
    out_of_time = False

    for module in cc.modules_to_send:
        rate_only = module in ("arm", "ifce")
        layer_cache = module == "synthesis" and cc.tile_plan is None
        if layer_cache:  # from the parameters as they stand, before any trial move
            if state["dense"] is None:
                state["dense"] = cc.dense_latent(flat)
            state["inputs"] = syn.layer_inputs(state["dense"])
        lat, dist = base_lat, base_mse

        def score(t: Tensor) -> tuple:
            if layer_cache:
                return lat, synthesis_mse(t)
            return (latent_bits(module), dist) if rate_only else (lat, mse(module))

        for kind in cc.nn_q_step[module]:
            s, k = cc.nn_q_step[module][kind], cc.nn_expgol_cnt[module][kind]
            step = 2.0 ** -s
            tensors = [p for name, p in cc.named_transmitted_params(module).items() if name.endswith("." + kind)]
            slots = [(t, idx) for t in tensors for idx in np.ndindex(*t.shape)]
            for j in torch.randperm(len(slots), generator=gen).tolist():
                if evals >= max_evaluations or (time_budget_s is not None and time.time() - start > time_budget_s):
                    out_of_time = True
                    break
                t, i = slots[j]
                v0 = int(round(float(t[i]) * (1 << s)))
                if v0 == 0:
                    continue
                best_v, best_cost = v0, dist + lmbda * lat / n_pixels  # this parameter's own bits cancel
                bits0 = exp_golomb_nbits((v0,), k)
                directions = (-1, 1) if v0 > 0 else (1, -1)  # toward zero first
                for d in directions:
                    improved = False
                    for m in range(1, MAX_MOVE + 1):
                        v = v0 + d * m
                        if abs(v) > MAX_PARAM_INT:
                            break
                        if evals >= max_evaluations:  # a cap, not a hint: never one evaluation past it
                            out_of_time = True
                            break
                        t[i] = v * step
                        cand_lat, cand_dist = score(t)
                        evals += 1
                        cost = cand_dist + lmbda * (cand_lat + exp_golomb_nbits((v,), k) - bits0) / n_pixels
                        if cost < best_cost:
                            best_v, best_cost, improved = v, cost, True
                            lat_best, dist_best = cand_lat, cand_dist
                        else:
                            break
                    if improved or out_of_time:
                        break
                t[i] = best_v * step
                if best_v != v0:
                    moves += 1
                    lat, dist = lat_best, dist_best
                    if layer_cache:
                        state["inputs"] = syn.layer_inputs(state["dense"])
            if out_of_time:
                break
        # Refresh what later modules start from.
        state["dense"] = state["inputs"] = None
        base_lat, base_mse = latent_bits("ifce"), mse("upsampling")
        for kind in cc.nn_q_step[module]:
            ints = cc.module_integer_params(module, kind, cc.nn_q_step[module][kind])
            cc.nn_expgol_cnt[module][kind] = best_expgol_count(ints)[0]
        if out_of_time:
            break

    cost_after = base_mse + lmbda * (base_lat + cc.get_network_rate()[1]) / n_pixels
    return {"cost_before": cost_before, "cost_after": cost_after, "moves": moves, "evaluations": evals,
            "seconds": time.time() - start}
