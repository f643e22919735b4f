"""The I/P/B coding structure (encoder/coding_structure.py): decoding orders,
references and depths written out by hand, and every error a user can cause."""

import dataclasses

import pytest

from coolchic.decoder_runtime.errors import ConfigError
from coolchic.decoder_runtime.coding_structure import (
    FrameSpec,
    check_structure,
    coding_structure,
    display_order,
    intra_period_positions,
    max_references_alive,
    parse_positions,
)


def _summary(structure):
    """(type + display index, refs) in decoding order: compact to compare."""
    return [(f"{f.frame_type}{f.display_index}", f.refs) for f in structure]


RANDOM_ACCESS_9 = [
    ("I0", ()),
    ("P8", (0,)),
    ("B4", (0, 8)),
    ("B2", (0, 4)),
    ("B1", (0, 2)),
    ("B3", (2, 4)),
    ("B6", (4, 8)),
    ("B5", (4, 6)),
    ("B7", (6, 8)),
]


def test_low_delay_p():
    s = coding_structure(9, (0,), parse_positions("1-8", 9, "--p-pos"))
    assert _summary(s) == [("I0", ())] + [(f"P{i}", (i - 1,)) for i in range(1, 9)]
    assert all(f.depth == 0 for f in s)
    check_structure(s, 9)


def test_random_access_9():
    s = coding_structure(9, (0,), (8,))
    assert _summary(s) == RANDOM_ACCESS_9
    check_structure(s, 9)


def test_random_access_depths():
    s = coding_structure(9, (0,), (8,))
    assert {f.display_index: f.depth for f in s} == {0: 0, 8: 0, 4: 1, 2: 2, 6: 2, 1: 3, 3: 3, 5: 3, 7: 3}


def test_random_access_17():
    s = coding_structure(17, parse_positions("0", 17, "--intra-pos"), parse_positions("8,16", 17, "--p-pos"))
    assert _summary(s) == RANDOM_ACCESS_9 + [
        ("P16", (8,)),
        ("B12", (8, 16)),
        ("B10", (8, 12)),
        ("B9", (8, 10)),
        ("B11", (10, 12)),
        ("B14", (12, 16)),
        ("B13", (12, 14)),
        ("B15", (14, 16)),
    ]
    check_structure(s, 17)


def test_intra_period_with_p_positions():
    intra = intra_period_positions(11, 4)
    assert intra == (0, 4, 8)
    s = coding_structure(11, intra, (2, 6, 10))
    # A P frame references the nearest anchor, I or P; B frames sit between any two anchors.
    assert _summary(s) == [
        ("I0", ()),
        ("P2", (0,)),
        ("B1", (0, 2)),
        ("I4", ()),
        ("B3", (2, 4)),
        ("P6", (4,)),
        ("B5", (4, 6)),
        ("I8", ()),
        ("B7", (6, 8)),
        ("P10", (8,)),
        ("B9", (8, 10)),
    ]
    check_structure(s, 11)


def test_uneven_interval_still_valid():
    # Between anchors 0 and 5 the "middle" is 2; the halves are uneven but every frame is coded once.
    s = coding_structure(6, (0,), (5,))
    assert _summary(s) == [("I0", ()), ("P5", (0,)), ("B2", (0, 5)), ("B1", (0, 2)), ("B3", (2, 5)), ("B4", (3, 5))]
    check_structure(s, 6)


def test_all_intra():
    s = coding_structure(5, range(5))
    assert s == tuple(FrameSpec(i, "I", (), 0) for i in range(5))
    assert intra_period_positions(5, 1) == (0, 1, 2, 3, 4)
    assert max_references_alive(s) == 1


def test_single_frame():
    assert coding_structure(1) == (FrameSpec(0, "I", (), 0),)


def test_display_order():
    s = coding_structure(9, (0,), (8,))
    assert [f.display_index for f in display_order(s)] == list(range(9))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", (0,)),
        ("0,16", (0, 16)),
        ("1-8", (1, 2, 3, 4, 5, 6, 7, 8)),
        ("0-2,8", (0, 1, 2, 8)),
        (" 8 , 0-1 ,1", (0, 1, 8)),  # spaces, order and duplicates do not matter
        ("3-3", (3,)),
    ],
)
def test_parse_positions(text, expected):
    assert parse_positions(text, 17, "--p-pos") == expected


@pytest.mark.parametrize(
    "text, match",
    [
        ("9", r"--p-pos: position 9 is out of range for 9 frames \(valid: 0 to 8\)"),
        ("2-9", r"--p-pos: position 9 is out of range"),
        ("-1", r"--p-pos: position -1 is negative"),
        ("5-3", r"--p-pos: empty range '5-3'"),
        ("a", r"--p-pos: cannot parse 'a'"),
        ("1,,2", r"--p-pos: cannot parse ''"),
        ("", r"--p-pos: cannot parse ''"),
        ("1-2-3", r"--p-pos: cannot parse '1-2-3'"),
        ("1.5", r"--p-pos: cannot parse '1.5'"),
    ],
)
def test_parse_positions_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_positions(text, 9, "--p-pos")


@pytest.mark.parametrize("n", [0, -1])
def test_n_frames_below_one(n):
    with pytest.raises(ConfigError, match=r"--n-frames\) must be at least 1"):
        coding_structure(n)
    with pytest.raises(ConfigError, match=r"--n-frames\) must be at least 1"):
        parse_positions("0", n, "--intra-pos")


