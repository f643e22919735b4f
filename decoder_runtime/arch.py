"""Decoder architecture: the one description of a Cool-chic decoder that the
bitstream carries and that every stage agrees on.

The encoder (torch), the exporter and the runtime all build their networks
from a :class:`DecoderArch`.  This module also owns the facts that both sides
must compute identically: latent grid sizes, the ARM context pattern, the
wavefront coding order and the canonical order of the network parameters.
See ``docs/architecture.md`` for the maths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

from .errors import ConfigError

FRAME_DATA_TYPES = ("rgb", "yuv420", "yuv444", "gray")
FINAL_UPSAMPLING_TYPES = ("nearest", "bilinear", "bicubic")

ARM_CONTEXT_STEP = 8
ARM_CONTEXT_WINDOW = 9  # causal part of a 9x9 window: 40 positions at most
MAX_ARM_CONTEXT = 40
MAX_ARM_HIDDEN_LAYERS = 8
MAX_IFCE_FEATURES = 16
MAX_LATENT_LEVEL = 12  # 2^12 downsampling at most
MAX_IMAGE_SIDE = 1 << 15
MAX_IMAGE_PIXELS = 1 << 26  # 64 Mpixel: far above any image we overfit, far below a DoS
DEFAULT_MAX_PIXELS = 1 << 24  # 16.7 Mpixel: a decoder's default limit; decode(max_pixels=...) raises it
MAX_SYNTH_LAYERS = 16
MAX_SYNTH_CHANNELS = 256
MAX_SYNTH_KERNEL = 9
MAX_UPS_KERNEL = 16


FRAME_TYPES = ("I", "P", "B")
N_REFERENCES = {"I": 0, "P": 1, "B": 2}  # reference frames of each frame type


def inter_channels(frame_type: str) -> int:
    """Synthesis channels after the residue, which ``inter.py`` combines with the
    references: P, the mask alpha and one motion field (2); B, alpha, two
    motion fields (4) and the blend beta: 3 per reference."""
    return 3 * N_REFERENCES[frame_type]


def n_output_channels(frame_data_type: str, frame_type: str = "I") -> int:
    """Channels produced by the synthesis: the frame's planes (1 for gray, 3
    otherwise), then :func:`inter_channels`."""
    planes = 1 if frame_data_type == "gray" else 3
    return planes + inter_channels(frame_type)


@dataclass(frozen=True)
class SynthesisLayer:
    """One synthesis convolution, parsed from ``<out>-<kernel>-<type>-<act>``."""

    out_channels: int
    kernel_size: int
    residual: bool
    relu: bool

    def __post_init__(self) -> None:
        # Checked here, so that no layer outside the rules can exist, whether
        # it comes from a configuration string or from a bitstream header.
        check_synthesis_layer(self.out_channels, self.kernel_size, self.residual, self.relu)

    def __str__(self) -> str:
        return (
            f"{self.out_channels}-{self.kernel_size}-"
            f"{'residual' if self.residual else 'linear'}-{'relu' if self.relu else 'none'}"
        )


def parse_synthesis_layer(text: str, n_out: int) -> SynthesisLayer:
    """Parse one layer string; ``X`` as output size means the frame's channel count."""
    parts = text.strip().split("-")
    if len(parts) != 4:
        raise ConfigError(
            f"synthesis layer {text!r}: expected <out>-<kernel>-<linear|residual>-<relu|none>"
        )
    out_s, k_s, kind, act = parts
    if out_s.upper() == "X":
        out = n_out
    else:
        try:
            out = int(out_s)
        except ValueError:
            raise ConfigError(f"synthesis layer {text!r}: output size {out_s!r} is not an integer or X") from None
    try:
        k = int(k_s)
    except ValueError:
        raise ConfigError(f"synthesis layer {text!r}: kernel size {k_s!r} is not an integer") from None
    if kind not in ("linear", "residual"):
        raise ConfigError(f"synthesis layer {text!r}: type must be linear or residual, not {kind!r}")
    if act not in ("relu", "none"):
        raise ConfigError(f"synthesis layer {text!r}: non-linearity must be relu or none, not {act!r}")
    try:
        return SynthesisLayer(out, k, kind == "residual", act == "relu")
    except ConfigError as e:
        raise ConfigError(f"synthesis layer {text!r}: {e}") from None


