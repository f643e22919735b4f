"""Parameter and MAC (multiply-accumulate) counts of a decoder, module by
module, and the ``archi.txt`` table written to the encoder's workdir.

Counts are analytic (from the DecoderArch), so they match what the decoder
runtime executes: the ARM runs once per coded latent value, the synthesis once
per decoded pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from coolchic.decoder_runtime.arch import DecoderArch, param_layout

_FINAL_UPSAMPLING_TAPS = {"nearest": 0, "bilinear": 4, "bicubic": 16}


@dataclass(frozen=True)
class ComplexityRow:
    name: str
    params: str  # parameter count of a module, or shape of a tensor
    macs: Optional[int]


def _fmt(n: float) -> str:
    """fvcore-like short numbers: 611, 1.25K, 0.526M, 0.901G."""
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div * 0.1 and (div != 1e3 or n >= 1000):
            v = n / div
            return f"{v:.3g}{suf}"
    return str(int(n))


def module_macs(arch: DecoderArch) -> Dict[str, int]:
    """MACs of one decoding, per module: arm, ifce, upsampling, final_upsampling, synthesis."""
    h, w = arch.img_size
    grids = arch.coded_grids()
    n_coded = sum(g.h * g.w for g in grids)
    arm_per_value = sum(s.size for s in param_layout(arch) if s.module == "arm" and s.kind == "weight")
    macs = {"arm": arm_per_value * n_coded}

    nf = arch.ifce_features
    # Counted per pixel of the grid that reads the features (9 + E inputs each),
    # as the reference counts them; the runtime computes them once per source pixel.
    macs["ifce"] = sum((9 + len(g.ifce_stack)) * nf * g.h * g.w for g in grids if nf and g.ifce_source >= 0)

    sizes = arch.latent_grid_sizes()
    b = 2 if arch.flag_common_randomness else 1
    n = arch.n_latent_grids
    ups = 0
    for lv in range(n - 1):
        hl, wl = sizes[lv]
        w_coarse = sizes[lv + 1][1]
        channels = b * (n - 1 - lv)
        ups += channels * (arch.ups_k_size // 2) * hl * (w_coarse + wl)
        kp = arch.ups_preconcat_k_size
        ups += b * hl * wl * (2 * kp if kp > 1 else 1)
    macs["upsampling"] = ups

    lo = arch.latent_resolution[0]
    macs["final_upsampling"] = (
        _FINAL_UPSAMPLING_TAPS[arch.final_upsampling_type] * arch.synthesis_in_channels * h * w if lo > 0 else 0
    )

    syn, cin = 0, arch.synthesis_in_channels
    for layer in arch.layers_synthesis:
        syn += layer.out_channels * cin * layer.kernel_size**2
        cin = layer.out_channels
    if arch.linear_stabiliser_synth:
        syn += arch.n_out * arch.synthesis_in_channels
    macs["synthesis"] = syn * h * w
    return macs


def total_mac_per_pixel(arch: DecoderArch) -> float:
    h, w = arch.img_size
    return sum(module_macs(arch).values()) / (h * w)


def complexity_rows(arch: DecoderArch) -> List[ComplexityRow]:
    """Rows of the archi.txt table: model, latent grids, then every module and tensor."""
    h, w = arch.img_size
    grids = arch.coded_grids()
    n_coded = sum(g.h * g.w for g in grids)
    layout = param_layout(arch)
    macs = module_macs(arch)
    n_latent_params = n_coded
    n_net_params = sum(s.size for s in layout)
    rows = [ComplexityRow("model", _fmt(n_latent_params + n_net_params), sum(macs.values()))]

    rows.append(ComplexityRow("latent_grids", _fmt(sum(a * b for a, b in arch.latent_grid_sizes())), None))
    for i, (gh, gw) in enumerate(arch.latent_grid_sizes()):
        rows.append(ComplexityRow(f"latent_grids.{i}", f"(1, 1, {gh}, {gw})", None))
    if arch.hyper_levels:
        hyper = [g for g in grids if g.hyper]
        rows.append(ComplexityRow("hyper_latent_grids", _fmt(sum(g.h * g.w for g in hyper)), None))
        for g in sorted(hyper, key=lambda g: g.latent_index):
            rows.append(ComplexityRow(f"hyper_latent_grids.{g.latent_index}", f"(1, 1, {g.h}, {g.w})", None))

    def group(prefix: str, specs, total_macs: int, per_layer_macs=None):
        rows.append(ComplexityRow(prefix, _fmt(sum(s.size for s in specs)), total_macs))
        layers: Dict[str, list] = {}
        for s in specs:
            layers.setdefault(s.name.rsplit(".", 1)[0], []).append(s)
        for lname, lspecs in layers.items():
            if lname != prefix:
                m = per_layer_macs(lname, lspecs) if per_layer_macs else None
                rows.append(ComplexityRow(lname, _fmt(sum(s.size for s in lspecs)), m))
            for s in lspecs:
                rows.append(ComplexityRow(s.name, str(tuple(s.shape)), None))

    arm = [s for s in layout if s.module == "arm"]
    group("arm", arm, macs["arm"], lambda n, ls: sum(x.size for x in ls if x.kind == "weight") * n_coded)
    if arch.ifce_features:
        group("ifce", [s for s in layout if s.module == "ifce"], macs["ifce"])
    ups = [s for s in layout if s.module == "upsampling"]
    if ups:
        group("upsampling", ups, macs["upsampling"])
    elif arch.n_latent_grids > 1:
        rows.append(ComplexityRow("upsampling (static kernels, not sent)", "0", macs["upsampling"]))
    if macs["final_upsampling"]:
        rows.append(ComplexityRow(f"final_upsampling ({arch.final_upsampling_type})", "0", macs["final_upsampling"]))

    syn_specs = [s for s in layout if s.module == "synthesis"]

    def syn_layer_macs(lname, lspecs):
        wspec = next(x for x in lspecs if x.kind == "weight")
        return wspec.size * h * w

    group("synthesis", syn_specs, macs["synthesis"], syn_layer_macs)
    return rows


def archi_table(arch: DecoderArch) -> str:
    """Markdown table: module | #parameters or shape | #flops (MACs), then MAC per pixel."""
    rows = complexity_rows(arch)
    w0 = max(40, max(len(r.name) for r in rows))
    w1 = max(23, max(len(r.params) for r in rows))
    w2 = 10
    lines = [
        f"| {'module':<{w0}} | {'#parameters or shape':<{w1}} | {'#flops':<{w2}} |",
        f"|:{'-' * (w0 + 1)}|:{'-' * (w1 + 1)}|:{'-' * (w2 + 1)}|",
    ]
    for r in rows:
        m = _fmt(r.macs) if r.macs is not None else ""
        lines.append(f"| {r.name:<{w0}} | {r.params:<{w1}} | {m:<{w2}} |")
    h, w = arch.img_size
    per_mod = module_macs(arch)
    lines.append("")
    lines.append(f"MAC per decoded pixel ({h}x{w}): {sum(per_mod.values()) / (h * w):.1f}")
    for k, v in per_mod.items():
        lines.append(f"  {k:<17} {v / (h * w):8.1f}")
    return "\n".join(lines) + "\n"
