"""Optimizer and schedules of the training recipe (the reference Cool-chic
5.0.1's, measured in docs/compression.md).

* Networks: SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo
  using Adam", arXiv:2409.11321) from ``pytorch-optimizer``: Adam run in the
  eigenbasis of Shampoo's preconditioners. For a weight ``W`` with gradient
  ``G`` and one preconditioner ``L_i`` per dimension ``i`` (all dimensions of
  our tiny networks are at most ``MAX_PRECOND_DIM``)::

      L_i <- beta2 L_i + (1 - beta2) G_(i) G_(i)^T     (G_(i): G unfolded along i)
      Q_i  = eigenvectors of L_i (refreshed every ``precondition_frequency`` steps)
      G'   = G x_i Q_i^T,  M <- beta1 M + (1 - beta1) G,  V <- beta2 V + (1 - beta2) G'^2
      W   <- W - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * (M x_i Q_i^T / (sqrt(V) + eps)) x_i Q_i
      W   <- W - lr * weight_decay * W                    (decoupled weight decay)

  The first step only builds the preconditioners; biases (1-D) get plain Adam.
* Latents: the same optimizer with no preconditioner (``max_precondition_dim
  = 0``), i.e. Adam with its own betas and no weight decay.
* The gradient of the network parameters is clipped to a global L2 norm of
  ``GRAD_CLIP_NORM`` before every step.

Schedules, with ``f = itr / max_itr`` in [0, 1]:

* learning rate (cosine, C3): ``lr_min + (lr - lr_min) * (1 + cos(pi f)) / 2``
* soft-round temperature and noise: linear from the first to the second value
* warm-up noise (Gaussian, standard deviation): ``(0.747 - 0.432 log10(lambda)) / 10``
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, List, Sequence, Tuple

import torch
from torch import Tensor

from coolchic.decoder_runtime.errors import ConfigError

MAX_PRECOND_DIM = 256
NETWORK_WEIGHT_DECAY = 0.01
GRAD_CLIP_NORM = 0.1
LR_MIN = 1e-5


def cosine_lr(lr: float, frac: float, lr_min: float = LR_MIN) -> float:
    """Cosine decay from ``lr`` (frac 0) to ``lr_min`` (frac 1)."""
    lr_min = min(lr_min, lr)
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * frac))


def linear_schedule(pair: Tuple[float, float], frac: float) -> float:
    """``pair[0]`` at frac 0, ``pair[1]`` at frac 1."""
    return pair[0] + (pair[1] - pair[0]) * frac


def warmup_noise_level(lmbda: float) -> float:
    """Standard deviation of the warm-up's Gaussian quantization noise.

    Larger at low lambda (high rate), where latents are large and a stronger
    noise explores more; the reference's fit: 0.17 at lambda 1e-3.
    """
    if not lmbda > 0:
        raise ConfigError(f"lambda must be positive, got {lmbda}")
    return (0.747 - 0.432 * math.log10(lmbda)) / 10.0


@functools.lru_cache(maxsize=None)
def _soap_class():
    """pytorch-optimizer's SOAP with a faster step for the tensors it does not precondition."""
    from pytorch_optimizer import SOAP  # the encoder extra pins it

    class FastSOAP(SOAP):
        """SOAP whose tensors without a preconditioner (biases, upsampling kernels,
        latents: every entry of their ``GG`` empty) take their Adam step together,
        in a few ``torch._foreach`` calls, instead of a dozen calls per tensor.

        Same arithmetic, operation by operation, as ``SOAP.step`` on those
        tensors (``test_encoder_optim`` checks equality after several steps):
        ``m.lerp_(g, 1 - b1)``, ``v.lerp_(g^2, 1 - b2)``,
        ``p -= step_size * m / (sqrt(v) + eps)``, then ``p *= 1 - lr wd``. The
        preconditioned tensors go through SOAP's own loop. 20 of our 28
        network tensors and every latent grid have no preconditioner: the step
        took 4.3 ms for 35 tensors (2 threads), most of it call overhead.
        """

        @torch.no_grad()
        def step(self, closure=None):
            if closure is not None or self.maximize or any(g["normalize_gradient"] for g in self.param_groups):
                return super().step(closure)
            rest = []
            for group in self.param_groups:
                rest.append(self._plain_step(group))
            # SOAP's own loop (which counts the step) sees the preconditioned tensors only.
            saved = [g["params"] for g in self.param_groups]
            try:
                for g, r in zip(self.param_groups, rest):
                    g["params"] = r
                super().step()
            finally:
                for g, p in zip(self.param_groups, saved):
                    g["params"] = p
            return None

        def _plain_step(self, group) -> list:
            """Step the group's tensors without a preconditioner; return the others."""
            self.init_group(group)
            plain, rest = [], []
            for p in group["params"]:
                if p.grad is not None:
                    gg = self.state[p]["GG"]
                    (plain if all(len(m) == 0 for m in gg) else rest).append(p)
            step = group["step"]  # SOAP's step() adds 1 next; its first step only gathers statistics
            if not plain or step == 0:
                return rest
            beta1, beta2 = group["betas"]
            step_size = group["lr"]
            if group["correct_bias"]:
                step_size *= math.sqrt(self.debias(beta2, step)) / self.debias(beta1, step)
            grads = [p.grad for p in plain]
            m = [self.state[p]["exp_avg"] for p in plain]
            v = [self.state[p]["exp_avg_sq"] for p in plain]
            torch._foreach_lerp_(m, grads, 1.0 - beta1)
            torch._foreach_lerp_(v, torch._foreach_mul(grads, grads), 1.0 - beta2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_add_(plain, torch._foreach_div(m, denom), alpha=-step_size)
            if group["weight_decay"] != 0.0:
                torch._foreach_mul_(plain, 1.0 - group["weight_decay"] * group["lr"])
            return rest

    return FastSOAP


def make_optimizer(
    network_params: Sequence[Tensor],
    latent_params: Sequence[Tensor],
    lr: float,
    betas_model: Tuple[float, float] = (0.95, 0.95),
    betas_latent: Tuple[float, float] = (0.9, 0.999),
    precondition_frequency_model: int = 10,
) -> torch.optim.Optimizer:
    """SOAP on the networks, Adam-like on the latents (see module docstring)."""
    groups: List[dict] = []
    if network_params:
        groups.append(dict(params=list(network_params), lr=lr, betas=tuple(betas_model),
                           precondition_frequency=int(precondition_frequency_model),
                           max_precondition_dim=MAX_PRECOND_DIM, weight_decay=NETWORK_WEIGHT_DECAY))
    if latent_params:
        groups.append(dict(params=list(latent_params), lr=lr, betas=tuple(betas_latent),
                           precondition_frequency=1, max_precondition_dim=0, weight_decay=0.0))
    if not groups:
        raise ConfigError("nothing to optimize")
    return _soap_class()(groups, lr=lr, merge_dims=False, precondition_1d=False)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def clip_network_grad(network_params: Iterable[Tensor]) -> None:
    torch.nn.utils.clip_grad_norm_(list(network_params), GRAD_CLIP_NORM, norm_type=2.0, error_if_nonfinite=False)
