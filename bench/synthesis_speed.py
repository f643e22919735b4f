"""Upsampling + synthesis on onnxruntime: graph build, session, first and warm runs, peak memory.

    python bench/synthesis_speed.py                       # 512x768 mop, 7 grids, K=8, Kp=7, 1 thread
    python bench/synthesis_speed.py --size 1080 1920 --threads 2

Random weights (the speed does not depend on their values). Prints the
figures; the peak resident memory is that of this whole process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coolchic.decoder_runtime.arch import DecoderArch, param_layout, parse_synthesis_layer  # noqa: E402
from coolchic.decoder_runtime.common_randomness import common_randomness_grids  # noqa: E402
from coolchic.decoder_runtime.onnx_graph import build_decoder_model_bytes, input_feed  # noqa: E402
from coolchic.decoder_runtime.ort_session import make_session  # noqa: E402
from coolchic.decoder_runtime.reconstruct import to_raw_image  # noqa: E402

MOP = "32-1-linear-relu,X-1-linear-none,X-3-residual-relu,X-3-residual-none"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    p.add_argument("--layers", default=MOP, help="synthesis layers (default: mop)")
    p.add_argument("--grids", type=int, default=7, help="latent grids (default 7: levels 0..6)")
    p.add_argument("--ups-k", type=int, default=8)
    p.add_argument("--preconcat-k", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--provider", default="cpu")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--common-randomness", action="store_true")
    a = p.parse_args()

    arch = DecoderArch(
        img_size=tuple(a.size),
        latent_resolution=(0, a.grids - 1),
        ups_k_size=a.ups_k,
        ups_preconcat_k_size=a.preconcat_k,
        layers_synthesis=tuple(parse_synthesis_layer(s, 3) for s in a.layers.split(",")),
        flag_common_randomness=a.common_randomness,
    )
    rng = np.random.default_rng(0)
    params = {s.name: (rng.standard_normal(s.shape) * 0.1).astype(np.float32) for s in param_layout(arch)}
    latents = [rng.integers(-3, 4, hw).astype(np.int32) for hw in arch.latent_grid_sizes()]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ti = time.perf_counter()
    import onnxruntime  # noqa: F401  (timed apart: a process pays it once)

    t0 = time.perf_counter()
    model = build_decoder_model_bytes(arch, params)
    t1 = time.perf_counter()
    sess = make_session(model, a.provider, a.threads)
    t2 = time.perf_counter()
    feed = input_feed(arch, latents, common_randomness_grids(arch))
    (out,) = sess.run(["image"], feed)
    t3 = time.perf_counter()
    to_raw_image(out[0], "rgb", 8)
    t4 = time.perf_counter()
    warm = []
    for _ in range(a.runs):
        s = time.perf_counter()
        sess.run(["image"], feed)
        warm.append(time.perf_counter() - s)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    h, w = a.size
    print(f"{h}x{w}, {a.grids} grids, K={a.ups_k}, Kp={a.preconcat_k}, layers {a.layers}, "
          f"{a.threads} thread(s), {a.provider}, model {len(model)} bytes")
    print(f"import onnxruntime {1e3 * (t0 - ti):7.1f} ms")
    print(f"graph build        {1e3 * (t1 - t0):7.1f} ms")
    print(f"session            {1e3 * (t2 - t1):7.1f} ms")
    print(f"first run          {1e3 * (t3 - t2):7.1f} ms   (what a one-shot decode pays)")
    print(f"to code values     {1e3 * (t4 - t3):7.1f} ms")
    print(f"warm run           {1e3 * min(warm):7.1f} ms best, {1e3 * statistics.median(warm):.1f} ms median "
          f"of {a.runs}")
    print(f"peak RSS           {rss / 1024:7.1f} MB   (before the graph: {rss0 / 1024:.1f} MB)")


if __name__ == "__main__":
    main()
