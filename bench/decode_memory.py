"""Benchmark: the decoder's memory bound (decoder_runtime/budget.py) against measured peaks.

    python bench/decode_memory.py [--quick] [--bitstream FILE ...]

For each configuration (the shipped decoders at 512x768 and at the 16.7
Mpixel ``max_pixels`` default, and hostile shapes: wide 3x3 layers that run
on the whole frame, common randomness with a final resize, 16 IFCE features
at the finest level, 9x9 kernels on a single grid) a bitstream is written with
zero parameters and latents (memory does not depend on their values), then
decoded in a fresh process: after a warm-up decode of a tiny stream of the
same architecture (numba, onnxruntime, probability tables loaded), the peak
resident set is reset (``/proc/self/clear_refs``) and the decode's own peak is
``VmHWM - VmRSS before``. ``--bitstream`` measures given files the same way.

Prints one row per case: measured peak, ``estimate_memory`` total, their
ratio. Last line: ``memory_bound_min_ratio=<min estimate/measured> x``; a
ratio below 1 would be a bound that does not bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from coolchic.decoder_runtime.arch import DecoderArch, modules_to_send, parse_synthesis_layer  # noqa: E402
from coolchic.decoder_runtime.budget import estimate_memory, format_bytes  # noqa: E402
from coolchic.decoder_runtime.expgolomb import module_kinds  # noqa: E402

SHIPPED = ("vlop", "lop", "mop", "hop", "vhop")


def shipped_arch(name: str, size) -> DecoderArch:
    """The DecoderArch of a bundled decoder configuration (cfg/dec) at ``size``."""
    from coolchic.encoder.presets import decoder_config_to_param, load_decoder_config

    return decoder_config_to_param(load_decoder_config(name), img_size=size).to_arch("rgb", 8)


def hostile_archs(size):
    def layers(text):
        return tuple(parse_synthesis_layer(s, 3) for s in text.split(","))

    return {
        "wide3x3": DecoderArch(img_size=size, latent_resolution=(0, 4),
                               layers_synthesis=layers("48-3-linear-relu,48-3-residual-relu,X-3-linear-none")),
        "cr_resize": DecoderArch(img_size=size, latent_resolution=(1, 6), flag_common_randomness=True,
                                 final_upsampling_type="bilinear", linear_stabiliser_synth=True,
                                 layers_synthesis=layers("32-1-linear-relu,X-3-linear-none")),
        "ifce16": DecoderArch(img_size=size, latent_resolution=(0, 2), ifce_resolution=(0, 1), output_feature_ifce=16,
                              hyper_latent_resolution=(0, 3), layers_synthesis=layers("X-1-linear-none")),
        "k9_single": DecoderArch(img_size=size, latent_resolution=(0, 0), ups_k_size=16, ups_preconcat_k_size=15,
                                 layers_synthesis=layers("16-9-linear-relu,X-9-linear-none")),
    }


def write_zero_stream(arch: DecoderArch, path: Path) -> None:
    from coolchic.decoder_runtime.arch import param_layout
    from coolchic.export.bitstream_writer import write_bitstream

    q = {p.name: np.zeros(p.shape, np.int32) for p in param_layout(arch)}
    kinds = [(m, k) for m in modules_to_send(arch) for k in module_kinds(arch, m)]
    latents = [np.zeros((g.h, g.w), np.int32) for g in arch.coded_grids()]
    wb = write_bitstream(arch, q, {mk: 8 for mk in kinds}, {mk: 0 for mk in kinds}, latents,
                         n_substreams=2, verify=False)
    path.write_bytes(wb.data)


CHILD = r"""
import sys, json
from coolchic import decoder_runtime
from coolchic.decoder_runtime.bitstream import read_bitstream

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
warm, target = sys.argv[1], sys.argv[2]
decoder_runtime.decode(warm, max_memory=None, max_pixels=1 << 26)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
decoder_runtime.decode(target, max_memory=None, max_pixels=1 << 26)
print(json.dumps({"before": before, "hwm": status("VmHWM")}))
"""


def measure(warm: Path, target: Path) -> int:
    r = subprocess.run([sys.executable, "-c", CHILD, str(warm), str(target)], capture_output=True, text=True,
                       check=True, cwd=REPO)
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return d["hwm"] - d["before"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="512x768 and 1024x1024 only (no 16.7 Mpixel frames)")
    ap.add_argument("--bitstream", type=Path, nargs="*", default=[], help="also measure these files")
    args = ap.parse_args()
    from coolchic.decoder_runtime.bitstream import read_bitstream

    cases = []
    for name in SHIPPED:
        cases.append((f"{name} 512x768", shipped_arch(name, (512, 768))))
    for name, arch in hostile_archs((1024, 1024)).items():
        cases.append((f"{name} 1024x1024", arch))
    if not args.quick:
        for name in ("mop", "vhop"):
            cases.append((f"{name} 4096x4096", shipped_arch(name, (4096, 4096))))
        for name, arch in hostile_archs((2048, 2048)).items():
            cases.append((f"{name} 2048x2048", arch))
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for i, (label, arch) in enumerate(cases):
            target, warm = tmp / f"{i}.cool", tmp / f"{i}_warm.cool"
            write_zero_stream(arch, target)
            write_zero_stream(dataclasses.replace(arch, img_size=(16, 16)), warm)
            rows.append((label, warm, target))
        for path in args.bitstream:
            arch = read_bitstream(path.read_bytes(), max_pixels=None).arch
            warm = tmp / f"{path.stem}_warm.cool"
            write_zero_stream(dataclasses.replace(arch, img_size=(16, 16)), warm)
            rows.append((str(path), warm, path))
        print(f"{'case':<24} {'measured':>10} {'estimate':>10} {'ratio':>6}")
        for label, warm, target in rows:
            data = target.read_bytes()
            est = estimate_memory(read_bitstream(data, max_pixels=None).arch, len(data))
            peak = measure(warm, target)
            ratios.append(est.total / peak)
            print(f"{label:<24} {format_bytes(peak):>10} {format_bytes(est.total):>10} {est.total / peak:>6.2f}",
                  flush=True)
    print(f"memory_bound_min_ratio={min(ratios):.2f} x")


if __name__ == "__main__":
    main()
