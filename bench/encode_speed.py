"""Encoder speed benchmark: milliseconds per training iteration on a 512x768
Kodak image with the mop decoder configuration, on the CPU (the main phase's
step: forward, backward, gradient clipping, SOAP/Adam update), plus the time of
quantize_model on the same image.

    .venv/bin/python bench/encode_speed.py [--image PATH] [--config mop] [--threads 2]

The last line printed is ``encode_ms_per_iter=<median> ms``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from coolchic.decoder_runtime.frame import RawImage  # noqa: E402
from coolchic.encoder import (  # noqa: E402
    FrameEncoder,
    configure_cpu,
    decoder_config_to_param,
    frame_from_raw,
    load_decoder_config,
    loss_function,
    quantize_model,
)
from coolchic.encoder.optim import clip_network_grad, make_optimizer  # noqa: E402


def read_rgb(path: str) -> RawImage:
    img = np.asarray(Image.open(path).convert("RGB"))
    return RawImage(tuple(np.ascontiguousarray(img[:, :, i]) for i in range(3)), "rgb", 8)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=os.path.join(REPO, "..", "shared", "data", "kodak", "kodim01.png"))
    ap.add_argument("--config", default="mop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    ap.add_argument("--lmbda", type=float, default=1e-3)
    ap.add_argument("--profile", action="store_true", help="print the top operators of 5 iterations")
    args = ap.parse_args(argv)

    threads = configure_cpu(args.threads)
    torch.manual_seed(0)
    raw = read_rgb(args.image)
    frame = frame_from_raw(raw)
    param = decoder_config_to_param(load_decoder_config(args.config), img_size=(raw.height, raw.width))
    fe = FrameEncoder(param, "I", "rgb", 8)
    cc = fe.coolchic_encoder
    print(f"image {args.image} ({raw.height}x{raw.width}), config {args.config}: "
          f"{cc.get_total_mac_per_pixel():.1f} MAC/pixel, torch {torch.__version__}, {threads} threads")

    # The main phase's optimizer: SOAP on the networks, Adam on the latents.
    latents = [p for p in fe.parameters() if any(p is q for q in list(cc.latent_grids) + list(cc.hyper_latent_grids))]
    networks = [p for p in fe.parameters() if not any(p is q for q in latents)]
    optimizer = make_optimizer(networks, latents, 1e-2)
    fe.set_to_train()

    def step() -> None:
        out = fe(quantizer_noise_type="gaussian", quantizer_type="softround",
                 soft_round_temperature=0.3, noise_parameter=0.2)
        loss = loss_function(out.decoded_planes, out.rate, frame.planes, args.lmbda).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_network_grad(networks)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    med = statistics.median(times)
    print(f"training iteration: median {med:.1f} ms, mean {statistics.mean(times):.1f} ms, "
          f"min {min(times):.1f} ms over {args.iters} iterations")

    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            for _ in range(5):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))

    t0 = time.perf_counter()
    quantize_model(fe, frame, args.lmbda)
    print(f"quantize_model: {time.perf_counter() - t0:.2f} s "
          f"(shifts {cc.nn_q_step}, network rate {cc.get_network_rate()[1]} bits)")
    print(f"encode_ms_per_iter={med:.1f} ms")


if __name__ == "__main__":
    main()
