"""Which frames of a video are I, P or B, what each references, and in which
order they are coded.

The encoder trains the frames one after the other in *decoding order*, and the
bitstream carries the frames in that order, so both sides need the same
structure. It is given, as in the reference Cool-chic command line, by:

* ``--n-frames N``: the number of frames;
* ``--intra-pos``: the intra (I) frames, display indices or ranges such as
  ``"0"``, ``"0,16"``, ``"1-8"`` or ``"0-2,8"`` (:func:`parse_positions`);
  ``--intra-period K`` is a shorthand for intra frames at 0, K, 2K, ...
  (:func:`intra_period_positions`);
* ``--p-pos``: the P frames, same syntax.

Rules (:func:`coding_structure`):

* The I and P frames are the *anchors*. An I frame references nothing; a P
  frame references the nearest anchor before it in display order. Frame 0 must
  therefore be intra.
* Every other frame is a B frame between two consecutive anchors ``a < b``,
  coded hierarchically and depth first: the middle ``m = (a + b) // 2``
  references ``(a, b)``, then the same is done in ``[a, m]`` and in
  ``[m, b]``. Its depth is the recursion level: 1 for the middle of an anchor
  interval, 2 for the middles of its two halves, and so on; anchors have
  depth 0.
* Decoding order: the anchors in display order, each one followed right away
  by the B frames between it and the previous anchor. A frame after the last
  anchor has no future reference and cannot be a B frame: it is an error.

Low-delay P, ``--n-frames 9 --intra-pos 0 --p-pos 1-8``::

    I0  P1(0)  P2(1)  P3(2)  P4(3)  P5(4)  P6(5)  P7(6)  P8(7)

Random access, ``--n-frames 9 --intra-pos 0 --p-pos 8``, in decoding order::

    I0  P8(0)  B4(0,8)  B2(0,4)  B1(0,2)  B3(2,4)  B6(4,8)  B5(4,6)  B7(6,8)

A structure read from elsewhere (a bitstream) is validated by
:func:`check_structure`. Pure Python: the decoder side imports it without
torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coolchic.decoder_runtime.arch import FRAME_TYPES, N_REFERENCES
from coolchic.decoder_runtime.errors import ConfigError

_TOKEN = re.compile(r"(\d+)(?:-(\d+))?")


@dataclass(frozen=True)
class FrameSpec:
    """One frame of the structure."""

    display_index: int
    frame_type: str  # "I", "P" or "B"
    refs: tuple[int, ...]  # display indices: () for I, (past,) for P, (past, future) for B
    depth: int  # 0 for I and P; hierarchy level for B (1 = middle of an anchor interval)


def _check_n_frames(n_frames: int) -> None:
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise ConfigError(f"the number of frames (--n-frames) must be at least 1, got {n_frames!r}")


def _check_position(pos: int, n_frames: int, what: str) -> None:
    if isinstance(pos, bool) or not isinstance(pos, int):
        raise ConfigError(f"{what}: position {pos!r} is not an integer")
    if pos < 0:
        raise ConfigError(f"{what}: position {pos} is negative")
    if pos >= n_frames:
        raise ConfigError(f"{what}: position {pos} is out of range for {n_frames} frames (valid: 0 to {n_frames - 1})")


def _format_positions(positions: Sequence[int]) -> str:
    """Sorted positions as ranges, in the syntax of --p-pos: (1, 2, 3, 7) -> "1-3,7"."""
    parts, i = [], 0
    while i < len(positions):
        j = i
        while j + 1 < len(positions) and positions[j + 1] == positions[j] + 1:
            j += 1
        parts.append(str(positions[i]) if i == j else f"{positions[i]}-{positions[j]}")
        i = j + 1
    return ",".join(parts)


def parse_positions(text: str, n_frames: int, what: str) -> tuple[int, ...]:
    """``"0,8,10-12"`` -> ``(0, 8, 10, 11, 12)``: sorted, without duplicates.

    ``what`` (e.g. ``"--p-pos"``) names the option in error messages.
    """
    _check_n_frames(n_frames)
    positions: set[int] = set()
    for token in text.split(","):
        token = token.strip()
        match = _TOKEN.fullmatch(token)
        if match is None:
            # "-3" would otherwise read as a malformed range; say what is wrong.
            if re.fullmatch(r"-\d+", token):
                raise ConfigError(f"{what}: position {token} is negative")
            raise ConfigError(
                f"{what}: cannot parse {token!r} in {text!r}; expected positions such as "
                "'0', '0,16', '1-8' or '0-2,8'"
            )
        start = int(match.group(1))
        end = start if match.group(2) is None else int(match.group(2))
        if end < start:
            raise ConfigError(f"{what}: empty range {token!r} (its start is after its end)")
        for pos in (start, end):
            _check_position(pos, n_frames, what)
        positions.update(range(start, end + 1))
    return tuple(sorted(positions))


def intra_period_positions(n_frames: int, period: int) -> tuple[int, ...]:
    """Intra frames at 0, period, 2 * period, ... below ``n_frames``."""
    _check_n_frames(n_frames)
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ConfigError(f"--intra-period must be at least 1, got {period!r}")
    return tuple(range(0, n_frames, period))


def _hierarchical_b(a: int, b: int, depth: int) -> Iterable[FrameSpec]:
    if b - a < 2:
        return
    m = (a + b) // 2
    yield FrameSpec(m, "B", (a, b), depth)
    yield from _hierarchical_b(a, m, depth + 1)
    yield from _hierarchical_b(m, b, depth + 1)


def coding_structure(n_frames: int, intra_pos: Iterable[int] = (0,), p_pos: Iterable[int] = ()) -> tuple[FrameSpec, ...]:
    """The frames in decoding order (see the module docstring for the rules)."""
    _check_n_frames(n_frames)
    intra, p = set(intra_pos), set(p_pos)
    for positions, what in ((intra, "--intra-pos"), (p, "--p-pos")):
        for pos in positions:
            _check_position(pos, n_frames, what)
    both = sorted(intra & p)
    if both:
        raise ConfigError(f"frame(s) {_format_positions(both)} are in both --intra-pos and --p-pos")
    if 0 not in intra:
        # A P or B frame at 0 would have no earlier frame to reference.
        raise ConfigError("frame 0 must be an intra frame: --intra-pos must contain 0")
    anchors = sorted(intra | p)
    trailing = list(range(anchors[-1] + 1, n_frames))
    if trailing:
        raise ConfigError(
            f"frame(s) {_format_positions(trailing)} come after the last I or P frame ({anchors[-1]}) "
            "and cannot be B frames, which need a future reference: add them to --p-pos or --intra-pos"
        )

    structure: list[FrameSpec] = []
    previous = None
    for anchor in anchors:
        if anchor in intra:
            structure.append(FrameSpec(anchor, "I", (), 0))
        else:
            structure.append(FrameSpec(anchor, "P", (previous,), 0))
        if previous is not None:
            structure.extend(_hierarchical_b(previous, anchor, 1))
        previous = anchor
    return tuple(structure)


def display_order(structure: Iterable[FrameSpec]) -> tuple[FrameSpec, ...]:
    """The same frames sorted by display index."""
    return tuple(sorted(structure, key=lambda f: f.display_index))


def check_structure(structure: Sequence[FrameSpec], n_frames: int) -> None:
    """Raise :class:`ConfigError` unless ``structure`` (in decoding order) is
    one a decoder can follow: every display index 0..n_frames-1 exactly once,
    references decoded before use, 0 / 1 / 2 references for I / P / B, a P
    frame referencing a past frame and a B frame one past and one future frame.
    """
    _check_n_frames(n_frames)
    if len(structure) != n_frames:
        raise ConfigError(f"the coding structure has {len(structure)} frames, expected {n_frames}")
    decoded: set[int] = set()
    for step, frame in enumerate(structure):
        d = frame.display_index
        where = f"frame {step} in decoding order (display index {d!r})"
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < n_frames:
            raise ConfigError(f"{where}: display index out of range 0 to {n_frames - 1}")
        if d in decoded:
            raise ConfigError(f"{where}: display index {d} appears twice")
        if frame.frame_type not in N_REFERENCES:
            raise ConfigError(f"{where}: unknown frame type {frame.frame_type!r}, expected one of {FRAME_TYPES}")
        refs = tuple(frame.refs)
        if len(refs) != N_REFERENCES[frame.frame_type]:
            raise ConfigError(
                f"{where}: {frame.frame_type} frames have {N_REFERENCES[frame.frame_type]} reference(s), got {len(refs)}"
            )
        for r in refs:
            if r not in decoded:
                raise ConfigError(f"{where}: reference {r!r} is not decoded before it")
        if frame.frame_type == "P" and not refs[0] < d:
            raise ConfigError(f"{where}: a P frame references a past frame, got {refs[0]}")
        if frame.frame_type == "B" and not refs[0] < d < refs[1]:
            raise ConfigError(f"{where}: a B frame references one past and one future frame, got {refs}")
        if frame.frame_type == "B" and not (isinstance(frame.depth, int) and frame.depth >= 1):
            raise ConfigError(f"{where}: a B frame has depth at least 1, got {frame.depth!r}")
        if frame.frame_type != "B" and frame.depth != 0:
            raise ConfigError(f"{where}: {frame.frame_type} frames have depth 0, got {frame.depth!r}")
        decoded.add(d)


def max_references_alive(structure: Sequence[FrameSpec]) -> int:
    """The most decoded frames a decoder holds at once, the frame just decoded
    included.

    Frames are output in display order as soon as every earlier display index
    is out; a frame is dropped once it is output and no later frame (in
    decoding order) references it.
    """
    check_structure(structure, len(structure))
    last_use = {f.display_index: -1 for f in structure}
    for step, frame in enumerate(structure):
        for r in frame.refs:
            last_use[r] = step
    alive: set[int] = set()
    next_out, peak = 0, 0
    for step, frame in enumerate(structure):
        alive.add(frame.display_index)
        peak = max(peak, len(alive))
        while next_out in alive:
            next_out += 1
        # Below next_out everything is output; keep what a later frame still needs.
        alive = {d for d in alive if d >= next_out or last_use[d] > step}
    return peak