def test_intra_period_below_one():
    with pytest.raises(ConfigError, match="--intra-period must be at least 1, got 0"):
        intra_period_positions(9, 0)


def test_frame_in_intra_and_p():
    with pytest.raises(ConfigError, match=r"frame\(s\) 3-4 are in both --intra-pos and --p-pos"):
        coding_structure(9, (0, 3, 4), (3, 4, 8))


def test_frame_zero_not_intra():
    with pytest.raises(ConfigError, match="frame 0 must be an intra frame"):
        coding_structure(9, (4,), (0, 8))
    with pytest.raises(ConfigError, match="frame 0 must be an intra frame"):
        coding_structure(9, (), (8,))


def test_trailing_frames_after_last_anchor():
    with pytest.raises(ConfigError, match=r"frame\(s\) 9 come after the last I or P frame \(8\).*add them to --p-pos or --intra-pos"):
        coding_structure(10, intra_period_positions(10, 4))
    with pytest.raises(ConfigError, match=r"frame\(s\) 1-8 come after the last I or P frame \(0\)"):
        coding_structure(9)


@pytest.mark.parametrize(
    "intra, p, match",
    [
        ((0, 9), (), r"--intra-pos: position 9 is out of range for 9 frames"),
        ((0,), (8, 12), r"--p-pos: position 12 is out of range for 9 frames"),
        ((0,), (-2,), r"--p-pos: position -2 is negative"),
        ((0,), ("8",), r"--p-pos: position '8' is not an integer"),
    ],
)
def test_bad_positions(intra, p, match):
    with pytest.raises(ConfigError, match=match):
        coding_structure(9, intra, p)


def test_check_structure_reference_before_decoding():
    s = list(coding_structure(9, (0,), (8,)))
    s[2], s[3] = s[3], s[2]  # B2 (refs 0, 4) now comes before B4
    with pytest.raises(ConfigError, match=r"frame 2 in decoding order \(display index 2\): reference 4 is not decoded before it"):
        check_structure(s, 9)


def test_check_structure_duplicate_display_index():
    s = list(coding_structure(9, (0,), (8,)))
    s[-1] = FrameSpec(5, "B", (4, 6), 3)  # B5 twice, B7 missing
    with pytest.raises(ConfigError, match="display index 5 appears twice"):
        check_structure(s, 9)


@pytest.mark.parametrize(
    "index, frame, match",
    [
        (1, FrameSpec(8, "P", (0, 4), 0), r"P frames have 1 reference\(s\), got 2"),
        (0, FrameSpec(0, "P", (), 0), r"P frames have 1 reference\(s\), got 0"),
        (2, FrameSpec(4, "B", (8, 0), 1), "a B frame references one past and one future frame"),
        (2, FrameSpec(4, "X", (0, 8), 1), "unknown frame type 'X'"),
        (2, FrameSpec(4, "B", (0, 8), 0), "a B frame has depth at least 1, got 0"),
        (1, FrameSpec(9, "P", (0,), 0), "display index out of range 0 to 8"),
    ],
)
def test_check_structure_rejects(index, frame, match):
    s = list(coding_structure(9, (0,), (8,)))
    s[index] = frame
    with pytest.raises(ConfigError, match=match):
        check_structure(s, 9)


def test_check_structure_wrong_length():
    with pytest.raises(ConfigError, match="has 9 frames, expected 10"):
        check_structure(coding_structure(9, (0,), (8,)), 10)


def test_check_structure_p_referencing_future():
    s = (FrameSpec(0, "I", (), 0), FrameSpec(2, "I", (), 0), FrameSpec(1, "P", (2,), 0))
    with pytest.raises(ConfigError, match="a P frame references a past frame, got 2"):
        check_structure(s, 3)


def test_frame_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        coding_structure(1)[0].depth = 1


def test_max_references_alive_low_delay():
    # Decoding P(i) needs P(i-1); P(i-1) is already output and dropped right after.
    assert max_references_alive(coding_structure(9, (0,), range(1, 9))) == 2


def test_max_references_alive_random_access_9():
    # Decoding order I0 P8 B4 B2 B1 B3 B6 B5 B7; last use (step in decoding order)
    # as a reference: 0 -> 4 (B1), 8 -> 8 (B7), 4 -> 7 (B5), 2 -> 5 (B3), 6 -> 8 (B7).
    # Held after each decode, then output and dropping:
    #   I0: {0}                1  output 0; kept (used until B1)
    #   P8: {0,8}              2
    #   B4: {0,8,4}            3
    #   B2: {0,8,4,2}          4
    #   B1: {0,8,4,2,1}        5  output 1, 2; drop 0 and 1 -> {8,4,2}
    #   B3: {8,4,2,3}          4  output 3, 4; drop 2 and 3 -> {8,4}
    #   B6: {8,4,6}            3  (5 not decoded: nothing output)
    #   B5: {8,4,6,5}          4  output 5, 6; drop 4 and 5 -> {8,6}
    #   B7: {8,6,7}            3  output 7, 8; all dropped
    # Peak: 5, when B1 is decoded.
    assert max_references_alive(coding_structure(9, (0,), (8,))) == 5
