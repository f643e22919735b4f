"""Structure-aware mutation of coolchic bitstreams: past the CRC, into the decoder.

A byte-level fuzzer's mutants all die at the CRC-32 check. This module splits a
bitstream into its sections (docs/bitstream.md): the header as a list of
fields, the parameter section, the substream lengths and the substreams;
mutates fields or bytes inside them; and joins the result with the CRC
recomputed, so that every mutant reaches the parser proper, and many reach
the parameter decoder, the latent decoder and onnxruntime.

The mutation operators (:data:`OPERATORS`) take a ``draw(kind, *args)``
callable that supplies every random choice, so the same operators serve a
seeded numpy generator (:class:`RngDraw`, for the fast test in
``tests/test_bitstream.py``) and hypothesis (``fuzz/fuzz_decode.py``).

An operator may rewrite the header's architecture and regenerate a parameter
section that matches it, field counts included: such a mutant passes every
check a bitstream's own consistency allows, so only the architectural rules
(``arch.py``) and the resource limits stand between it and the graph.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from coolchic.decoder_runtime.arch import DecoderArch, SynthesisLayer, modules_to_send, param_layout, parse_synthesis_layer
from coolchic.decoder_runtime.bitstream import MAGIC
from coolchic.decoder_runtime.expgolomb import module_kinds
from coolchic.decoder_runtime.onnx_proto import leb128

# ---- sections ----------------------------------------------------------------


@dataclass
class Field:
    """One header field: ``kind`` is ``"u8"`` or ``"varint"``; ``value`` is what gets written."""

    name: str
    kind: str
    value: int


@dataclass
class Sections:
    """A bitstream cut at its sections' boundaries (``join`` puts it back together)."""

    version: int
    fields: List[Field]
    params: bytes
    lengths: List[int]  # substream lengths as written (S - 1 of them when well formed)
    substreams: List[bytes]
    fix_lengths: bool = True  # join() rewrites the parameter and substream lengths
    crc: Optional[int] = None  # None: recompute
    tail: bytes = b""  # bytes after the last substream, before the CRC (garbage)
    param_length: Optional[int] = None  # written instead of len(params) when fix_lengths is False


class _Cursor:
    def __init__(self, data: bytes, pos: int, end: int):
        self.data, self.pos, self.end = data, pos, end

    def u8(self) -> int:
        if self.pos >= self.end:
            raise ValueError("truncated")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def varint(self) -> int:
        v, shift = 0, 0
        while True:
            b = self.u8()
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7


def split(data: bytes) -> Sections:
    """Sections of a well-formed bitstream (ValueError on one this cannot cut)."""
    if data[:2] != MAGIC:
        raise ValueError("not a coolchic bitstream")
    c = _Cursor(data, 3, len(data) - 4)
    fields: List[Field] = []

    def f(name: str, kind: str = "varint") -> int:
        v = c.u8() if kind == "u8" else c.varint()
        fields.append(Field(name, kind, v))
        return v

    f("height-1")
    f("width-1")
    f("format", "u8")
    f("latent lo")
    f("latent hi")
    if f("hyper"):
        f("hyper hi")
    f("arm context/8")
    f("arm hidden")
    if f("ifce"):
        f("ifce hi")
        f("ifce features")
    f("ups kernel")
    f("preconcat kernel")
    flags = f("flags", "u8")
    if flags & 4:
        f("seed")
    n_layers = f("n layers")
    for i in range(n_layers):
        f(f"layer {i} out")
        f(f"layer {i} kernel")
    n_sub = f("n substreams")
    n_param = c.varint()
    params = data[c.pos:c.pos + n_param]
    c.pos += n_param
    lengths = [c.varint() for _ in range(n_sub - 1)]
    subs = []
    for n in lengths:
        subs.append(data[c.pos:c.pos + n])
        c.pos += n
    subs.append(data[c.pos:c.end])
    return Sections(data[2], fields, params, lengths, subs)