def check_synthesis_layer(out_channels: int, kernel_size: int, residual: bool = False, relu: bool = False) -> None:
    """The rules of one synthesis layer; :class:`ConfigError` naming the broken one.

    The one place these rules live: :class:`SynthesisLayer` applies them on
    construction, so the configuration parser and the bitstream reader both
    go through them. An even kernel has no centre (the graph pads by
    ``kernel // 2`` on each side), and the bounds keep every graph the header
    can describe within what the runtime builds and tests.
    """
    if not (isinstance(out_channels, int) and 1 <= out_channels <= MAX_SYNTH_CHANNELS):
        raise ConfigError(f"output size must be an integer in [1, {MAX_SYNTH_CHANNELS}], got {out_channels!r}")
    if not (isinstance(kernel_size, int) and 1 <= kernel_size <= MAX_SYNTH_KERNEL and kernel_size % 2 == 1):
        raise ConfigError(f"kernel size must be odd and in [1, {MAX_SYNTH_KERNEL}], got {kernel_size!r}")
    if not (isinstance(residual, bool) and isinstance(relu, bool)):
        raise ConfigError(f"residual and relu must be booleans, got {residual!r} and {relu!r}")


def grid_size(img_h: int, img_w: int, level: int) -> Tuple[int, int]:
    """Size of a grid downsampled by 2**level: ceil division, so nothing is lost."""
    return (-(-img_h // (1 << level)), -(-img_w // (1 << level)))


@dataclass(frozen=True)
class DecoderArch:
    """Everything a decoder needs to rebuild the networks of one frame.

    Field names follow ``CoolChicEncoderParameter`` of the reference encoder.
    ``layers_synthesis`` holds parsed layers with X already resolved.
    """

    img_size: Tuple[int, int]
    frame_data_type: str = "rgb"
    bitdepth: int = 8
    latent_resolution: Tuple[int, int] = (0, 6)
    hyper_latent_resolution: Optional[Tuple[int, int]] = None
    spatial_context_arm: int = 16
    n_hidden_layers_arm: int = 2
    linear_stabiliser_arm: bool = False
    ifce_resolution: Optional[Tuple[int, int]] = None
    output_feature_ifce: int = 0
    ifce_stack: bool = False
    ups_k_size: int = 8
    ups_preconcat_k_size: int = 7
    static_upsampling_kernel: bool = False
    layers_synthesis: Tuple[SynthesisLayer, ...] = field(default_factory=tuple)
    linear_stabiliser_synth: bool = False
    flag_common_randomness: bool = False
    common_randomness_seed: int = 0
    final_upsampling_type: str = "bicubic"
    frame_type: str = "I"

    def __post_init__(self) -> None:
        validate_arch(self)

    # ---- derived quantities -------------------------------------------------
    @property
    def n_out(self) -> int:
        """Synthesis output channels (``n_output_channels``)."""
        return n_output_channels(self.frame_data_type, self.frame_type)

    @property
    def n_planes(self) -> int:
        """Planes of the decoded image: 1 (gray) or 3."""
        return n_output_channels(self.frame_data_type)

    @property
    def is_inter(self) -> bool:
        return self.frame_type != "I"

    @property
    def latent_levels(self) -> Tuple[int, ...]:
        lo, hi = self.latent_resolution
        return tuple(range(lo, hi + 1))

    @property
    def hyper_levels(self) -> Tuple[int, ...]:
        if self.hyper_latent_resolution is None:
            return ()
        lo, hi = self.hyper_latent_resolution
        return tuple(range(lo, hi + 1))

    @property
    def n_latent_grids(self) -> int:
        return len(self.latent_levels)

    @property
    def synthesis_in_channels(self) -> int:
        return self.n_latent_grids * (2 if self.flag_common_randomness else 1)

    @property
    def ifce_features(self) -> int:
        return self.output_feature_ifce if self.ifce_resolution is not None else 0

    @property
    def arm_input_dim(self) -> int:
        return self.spatial_context_arm + self.ifce_features

    def latent_grid_sizes(self) -> Tuple[Tuple[int, int], ...]:
        h, w = self.img_size
        return tuple(grid_size(h, w, lv) for lv in self.latent_levels)

    def coded_grids(self) -> Tuple["CodedGrid", ...]:
        """All entropy-coded grids in decoding order (see :func:`coded_grids`)."""
        return coded_grids(self)

    def n_latent_values(self) -> int:
        return sum(g.h * g.w for g in self.coded_grids())


@dataclass(frozen=True)
class CodedGrid:
    """One entropy-coded grid: a latent grid (``hyper=False``) or a hyper-latent one."""

    index: int  # position in decoding order
    level: int  # downsampling: the grid is ceil(H / 2**level) x ceil(W / 2**level)
    hyper: bool
    latent_index: int  # index among latent grids (0 = finest) or among hyper grids
    h: int
    w: int
    ifce_source: int  # decoding-order index of the grid that feeds the IFCE, or -1
    ifce_stack: Tuple[int, ...] = ()  # grids read at the source pixel's position (ifce_stack archs)


def coded_grids(arch: DecoderArch) -> Tuple[CodedGrid, ...]:
    """Decoding order: coarsest level first; at equal level hyper-latents first.

    A grid whose level lies in ``ifce_resolution`` takes its IFCE input from the
    grid decoded just before it (the closest coarser one), when there is one.
    """
    h, w = arch.img_size
    entries = [(lv, 0, i) for i, lv in enumerate(arch.hyper_levels)]
    entries += [(lv, 1, i) for i, lv in enumerate(arch.latent_levels)]
    entries.sort(key=lambda e: (-e[0], e[1]))
    out = []
    for pos, (lv, is_latent, idx) in enumerate(entries):
        gh, gw = grid_size(h, w, lv)
        src = -1
        if arch.ifce_resolution is not None and pos > 0:
            a, b = arch.ifce_resolution
            if a <= lv <= b:
                src = pos - 1
        stack = tuple(range(src)) if (src > 0 and arch.ifce_stack) else ()
        out.append(CodedGrid(pos, lv, not is_latent, idx, gh, gw, src, stack))
    return tuple(out)


def ifce_grids(arch: DecoderArch) -> Tuple[CodedGrid, ...]:
    """The grids that have an IFCE, in decoding order: with ``ifce_stack`` the k-th
    one owns the parameters ``ifce.<k>.weight`` and ``ifce.<k>.bias``."""
    return tuple(g for g in arch.coded_grids() if g.ifce_source >= 0)


def synthesis_latents(arch: DecoderArch, coded: Sequence) -> list:
    """The latent grids the synthesis reads (finest first), from values in
    ``coded_grids()`` order; hyper-latents only serve the entropy model."""
    grids = sorted((g for g in arch.coded_grids() if not g.hyper), key=lambda g: g.latent_index)
    return [coded[g.index] for g in grids]


def arm_context_offsets(n_context: int) -> Tuple[Tuple[int, int], ...]:
    """The ``n_context`` causal neighbours (dy, dx) used by the ARM, nearest first.

    Candidates are the causal positions of a 9x9 window (rows above, and the
    left part of the current row), sorted by squared distance, then dy, then dx.
    """
    r = ARM_CONTEXT_WINDOW // 2
    cand = [
        (dy, dx)
        for dy in range(-r, 1)
        for dx in range(-r, r + 1)
        if dy < 0 or dx < 0
    ]
    cand.sort(key=lambda o: (o[0] * o[0] + o[1] * o[1], o[0], o[1]))
    return tuple(cand[:n_context])


def wavefront_slope(n_context: int) -> int:
    """Smallest K such that pixel (i, j) is decoded at step j + K*i after its context.

    A context pixel (i + dy, j + dx) with dy < 0 comes earlier iff dx < K * (-dy).
    """
    k = 1
    for dy, dx in arm_context_offsets(n_context):
        if dy < 0:
            k = max(k, dx // (-dy) + 1)
    return k


def stripe_bounds(n_rows: int, n_substreams: int) -> Tuple[Tuple[int, int], ...]:
    """Rows [start, stop) of each substream's stripe in a grid of ``n_rows`` rows."""
    return tuple(
        ((s * n_rows) // n_substreams, ((s + 1) * n_rows) // n_substreams)
        for s in range(n_substreams)
    )


# ---- canonical parameter layout ---------------------------------------------
@dataclass(frozen=True)
class ParamSpec:
    """One transmitted tensor: its module, name, shape and weight/bias kind."""

    module: str  # "arm", "ifce", "upsampling", "synthesis"
    name: str  # e.g. "arm.mlp.0.weight"; unique across modules
    shape: Tuple[int, ...]
    kind: str  # "weight" or "bias": each kind has its own quantization step

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


MODULE_ORDER = ("arm", "ifce", "upsampling", "synthesis")


def modules_to_send(arch: DecoderArch) -> Tuple[str, ...]:
    mods = ["arm"]
    if arch.ifce_features:
        mods.append("ifce")
    if not arch.static_upsampling_kernel and arch.n_latent_grids > 1:
        mods.append("upsampling")
    mods.append("synthesis")
    return tuple(mods)


def param_layout(arch: DecoderArch) -> Tuple[ParamSpec, ...]:
    """Every transmitted tensor in bitstream order (see docs/architecture.md)."""
    specs = []
    c, d, nl = arch.spatial_context_arm, arch.arm_input_dim, arch.n_hidden_layers_arm
    for i in range(nl):
        specs.append(ParamSpec("arm", f"arm.mlp.{i}.weight", (c, d if i == 0 else c), "weight"))
        specs.append(ParamSpec("arm", f"arm.mlp.{i}.bias", (c,), "bias"))
    specs.append(ParamSpec("arm", f"arm.mlp.{nl}.weight", (2, c if nl else d), "weight"))
    specs.append(ParamSpec("arm", f"arm.mlp.{nl}.bias", (2,), "bias"))
    if arch.linear_stabiliser_arm:
        specs.append(ParamSpec("arm", "arm.stabiliser.weight", (2, d), "weight"))
    if arch.ifce_features and arch.ifce_stack:
        for b, g in enumerate(ifce_grids(arch)):
            specs.append(ParamSpec("ifce", f"ifce.{b}.weight", (arch.ifce_features, 9 + len(g.ifce_stack)), "weight"))
            specs.append(ParamSpec("ifce", f"ifce.{b}.bias", (arch.ifce_features,), "bias"))
    elif arch.ifce_features:
        specs.append(ParamSpec("ifce", "ifce.weight", (arch.ifce_features, 9), "weight"))
        specs.append(ParamSpec("ifce", "ifce.bias", (arch.ifce_features,), "bias"))
    if "upsampling" in modules_to_send(arch):
        kt = arch.ups_k_size // 2
        kp = (arch.ups_preconcat_k_size + 1) // 2
        for lv in range(arch.n_latent_grids - 1):
            specs.append(ParamSpec("upsampling", f"upsampling.tconv.{lv}.weight", (kt,), "weight"))
            specs.append(ParamSpec("upsampling", f"upsampling.preconcat.{lv}.weight", (kp,), "weight"))
    cin = arch.synthesis_in_channels
    for i, layer in enumerate(arch.layers_synthesis):
        k = layer.kernel_size
        specs.append(ParamSpec("synthesis", f"synthesis.layers.{i}.weight", (layer.out_channels, cin, k, k), "weight"))
        specs.append(ParamSpec("synthesis", f"synthesis.layers.{i}.bias", (layer.out_channels,), "bias"))
        cin = layer.out_channels
    if arch.linear_stabiliser_synth:
        specs.append(
            ParamSpec("synthesis", "synthesis.stabiliser.weight", (arch.n_out, arch.synthesis_in_channels, 1, 1), "weight")
        )
    return tuple(specs)


# ---- validation --------------------------------------------------------------
def _check_range(name: str, rng, lo: int, hi: int) -> None:
    if len(rng) != 2 or not all(isinstance(v, int) for v in rng):
        raise ConfigError(f"{name} must be a pair of integers, got {rng!r}")
    a, b = rng
    if not lo <= a <= b <= hi:
        raise ConfigError(f"{name} must satisfy {lo} <= low <= high <= {hi}, got {rng!r}")


def validate_arch(a: DecoderArch) -> None:
    """Raise :class:`ConfigError` naming the first inconsistent field."""
    h, w = a.img_size
    if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE) or h * w > MAX_IMAGE_PIXELS:
        raise ConfigError(
            f"image size {h}x{w} is out of range (each side 1..{MAX_IMAGE_SIDE}, at most {MAX_IMAGE_PIXELS} pixels)"
        )
    if a.frame_data_type not in FRAME_DATA_TYPES:
        raise ConfigError(f"frame_data_type must be one of {FRAME_DATA_TYPES}, got {a.frame_data_type!r}")
    if a.frame_type not in FRAME_TYPES:
        raise ConfigError(f"frame_type must be one of {FRAME_TYPES}, got {a.frame_type!r}")
    if not 8 <= a.bitdepth <= 16:
        raise ConfigError(f"bitdepth must be in [8, 16], got {a.bitdepth}")
    if a.frame_data_type == "yuv420" and (h % 2 or w % 2):
        raise ConfigError(f"yuv420 needs an even image size, got {h}x{w}")
    _check_range("latent_resolution", a.latent_resolution, 0, MAX_LATENT_LEVEL)
    if a.hyper_latent_resolution is not None:
        _check_range("hyper_latent_resolution", a.hyper_latent_resolution, 0, MAX_LATENT_LEVEL)
    c = a.spatial_context_arm
    if not (ARM_CONTEXT_STEP <= c <= MAX_ARM_CONTEXT and c % ARM_CONTEXT_STEP == 0):
        raise ConfigError(
            f"spatial_context_arm must be a multiple of {ARM_CONTEXT_STEP} in "
            f"[{ARM_CONTEXT_STEP}, {MAX_ARM_CONTEXT}], got {c}"
        )
    if not 0 <= a.n_hidden_layers_arm <= MAX_ARM_HIDDEN_LAYERS:
        raise ConfigError(f"n_hidden_layers_arm must be in [0, {MAX_ARM_HIDDEN_LAYERS}], got {a.n_hidden_layers_arm}")
    if a.ifce_resolution is not None:
        _check_range("ifce_resolution", a.ifce_resolution, 0, MAX_LATENT_LEVEL)
        if not 1 <= a.output_feature_ifce <= MAX_IFCE_FEATURES:
            raise ConfigError(
                f"output_feature_ifce must be in [1, {MAX_IFCE_FEATURES}] when ifce_resolution is set, "
                f"got {a.output_feature_ifce}"
            )
        # An IFCE that feeds no grid has no meaning (and, stacked, no layer to
        # transmit): refused here rather than decoded as zero features.
        if not ifce_grids(a):
            lo, hi = a.ifce_resolution
            raise ConfigError(
                f"ifce_resolution {lo}-{hi} holds no coded grid with a coarser one decoded before it: "
                f"the IFCE would feed no grid"
            )
    elif a.ifce_stack:
        raise ConfigError("ifce_stack needs an IFCE (ifce_resolution)")
    k = a.ups_k_size
    if not (4 <= k <= MAX_UPS_KERNEL and k % 2 == 0):
        raise ConfigError(f"ups_k_size (upsampling kernel) must be even, >= 4 and <= {MAX_UPS_KERNEL}, got {k}")
    kp = a.ups_preconcat_k_size
    if not (1 <= kp <= MAX_UPS_KERNEL and kp % 2 == 1):
        raise ConfigError(f"ups_preconcat_k_size must be odd and in [1, {MAX_UPS_KERNEL}], got {kp}")
    if not a.layers_synthesis:
        raise ConfigError("layers_synthesis is empty: the synthesis needs at least one layer")
    if len(a.layers_synthesis) > MAX_SYNTH_LAYERS:
        raise ConfigError(f"layers_synthesis has more than {MAX_SYNTH_LAYERS} layers")
    cin = a.synthesis_in_channels
    for i, layer in enumerate(a.layers_synthesis):
        if not isinstance(layer, SynthesisLayer):
            raise ConfigError(f"synthesis layer {i} is a {type(layer).__name__}, not a SynthesisLayer")
        if layer.residual and layer.out_channels != cin:
            raise ConfigError(
                f"synthesis layer {i} ({layer}) is residual but has {cin} input and "
                f"{layer.out_channels} output channels"
            )
        cin = layer.out_channels
    if cin != a.n_out:
        raise ConfigError(
            f"the last synthesis layer outputs {cin} channels, a {a.frame_data_type} {a.frame_type} frame needs "
            f"{a.n_out} (use X)"
        )
    if a.final_upsampling_type not in FINAL_UPSAMPLING_TYPES:
        raise ConfigError(
            f"final_upsampling_type must be one of {FINAL_UPSAMPLING_TYPES}, got {a.final_upsampling_type!r}"
        )
    if not 0 <= a.common_randomness_seed < (1 << 32):
        raise ConfigError("common_randomness_seed must fit in 32 bits")


def decoder_options(arch: DecoderArch) -> Dict[str, str]:
    """The decoder configuration of ``arch`` in the spelling of ``cfg/dec/*.cfg`` files.

    Given back to the encoder (``--dec-cfg`` options, ``overrides=``), these
    rebuild the same architecture; synthesis widths are numbers, not ``X``.
    """
    lo, hi = arch.latent_resolution

    def rng(r: Optional[Tuple[int, int]]) -> str:
        return "none" if r is None else f"{r[0]}-{r[1]}"

    opts = {
        "arm": f"{arch.spatial_context_arm},{arch.n_hidden_layers_arm}",
        "layers_synthesis": ",".join(str(layer) for layer in arch.layers_synthesis),
    }
    if lo == 0:
        opts["n_ft_per_res"] = ",".join("1" * (hi + 1))
    else:
        opts["latent_resolution"] = rng(arch.latent_resolution)
    opts.update({
        "hyper_latent_resolution": rng(arch.hyper_latent_resolution),
        "ifce_resolution": rng(arch.ifce_resolution),
        "output_feature_ifce": str(arch.output_feature_ifce),
        "ifce_stack": str(arch.ifce_stack).lower(),
        "upsampling_kernel_size": str(arch.ups_k_size),
        "ups_preconcat_k_size": str(arch.ups_preconcat_k_size),
        "static_upsampling_kernel": str(arch.static_upsampling_kernel).lower(),
        "linear_stabiliser_arm": str(arch.linear_stabiliser_arm).lower(),
        "linear_stabiliser_synth": str(arch.linear_stabiliser_synth).lower(),
        "flag_common_randomness": str(arch.flag_common_randomness).lower(),
        "common_randomness_seed": str(arch.common_randomness_seed),
        "final_upsampling_type": arch.final_upsampling_type,
    })
    return opts