def join(s: Sections) -> bytes:
    """The bytes of ``s``, with the CRC recomputed unless ``s.crc`` is set."""
    body = bytearray(MAGIC)
    body.append(s.version & 0xFF)
    for f in s.fields:
        body += bytes([f.value & 0xFF]) if f.kind == "u8" else leb128(f.value)
    if s.fix_lengths:
        body += leb128(len(s.params)) + s.params
        for sub in s.substreams[:-1]:
            body += leb128(len(sub))
    else:
        body += leb128(len(s.params) if s.param_length is None else s.param_length) + s.params
        for n in s.lengths:
            body += leb128(n)
    for sub in s.substreams:
        body += sub
    body += s.tail
    crc = zlib.crc32(bytes(body)) if s.crc is None else s.crc
    return bytes(body) + (crc & 0xFFFFFFFF).to_bytes(4, "little")


# ---- architecture <-> header fields, without validation ----------------------


def unchecked_arch(**kw) -> DecoderArch:
    """A DecoderArch built without its rules, as a hostile header describes one.

    Only :func:`param_layout` and friends are applied to it, to count the
    parameters such a header announces; the decoder itself never sees it.
    """
    arch = object.__new__(DecoderArch)
    for f in dataclasses.fields(DecoderArch):
        if f.name in kw:
            value = kw[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # img_size has no default: callers pass it
        object.__setattr__(arch, f.name, value)
    return arch


def unchecked_layer(out: int, kernel: int, residual: bool, relu: bool) -> SynthesisLayer:
    layer = object.__new__(SynthesisLayer)
    for name, v in (("out_channels", out), ("kernel_size", kernel), ("residual", residual), ("relu", relu)):
        object.__setattr__(layer, name, v)
    return layer


def arch_of_fields(fields: Sequence[Field]) -> DecoderArch:
    """The (unchecked) architecture a header's fields describe; ValueError if they do not parse."""
    v = {}
    layers = []
    for f in fields:
        v[f.name] = f.value
    fmt, flags = v["format"], v["flags"]
    n = v["n layers"]
    for i in range(n):
        packed = v[f"layer {i} kernel"]
        layers.append(unchecked_layer(v[f"layer {i} out"], packed >> 2, bool(packed & 1), bool(packed & 2)))
    fdts = ("rgb", "yuv420", "yuv444", "gray")
    return unchecked_arch(
        img_size=(v["height-1"] + 1, v["width-1"] + 1),
        frame_data_type=fdts[(fmt >> 4) & 3],
        bitdepth=(fmt & 15) + 8,
        latent_resolution=(v["latent lo"], v["latent hi"]),
        hyper_latent_resolution=(v["hyper"] - 1, v["hyper hi"]) if v.get("hyper") else None,
        spatial_context_arm=8 * v["arm context/8"],
        n_hidden_layers_arm=v["arm hidden"],
        linear_stabiliser_arm=bool(flags & 1),
        ifce_resolution=(v["ifce"] - 1, v["ifce hi"]) if v.get("ifce") else None,
        output_feature_ifce=v.get("ifce features", 0) if v.get("ifce") else 0,
        ifce_stack=bool(flags & 0x40),
        ups_k_size=v["ups kernel"],
        ups_preconcat_k_size=v["preconcat kernel"],
        static_upsampling_kernel=bool(flags & 8),
        layers_synthesis=tuple(layers),
        linear_stabiliser_synth=bool(flags & 2),
        flag_common_randomness=bool(flags & 4),
        common_randomness_seed=v.get("seed", 0),
        final_upsampling_type=("nearest", "bilinear", "bicubic", "bicubic")[(flags >> 4) & 3],
    )


def fields_of_arch(a: DecoderArch, n_sub: int) -> List[Field]:
    """Header fields of an (unchecked) architecture, as the writer lays them out."""
    fdts = ("rgb", "yuv420", "yuv444", "gray")
    fins = ("nearest", "bilinear", "bicubic")
    out = [Field("height-1", "varint", a.img_size[0] - 1), Field("width-1", "varint", a.img_size[1] - 1),
           Field("format", "u8", ((a.bitdepth - 8) & 15) | fdts.index(a.frame_data_type) << 4),
           Field("latent lo", "varint", a.latent_resolution[0]), Field("latent hi", "varint", a.latent_resolution[1])]
    if a.hyper_latent_resolution is None:
        out.append(Field("hyper", "varint", 0))
    else:
        out += [Field("hyper", "varint", a.hyper_latent_resolution[0] + 1),
                Field("hyper hi", "varint", a.hyper_latent_resolution[1])]
    out += [Field("arm context/8", "varint", a.spatial_context_arm // 8),
            Field("arm hidden", "varint", a.n_hidden_layers_arm)]
    if a.ifce_resolution is None:
        out.append(Field("ifce", "varint", 0))
    else:
        out += [Field("ifce", "varint", a.ifce_resolution[0] + 1), Field("ifce hi", "varint", a.ifce_resolution[1]),
                Field("ifce features", "varint", a.output_feature_ifce)]
    flags = (int(a.linear_stabiliser_arm) | int(a.linear_stabiliser_synth) << 1 | int(a.flag_common_randomness) << 2
             | int(a.static_upsampling_kernel) << 3 | fins.index(a.final_upsampling_type) << 4
             | int(a.ifce_stack) << 6)
    out += [Field("ups kernel", "varint", a.ups_k_size), Field("preconcat kernel", "varint", a.ups_preconcat_k_size),
            Field("flags", "u8", flags)]
    if a.flag_common_randomness:
        out.append(Field("seed", "varint", a.common_randomness_seed))
    out.append(Field("n layers", "varint", len(a.layers_synthesis)))
    for i, layer in enumerate(a.layers_synthesis):
        out += [Field(f"layer {i} out", "varint", layer.out_channels),
                Field(f"layer {i} kernel", "varint", layer.kernel_size << 2 | int(layer.residual) | int(layer.relu) << 1)]
    out.append(Field("n substreams", "varint", n_sub))
    return out


# ---- parameter sections --------------------------------------------------------


class BitWriter:
    """MSB-first bits into bytes, zero padded (the parameter section's packing)."""

    def __init__(self) -> None:
        self.parts: List[str] = []  # bit strings: linear time, where shifting one big int is quadratic

    def write(self, value: int, nbits: int) -> None:
        if nbits:
            self.parts.append(format(value & ((1 << nbits) - 1), f"0{nbits}b"))

    def getvalue(self) -> bytes:
        bits = "".join(self.parts)
        bits += "0" * ((-len(bits)) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


MAX_REGEN_PARAMS = 200_000  # regenerating a section beyond this costs more than it finds


def _countable(a: DecoderArch) -> bool:
    """Whether the layout of an unchecked architecture is cheap to list (a mutated
    field can announce 2^35 latent levels: listing their tensors would never end)."""
    try:
        lo, hi = a.latent_resolution
        return (hi - lo <= 64 and len(a.layers_synthesis) <= 64 and a.n_hidden_layers_arm <= 64
                and a.spatial_context_arm <= 1024 and a.output_feature_ifce <= 1024
                and all(layer.out_channels <= 4096 and layer.kernel_size <= 64 for layer in a.layers_synthesis))
    except Exception:  # fields mutated beyond what an architecture can be
        return False


def field_sizes(arch: DecoderArch) -> Optional[List[int]]:
    """Values per (module, kind) field of the parameter section; None where the layout cannot be counted."""
    if not _countable(arch):
        return None
    try:
        specs = param_layout(arch)
        sizes = []
        for module in modules_to_send(arch):
            for kind in module_kinds(arch, module):
                sizes.append(sum(p.size for p in specs if p.module == module and p.kind == kind))
    except Exception:  # an arch beyond the rules may break the layout's arithmetic
        return None
    if any(s < 0 for s in sizes):
        return None
    return sizes


def pack_codes(values: np.ndarray, nbits: np.ndarray) -> bytes:
    """Concatenate ``values[i]`` written on ``nbits[i]`` bits (MSB first), zero padded to a byte."""
    values = np.asarray(values, np.int64)
    nbits = np.asarray(nbits, np.int64)
    width = int(nbits.max()) if nbits.size else 0
    if width == 0:
        return b""
    pos = np.arange(width)
    # Bit j of a code (j < nbits) is bit nbits-1-j of its value.
    shifts = np.clip(nbits[:, None] - 1 - pos[None, :], 0, 62)
    bits = (values[:, None] >> shifts) & 1
    return np.packbits(bits[pos[None, :] < nbits[:, None]].astype(np.uint8)).tobytes()


def zero_param_section(sizes: Sequence[int], shift: int = 8) -> bytes:
    """A well-formed parameter section of zeros (order 0: one bit a value) with ``sizes[f]`` values per field."""
    vals, widths = [], []
    for n in sizes:
        vals += [shift << 4, *([1] * n)]
        widths += [9, *([1] * n)]
    return pack_codes(np.array(vals), np.array(widths))


def param_section(draw: "Draw", sizes: Sequence[int]) -> bytes:
    """A parameter section with ``sizes[f]`` values per field: shifts, orders and values drawn.

    Values come in bulk from a generator seeded by one draw (a draw per value
    would cost more than the decode it feeds).
    """
    rng = np.random.default_rng(draw("int", 0, (1 << 32) - 1))
    vals, widths = [], []
    for n in sizes:
        shift = draw("int", 0, 16) if draw("chance", 0.9) else draw("int", 0, 31)
        order = draw("int", 0, 6) if draw("chance", 0.9) else draw("int", 0, 15)
        vals.append(np.array([shift << 4 | order]))
        widths.append(np.array([9]))
        # Mostly values a trained model has; now and then beyond the format's bound.
        style = "huge" if draw("chance", 0.02) else draw("choice", ("small", "small", "small", "zero", "wide"))
        bound = {"small": 40, "zero": 0, "wide": 32767, "huge": 40000}[style]  # huge: beyond the format's 32767
        v = rng.integers(-bound, bound + 1, n)
        x = np.abs(v) + (1 << order)
        length = np.frexp(x.astype(np.float64))[1]  # bit length of x
        code, width = x, 2 * length - order - 1  # length - order - 1 zeros, then the length bits of x
        sign = v != 0
        vals.append(np.where(sign, (code << 1) | (v < 0), code))
        widths.append(width + sign)
    if not vals:
        return b""
    return pack_codes(np.concatenate(vals), np.concatenate(widths))


# ---- random choices ------------------------------------------------------------

Draw = Callable[..., object]


class RngDraw:
    """``draw(kind, *args)`` on a seeded numpy generator.

    Kinds: ``int(lo, hi)`` inclusive; ``chance(p)``; ``choice(seq)``;
    ``bytes(n)``; ``interesting(max)`` boundary-biased integers.
    """

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, kind: str, *args):
        r = self.rng
        if kind == "int":
            lo, hi = args
            return int(r.integers(lo, hi + 1))
        if kind == "chance":
            return bool(r.random() < args[0])
        if kind == "choice":
            seq = args[0]
            return seq[int(r.integers(0, len(seq)))]
        if kind == "bytes":
            return r.integers(0, 256, args[0], dtype=np.uint8).tobytes()
        if kind == "interesting":
            return interesting(self, args[0])
        raise ValueError(kind)


INTERESTING = (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 15, 16, 17, 31, 32, 40, 63, 64, 127, 128, 255, 256, 257,
               1023, 4095, 16383, 32767, 32768, 65535, (1 << 21) - 1, (1 << 28) - 1, (1 << 32) - 1, 1 << 32,
               (1 << 35) - 1)


def interesting(draw: Draw, hi: int) -> int:
    """Boundary values most of the time, else uniform in [0, hi]."""
    if draw("chance", 0.7):
        return draw("choice", INTERESTING)
    return draw("int", 0, hi)


# ---- mutation operators --------------------------------------------------------


def _mut_bytes(draw: Draw, b: bytes) -> bytes:
    """Havoc on a byte string: flips, overwrites, truncation, insertion, duplication."""
    b = bytearray(b)
    op = draw("choice", ("flip", "set", "truncate", "insert", "dup", "zero", "ff"))
    if op == "truncate":
        return bytes(b[: draw("int", 0, len(b))])
    if op == "insert":
        i = draw("int", 0, len(b))
        return bytes(b[:i]) + draw("bytes", draw("int", 1, 16)) + bytes(b[i:])
    if op == "dup":
        return bytes(b) + bytes(b[: draw("int", 0, len(b))])
    if not b:
        return draw("bytes", draw("int", 1, 8))
    for _ in range(draw("int", 1, 4)):
        i = draw("int", 0, len(b) - 1)
        if op == "flip":
            b[i] ^= 1 << draw("int", 0, 7)
        elif op == "set":
            b[i] = draw("int", 0, 255)
        elif op == "zero":
            b[i:] = bytes(len(b) - i)
        else:
            b[i] = 0xFF
    return bytes(b)


def op_header_field(s: Sections, draw: Draw) -> None:
    """One header field set to a boundary or random value (later fields keep their bytes)."""
    f = draw("choice", s.fields)
    if f.kind == "u8":
        f.value = draw("int", 0, 255) if draw("chance", 0.5) else f.value ^ (1 << draw("int", 0, 7))
    elif draw("chance", 0.3):
        f.value = max(0, f.value + draw("int", -2, 2))
    else:
        f.value = draw("interesting", 1 << 16)


def _regen_params(s: Sections, draw: Draw) -> None:
    try:
        sizes = field_sizes(arch_of_fields(s.fields))
    except Exception:  # fields mutated beyond what an architecture can be
        sizes = None
    if sizes is not None and sum(sizes) <= MAX_REGEN_PARAMS:
        s.params = param_section(draw, sizes)
    elif draw("chance", 0.5):
        s.params = draw("bytes", draw("int", 0, 64))


def op_architecture(s: Sections, draw: Draw) -> None:
    """Rewrite one architectural choice and regenerate a parameter section that matches it.

    The mutant is consistent in every way a file can be (field counts,
    section length, CRC): only the architectural rules can refuse it.
    """
    try:
        a = arch_of_fields(s.fields)
    except Exception:  # fields mutated beyond what an architecture can be
        return op_header_field(s, draw)
    layers = list(a.layers_synthesis)
    what = draw("choice", ("kernel", "width", "layer_flags", "add_layer", "drop_layer", "latent", "hyper", "ifce",
                           "ups", "flags", "size", "format", "arm", "seed"))
    kw = {}
    if what in ("kernel", "width", "layer_flags") and layers:
        i = draw("int", 0, len(layers) - 1)
        l0 = layers[i]
        if what == "kernel":
            k = draw("choice", (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 15, 40, 63))
            layers[i] = unchecked_layer(l0.out_channels, k, l0.residual, l0.relu)
        elif what == "width":
            layers[i] = unchecked_layer(draw("choice", (1, 2, 3, 4, 8, 16, 33, 64, 255, 256, 257)), l0.kernel_size,
                                        l0.residual, l0.relu)
        else:
            layers[i] = unchecked_layer(l0.out_channels, l0.kernel_size, draw("chance", 0.5), draw("chance", 0.5))
        kw["layers_synthesis"] = tuple(layers)
    elif what == "add_layer":
        i = draw("int", 0, len(layers))
        layers.insert(i, unchecked_layer(draw("choice", (1, 3, 8, 16)), draw("choice", (1, 3, 5, 2)),
                                         draw("chance", 0.3), draw("chance", 0.5)))
        kw["layers_synthesis"] = tuple(layers)
    elif what == "drop_layer" and layers:
        del layers[draw("int", 0, len(layers) - 1)]
        kw["layers_synthesis"] = tuple(layers)
    elif what == "latent":
        lo = draw("int", 0, 13)
        kw["latent_resolution"] = (lo, draw("int", max(0, lo - 1), 13))
    elif what == "hyper":
        kw["hyper_latent_resolution"] = None if draw("chance", 0.3) else (draw("int", 0, 12), draw("int", 0, 13))
    elif what == "ifce":
        if draw("chance", 0.3):
            kw["ifce_resolution"], kw["output_feature_ifce"] = None, 0
        else:
            kw["ifce_resolution"] = (draw("int", 0, 12), draw("int", 0, 13))
            kw["output_feature_ifce"] = draw("int", 0, 17)
    elif what == "ups":
        kw["ups_k_size"] = draw("int", 0, 18)
        kw["ups_preconcat_k_size"] = draw("int", 0, 17)
    elif what == "flags":
        for name in ("linear_stabiliser_arm", "linear_stabiliser_synth", "static_upsampling_kernel",
                     "flag_common_randomness"):
            if draw("chance", 0.3):
                kw[name] = not getattr(a, name)
        kw["final_upsampling_type"] = draw("choice", ("nearest", "bilinear", "bicubic"))
    elif what == "size":
        h, w = a.img_size
        kw["img_size"] = (max(1, draw("choice", (1, 2, 3, h - 1, h + 1, 2 * h, 64, 65, 4097)) or 1),
                          max(1, draw("choice", (1, 2, 3, w - 1, w + 1, 2 * w, 64, 65, 4097)) or 1))
    elif what == "format":
        kw["frame_data_type"] = draw("choice", ("rgb", "yuv420", "yuv444", "gray"))
        kw["bitdepth"] = draw("int", 8, 23)
    elif what == "arm":
        kw["spatial_context_arm"] = 8 * draw("int", 0, 6)
        kw["n_hidden_layers_arm"] = draw("int", 0, 9)
    else:
        kw["flag_common_randomness"] = True
        kw["common_randomness_seed"] = draw("interesting", (1 << 32) - 1)
    b = unchecked_arch(**{**{f.name: getattr(a, f.name) for f in dataclasses.fields(a)}, **kw})
    n_sub = next(f.value for f in s.fields if f.name == "n substreams")
    s.fields = fields_of_arch(b, n_sub)
    _regen_params(s, draw)


def op_params(s: Sections, draw: Draw) -> None:
    """The parameter section: havoc on its bytes, or values regenerated for the same architecture."""
    if draw("chance", 0.5):
        s.params = _mut_bytes(draw, s.params)
    else:
        _regen_params(s, draw)


def op_substreams(s: Sections, draw: Draw) -> None:
    """Substreams: havoc on one, random content, swap, split or merge (the count field follows)."""
    what = draw("choice", ("havoc", "havoc", "random", "swap", "split", "merge", "empty"))
    i = draw("int", 0, len(s.substreams) - 1)
    subs = list(s.substreams)
    if what == "havoc":
        subs[i] = _mut_bytes(draw, subs[i])
    elif what == "random":
        subs[i] = draw("bytes", draw("int", 0, max(1, 2 * len(subs[i]))))
    elif what == "swap" and len(subs) > 1:
        j = draw("int", 0, len(subs) - 1)
        subs[i], subs[j] = subs[j], subs[i]
    elif what == "split":
        cut = draw("int", 0, len(subs[i]))
        subs[i:i + 1] = [subs[i][:cut], subs[i][cut:]]
    elif what == "merge" and len(subs) > 1:
        subs[0:2] = [subs[0] + subs[1]]
    elif what == "empty":
        subs[i] = b""
    s.substreams = subs
    for f in s.fields:
        if f.name == "n substreams":
            f.value = len(subs)


def op_framing(s: Sections, draw: Draw) -> None:
    """Lengths that lie: the parameter length, a substream length, trailing garbage, or the CRC."""
    what = draw("choice", ("param_len", "sub_len", "tail", "crc"))
    if what == "param_len":
        s.fix_lengths = False
        s.lengths = [len(x) for x in s.substreams[:-1]]
        s.param_length = max(0, len(s.params) + draw("int", -3, 3)) if draw("chance", 0.5) else draw(
            "interesting", 1 << 20)
    elif what == "sub_len":
        s.fix_lengths = False
        s.lengths = [len(x) for x in s.substreams[:-1]]
        if s.lengths:
            j = draw("int", 0, len(s.lengths) - 1)
            s.lengths[j] = draw("interesting", 1 << 16)
    elif what == "tail":
        s.tail = draw("bytes", draw("int", 1, 32))
    else:
        s.crc = draw("int", 0, (1 << 32) - 1)


OPERATORS: Dict[str, Callable[[Sections, Draw], None]] = {
    "header_field": op_header_field,
    "architecture": op_architecture,
    "params": op_params,
    "substreams": op_substreams,
    "framing": op_framing,
}
# Architecture rewrites reach deepest (past every consistency check): weigh them up.
OPERATOR_WEIGHTS = {"header_field": 2, "architecture": 3, "params": 2, "substreams": 3, "framing": 1}
_OPERATOR_LIST = tuple(name for name, w in OPERATOR_WEIGHTS.items() for _ in range(w))


def mutate(data: bytes, draw: Draw, max_ops: int = 3) -> Tuple[bytes, Tuple[str, ...]]:
    """A mutant of a well-formed bitstream and the names of the operators applied."""
    s = split(data)
    names = []
    for _ in range(draw("int", 1, max_ops)):
        name = draw("choice", _OPERATOR_LIST)
        OPERATORS[name](s, draw)
        names.append(name)
    return join(s), tuple(names)


# ---- seeds ---------------------------------------------------------------------


def seed_archs() -> Dict[str, DecoderArch]:
    """Small architectures covering the format's options (one bitstream each seeds the fuzzer)."""
    def layers(text: str, n_out: int = 3):
        return tuple(parse_synthesis_layer(t, n_out) for t in text.split(","))

    mop = "16-1-linear-relu,X-1-linear-none,X-3-residual-relu,X-3-residual-none"
    return {
        "mop_ifce_hyper_cr": DecoderArch(img_size=(20, 36), latent_resolution=(0, 3), hyper_latent_resolution=(2, 3),
                                         ifce_resolution=(0, 1), output_feature_ifce=2, linear_stabiliser_arm=True,
                                         flag_common_randomness=True, common_randomness_seed=7,
                                         layers_synthesis=layers(mop)),
        "yuv420_10b_lo1": DecoderArch(img_size=(16, 24), frame_data_type="yuv420", bitdepth=10,
                                      latent_resolution=(1, 3), final_upsampling_type="bilinear",
                                      layers_synthesis=layers("8-3-linear-relu,X-1-linear-none")),
        "gray_static_nearest": DecoderArch(img_size=(13, 9), frame_data_type="gray", latent_resolution=(1, 2),
                                           static_upsampling_kernel=True, final_upsampling_type="nearest",
                                           spatial_context_arm=8, n_hidden_layers_arm=0,
                                           linear_stabiliser_synth=True, layers_synthesis=layers("X-5-linear-none", 1)),
        "single_grid_k9": DecoderArch(img_size=(7, 11), latent_resolution=(0, 0), spatial_context_arm=40,
                                      n_hidden_layers_arm=1, ups_k_size=16, ups_preconcat_k_size=15,
                                      layers_synthesis=layers("4-9-linear-relu,X-1-linear-none")),
        "stripes_70rows": DecoderArch(img_size=(70, 12), latent_resolution=(0, 2), ifce_resolution=(0, 0),
                                      output_feature_ifce=1, layers_synthesis=layers(mop)),
        "ifce_stack_hyper": DecoderArch(img_size=(24, 40), latent_resolution=(0, 3), hyper_latent_resolution=(1, 3),
                                        ifce_resolution=(0, 2), output_feature_ifce=3, ifce_stack=True,
                                        layers_synthesis=layers(mop)),
    }


def random_int_model(arch: DecoderArch, seed: int):
    """Small integer parameters and Laplace latents (a decodable, non-trivial stream)."""
    rng = np.random.default_rng(seed)
    q = {p.name: rng.integers(-24, 25, p.shape).astype(np.int32) for p in param_layout(arch)}
    kinds = [(m, k) for m in modules_to_send(arch) for k in module_kinds(arch, m)]
    latents = [np.round(rng.laplace(0.0, 1.5, (g.h, g.w))).astype(np.int32) for g in arch.coded_grids()]
    return q, {mk: 6 for mk in kinds}, {mk: 2 for mk in kinds}, latents


def seed_bitstreams(n_substreams: int = 2) -> Dict[str, bytes]:
    """One well-formed bitstream per :func:`seed_archs` entry (written by the exporter)."""
    from coolchic.export.bitstream_writer import write_bitstream

    out = {}
    for i, (name, arch) in enumerate(seed_archs().items()):
        q, shifts, expgol, latents = random_int_model(arch, i)
        out[name] = write_bitstream(arch, q, shifts, expgol, latents, n_substreams).data
    return out
