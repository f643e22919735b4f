"""Video: motion compensation (encoder/inter.py and its runtime twin), direct B
frames, sequence files (format version 5), the torch-free sequence decoder, and
the CLIs."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from coolchic.decoder_runtime import decode, decode_video, inter
from coolchic.decoder_runtime.errors import BitstreamError
from coolchic.decoder_runtime.frame import RawImage
from coolchic.decoder_runtime.image_io import read_yuv, yuv_format
from coolchic.decoder_runtime.sequence import index_sequence
from coolchic.encoder.inter import warp
from coolchic.export.sequence_writer import encode_sequence_header

SHARED = Path(__file__).resolve().parents[2] / "shared"
CLIP = SHARED / "data" / "coolchic-testdata" / "D-BQSquare-3frames_224x128_60p_yuv420_8b.yuv"
CLIP5 = SHARED / "data" / "coolchic-testdata" / "D-BQSquare-5frames_224x128_60p_yuv420_8b.yuv"
# A small decoder: the test is about the plumbing, not the rate.
SMALL = dict(arm="8,1", layers_synthesis="8-1-linear-relu,X-1-linear-none", n_ft_per_res="1,1,1")
TINY_CFG = "n_itr = 12\nfreq_valid = 6\nwarmup = none\nfinal_itr = 3\nrdoq = false\n"

torch.set_num_threads(1)


def _crop_frames(n=3, h=32, w=48, clip=CLIP):
    fmt = yuv_format(clip)
    out = []
    for i in range(n):
        f = read_yuv(clip, fmt, i)
        y, u, v = f.planes
        out.append(RawImage((y[40:40 + h, 64:64 + w].copy(), u[20:20 + h // 2, 32:32 + w // 2].copy(),
                             v[20:20 + h // 2, 32:32 + w // 2].copy()), "yuv420", 8))
    return out


# ---- motion compensation ----------------------------------------------------------
def test_warp_twins_agree_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    ref = torch.rand(1, 3, 20, 24, generator=g)
    flow = torch.randn(1, 2, 20, 24, generator=g) * 4
    a = warp(ref, flow)[0].numpy()
    b = inter.warp(ref[0].numpy(), flow[0].numpy())
    assert np.array_equal(a, b)


@pytest.mark.parametrize("frame_type,offset", [("P", False), ("B", False), ("B", True)])
def test_combine_twins_agree_bit_for_bit(frame_type, offset):
    """The runtime's one-pass numba kernel and the encoder's InterCodingModule, motion past
    the borders included, with a derived motion added (B frames with derived motion) or not."""
    from coolchic.encoder.inter import InterCodingModule

    g = torch.Generator().manual_seed(5)
    n_refs = 1 if frame_type == "P" else 2
    raw = torch.randn(1, 3 + 3 * n_refs, 21, 27, generator=g) * 0.7
    raw[:, 4:4 + 2 * n_refs] *= 2  # up to a few dozen pixels of motion
    refs = [torch.rand(1, 3, 21, 27, generator=g) for _ in range(n_refs)]
    module = InterCodingModule(frame_type)
    off = None
    if offset:
        off = torch.randn(1, 2 * n_refs, 21, 27, generator=g) * 5
        module.motion_offset = off
    want = module(raw, refs)[0].numpy()
    got = inter.combine(raw[0].numpy(), frame_type, [r[0].numpy() for r in refs],
                        motion_offset=None if off is None else off[0].numpy())
    assert np.array_equal(got, want)
    if offset:  # the offset moves the prediction
        assert not np.array_equal(got, inter.combine(raw[0].numpy(), frame_type, [r[0].numpy() for r in refs]))


@pytest.mark.parametrize("frame_type", ["P", "B"])
def test_combine_with_chroma_step_2_keeps_the_yuv420_samples(frame_type):
    """chroma_step=2 (yuv420) computes the luma everywhere and the chroma at even rows and columns,
    the very values of the full computation; the decoded frame's code values are the same."""
    from coolchic.decoder_runtime.reconstruct import to_raw_image

    rng = np.random.default_rng(8)
    n_refs = 1 if frame_type == "P" else 2
    raw = (rng.standard_normal((3 + 3 * n_refs, 22, 28)) * 0.7).astype(np.float32)
    refs = [rng.random((3, 22, 28), dtype=np.float32) for _ in range(n_refs)]
    full = inter.combine(raw, frame_type, refs)
    half = inter.combine(raw, frame_type, refs, chroma_step=2)
    assert np.array_equal(half[0], full[0])
    assert np.array_equal(half[1:, ::2, ::2], full[1:, ::2, ::2])
    a, b = to_raw_image(full, "yuv420", 10), to_raw_image(half, "yuv420", 10)
    assert all(np.array_equal(x, y) for x, y in zip(a.planes, b.planes))
    with pytest.raises(ValueError, match="chroma_step"):
        inter.combine(raw, frame_type, refs, chroma_step=3)


def test_nan_motion_reads_the_first_row_and_column():
    """Only a hostile file's synthesis makes a NaN: it must not index outside the frame."""
    ref = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    raw = np.zeros((4, 3, 4), np.float32)
    raw[1] = 0.5  # alpha 1
    raw[2] = np.nan
    got = inter.combine(raw, "P", [ref])
    np.testing.assert_array_equal(got[0], np.broadcast_to(ref[0, :, :1], (3, 4)))


def test_motion_compensation_recovers_a_shifted_image():
    rng = np.random.default_rng(0)
    ref = rng.random((1, 24, 32), dtype=np.float32)
    target = np.zeros_like(ref)
    target[:, 2:, :-3] = ref[:, :-2, 3:]  # target(y, x) = ref(y - 2, x + 3)
    flow = np.stack([np.full((24, 32), 3.0, np.float32), np.full((24, 32), -2.0, np.float32)])
    got = inter.warp(ref, flow)
    assert np.array_equal(got[:, 2:, :-3], target[:, 2:, :-3])
    # Past the border the last column is repeated.
    assert np.array_equal(got[:, 2:, -1], ref[:, :-2, -1])


def test_half_pixel_motion_interpolates_bilinearly():
    ramp = np.arange(8, dtype=np.float32)[None, None, :].repeat(4, axis=1)  # value = x
    flow = np.stack([np.full((4, 8), 0.5, np.float32), np.zeros((4, 8), np.float32)])
    got = inter.warp(ramp, flow)
    np.testing.assert_array_equal(got[0, 0, :7], np.arange(7) + 0.5)
    assert got[0, 0, 7] == 7.0  # clamped to the last column


def test_combine_p_and_b_by_hand():
    ref0 = np.full((3, 4, 4), 0.4, np.float32)
    ref1 = np.full((3, 4, 4), 0.8, np.float32)
    raw_p = np.zeros((6, 4, 4), np.float32)  # residue 0, alpha 1/2, no motion
    raw_p[3] = 0.5  # alpha = 1
    raw_p[0] = 0.1
    got = inter.combine(raw_p, "P", [ref0])
    np.testing.assert_allclose(got[0], 0.5, rtol=1e-6)
    np.testing.assert_allclose(got[1:], 0.4, rtol=1e-6)
    raw_b = np.zeros((9, 4, 4), np.float32)
    raw_b[3] = 0.5  # alpha 1
    raw_b[8] = 0.25  # beta 3/4
    got = inter.combine(raw_b, "B", [ref0, ref1])
    np.testing.assert_allclose(got, 0.75 * 0.4 + 0.25 * 0.8, rtol=1e-6)
    with pytest.raises(BitstreamError, match="2 reference"):
        inter.combine(raw_b, "B", [ref0])


def test_motion_channels_are_in_sixteenths_of_a_pixel():
    ref = np.arange(8, dtype=np.float32)[None, None, :].repeat(4, axis=1).repeat(3, axis=0) / 8
    raw = np.zeros((6, 4, 8), np.float32)
    raw[3] = 0.5  # alpha 1
    raw[4] = 1 / 16  # one pixel to the right
    got = inter.combine(raw, "P", [ref])
    np.testing.assert_array_equal(got[:, :, :7], ref[:, :, 1:])


# ---- sequence files --------------------------------------------------------------------
# ---- direct B frames -----------------------------------------------------------------
def test_direct_motion_of_a_constant_field_by_hand():
    """A constant field reads the same anywhere: v0 = s0 f, v1 = -s1 f (future source), and
    the mirror for the past source; s0 = 1/4, s1 = 3/4 for a frame at 1 between 0 and 4."""
    from coolchic.decoder_runtime.direct import SOURCE_FUTURE, SOURCE_PAST, direct_motion

    f = np.empty((2, 6, 8), np.float32)
    f[0], f[1] = 4.0, -2.0
    v0, v1 = direct_motion(1, (0, 4), SOURCE_FUTURE, f)
    assert np.all(v0[0] == 1.0) and np.all(v0[1] == -0.5) and np.all(v1[0] == -3.0) and np.all(v1[1] == 1.5)
    v0, v1 = direct_motion(1, (0, 4), SOURCE_PAST, f)
    assert np.all(v0[0] == -1.0) and np.all(v0[1] == 0.5) and np.all(v1[0] == 3.0) and np.all(v1[1] == -1.5)
    with pytest.raises(BitstreamError, match="both sides"):
        direct_motion(5, (0, 4), SOURCE_FUTURE, f)


def test_direct_frame_of_a_steady_motion_is_the_true_frame():
    """A pattern moving 2 pixels right and 1 down per frame: frame 2's motion towards frame 0
    (-4, -2) makes frame 1, away from the borders, whatever the blend (exactly with one
    reference alone; to float rounding, far below a code value, with both)."""
    from coolchic.decoder_runtime.direct import SOURCE_FUTURE, direct_motion, direct_prediction

    rng = np.random.default_rng(5)
    pattern = rng.random((3, 40, 48), dtype=np.float32)

    def at(t):  # frame t: the pattern moved by (2t, t)
        return np.roll(pattern, (t, 2 * t), axis=(1, 2))

    f = np.empty((2, 40, 48), np.float32)
    f[0], f[1] = -4.0, -2.0  # frame 2 (x) = frame 0 (x + f)
    v0, v1 = direct_motion(1, (0, 2), SOURCE_FUTURE, f)
    for k in (0, 3, 8):
        got = direct_prediction([at(0), at(2)], v0, v1, k)[:, 4:-4, 4:-4]
        want = at(1)[:, 4:-4, 4:-4]
        assert np.array_equal(got, want) if k in (0, 8) else np.max(np.abs(got - want)) < 1e-6


def test_direct_frame_without_motion_towards_the_other_reference_is_refused():
    from coolchic.decoder_runtime.direct import SOURCE_FUTURE, SOURCE_PAST, source_field

    field = np.zeros((2, 4, 4), np.float32)
    motion = {2: {0: field}, 4: {}}
    assert source_field(motion, 1, (0, 2), SOURCE_FUTURE) is field
    with pytest.raises(BitstreamError, match="motion of frame 0 towards frame 2, which frame 0 does not carry"):
        source_field(motion, 1, (0, 2), SOURCE_PAST)
    with pytest.raises(BitstreamError, match="frame 4 towards frame 2"):
        source_field(motion, 3, (2, 4), SOURCE_FUTURE)


def test_frame_cost_by_hand():
    """MSE over every sample in [0, 1] units plus lambda * bits per pixel."""
    from coolchic.encoder.video import frame_cost

    a = RawImage(tuple(np.full((4, 4), 100, np.uint8) for _ in range(3)), "yuv444", 8)
    b = RawImage(tuple(p.copy() for p in a.planes), "yuv444", 8)
    b.planes[1][2, 3] = 103  # one sample of 48 off by 3
    assert frame_cost(a, b, 10, 0.01) == pytest.approx(9 / 48 / 255**2 + 0.01 * 80 / 16, rel=1e-12)


@pytest.fixture(scope="module")
def direct_seq(tmp_path_factory):
    """Five 48x32 frames, I0 P4 B2 B1 B3, at a lambda where bytes weigh, with their workdir."""
    from coolchic.encoder.video import encode_video

    work = tmp_path_factory.mktemp("direct")
    cfg = work / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    frames = _crop_frames(5, clip=CLIP5)
    # One training of P4: the scenario below (B2 derived from P4's motion, B1 and B3 direct) is
    # the one its first seed gives.
    kw = dict(lmbda=1e-2, preset=str(cfg), dec_cfg="vlop", overrides=SMALL, threads=1, workdir=work / "wd",
              far_p_seeds=1)
    return frames, encode_video(frames, (0,), (4,), **kw), kw


def test_b_frames_go_direct_where_that_costs_less(direct_seq):
    """The depth-2 frames B1 and B3 become direct B frames (11 bytes each), one from each
    motion source, B2 a B frame with its motion derived from P4's, and the torch-free
    decoder reads the very frames the encoder chose; without direct B frames the same
    trained Cool-chics are sent."""
    from coolchic.encoder.video import encode_video

    frames, res, kw = direct_seq
    by = {s["display_index"]: s for s in res.frames}
    assert [i for i in by if by[i]["direct"]] == [1, 3]
    assert (by[1]["source"], by[3]["source"]) == ("future", "past") and by[1]["bytes"] == by[3]["bytes"] == 11
    header, entries = index_sequence(res.bitstream)
    assert [e.direct is not None for e in entries] == [False, False, False, True, True]
    assert [e.motion_source for e in entries] == [None, None, 0, None, None] and by[2]["derived_motion"]
    for dec, enc in zip(decode_video(res.bitstream), res.decoded):
        assert all(np.array_equal(a, b) for a, b in zip(dec.image.planes, enc.planes))
    coded = encode_video(frames, (0,), (4,), direct_b=False, **kw)  # every frame resumed from the workdir
    assert [s["resumed"] for s in coded.frames] == [True] * 5 and not any(s["direct"] for s in coded.frames)
    assert [s["bytes"] for s in coded.frames][3:] == [by[1]["coded_bytes"], by[3]["coded_bytes"]]


def test_b_frames_with_their_own_motion_only(direct_seq, tmp_path):
    """``derive_b_motion=False``: no section of type 4; B2 is the Cool-chic trained on its own."""
    from coolchic.encoder.video import encode_video

    frames, res, kw = direct_seq
    plain = encode_video(frames, (0,), (4,), derive_b_motion=False, **kw)
    assert [s["resumed"] for s in plain.frames][:3] == [True, True, True]  # B2's own Cool-chic was trained too
    assert all(e.motion_source is None for e in index_sequence(plain.bitstream)[1])
    for dec, enc in zip(decode_video(plain.bitstream), plain.decoded):
        assert all(np.array_equal(a, b) for a, b in zip(dec.image.planes, enc.planes))


def test_bad_direct_frames_get_clear_errors(direct_seq):
    from coolchic.decoder_runtime.direct import DirectParams
    from coolchic.decoder_runtime.coding_structure import FrameSpec
    from coolchic.export.sequence_writer import write_direct_frame

    _, res, _ = direct_seq
    data = res.bitstream
    header, entries = index_sequence(data)
    b3 = entries[4]  # the last section: frame 3, from frame 2's motion towards frame 4
    # From frame 4's motion towards frame 2 instead: P4 has motion towards frame 0 only.
    other = write_direct_frame(FrameSpec(3, "B", (2, 4), 2), DirectParams(4, 0), 5)
    with pytest.raises(BitstreamError, match="motion of frame 4 towards frame 2, which frame 4 does not carry"):
        list(decode_video(data[:entries[3].end] + other))
    # A blend weight past 8, the CRC made right: the section's fields are refused.
    body = bytearray(data[b3.start:b3.end - 4])
    body[-2] = 9
    bad = data[:b3.start] + bytes(body) + zlib.crc32(bytes(body)).to_bytes(4, "little")
    with pytest.raises(BitstreamError, match="invalid direct B frame fields"):
        list(decode_video(bad))
    # B2's motion derived from its past reference's (source 1), I0, which carries none.
    b2 = entries[2]
    body = bytearray(data[b2.start:b2.end - 4])
    body[b2.header_start - b2.start - 1] = 1
    bad = data[:b2.start] + bytes(body) + zlib.crc32(bytes(body)).to_bytes(4, "little") + data[b2.end:]
    with pytest.raises(BitstreamError, match="motion of frame 0 towards frame 4, which frame 0 does not carry"):
        list(decode_video(bad))
    # A flipped field byte: the CRC names the frame when its turn comes.
    bad = bytearray(data)
    bad[b3.end - 5] ^= 1
    with pytest.raises(BitstreamError, match="frame 3 is corrupted"):
        list(decode_video(bytes(bad)))


def test_cli_reports_direct_frames(direct_seq, tmp_path, capsys):
    from coolchic.decoder_runtime import cli as dcli

    _, res, _ = direct_seq
    src = tmp_path / "d.cool"
    src.write_bytes(res.bitstream)
    assert dcli.main(["-i", str(src), "-o", str(tmp_path / "d_48x32_yuv420_8b.yuv"), "-v"], fast_exit=False) == 0
    out = capsys.readouterr().out
    k = res.frames[3]["blend"] * 8
    assert f"frame 1 (B, direct, 10 bytes): blend {k:g}/8, motion of frame 2" in out
    assert f"frame 2 (B, motion derived from frame 4, {res.frames[2]['bytes'] - 2} bytes): rate (bytes)" in out


def test_mutated_direct_sequences_never_escape_bitstream_error(direct_seq):
    _, res, _ = direct_seq
    _mutations_never_escape(res.bitstream, 5, seed=12)


def test_sequence_header_layout():
    got = encode_sequence_header(128, 224, "yuv420", 10, 3, (60, 1))
    body = bytes([0x43, 0x63, 5, 127, 0xDF, 0x01, 0x12, 3, 60, 1])
    assert got == body + zlib.crc32(body).to_bytes(4, "little")


@pytest.fixture(scope="module")
def ipb(tmp_path_factory):
    """An I-P-B sequence of three 48x32 frames: frame 0 intra, frame 2 P, frame 1 B."""
    from coolchic.encoder.video import encode_video

    work = tmp_path_factory.mktemp("video")
    cfg = work / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    frames = _crop_frames()
    res = encode_video(frames, (0,), (2,), lmbda=1e-3, preset=str(cfg), dec_cfg="vlop", overrides=SMALL,
                       threads=1, workdir=work / "wd")
    return frames, res, work, cfg


def test_ipb_round_trip_is_bit_exact(ipb):
    frames, res, _, _ = ipb
    assert [(s.display_index, s.frame_type, s.refs) for s in res.structure] == [(0, "I", ()), (2, "P", (0,)),
                                                                              (1, "B", (0, 2))]
    out = list(decode_video(res.bitstream))
    assert len(out) == 3
    for dec, enc in zip(out, res.decoded):
        for a, b in zip(dec.image.planes, enc.planes):
            assert np.array_equal(a, b)
    # The section lengths add up to the file, and each frame section is where the index says.
    header, entries = index_sequence(res.bitstream)
    assert header.n_frames == 3 and (header.height, header.width) == (32, 48) and header.fps is None
    assert [e.spec.display_index for e in entries] == [0, 2, 1]
    assert sum(s["bytes"] for s in res.frames) + header.n_bytes == len(res.bitstream)


def test_resumed_sequence_reuses_finished_frames(ipb):
    from coolchic.encoder.video import encode_video

    frames, res, work, cfg = ipb
    again = encode_video(frames, (0,), (2,), lmbda=1e-3, preset=str(cfg), dec_cfg="vlop", overrides=SMALL,
                         threads=1, workdir=work / "wd")
    assert [s["resumed"] for s in again.frames] == [True, True, True]
    assert again.bitstream == res.bitstream
    # The training time each frame took is recorded with it and reported when it is resumed.
    import json

    assert [s["resumed_seconds"] for s in res.frames] == [0.0, 0.0, 0.0]
    for s in again.frames:  # P2, far from its reference, trained twice: its two records add up
        records = sorted((work / "wd").glob(f"frame_{s['display_index']:03d}*.section.json"))
        assert len(records) == (2 if s["type"] == "P" else 1)
        recorded = [json.loads(r.read_text())["seconds"] for r in records]
        assert s["resumed_seconds"] == pytest.approx(sum(recorded)) and min(recorded) > 0


def test_a_far_p_frame_keeps_the_cheaper_of_two_seeds(ipb, tmp_path):
    """P2 is two frames from its reference: it trains from two seeds and the file holds the
    section of the one that costs less at the sequence's lambda."""
    import shutil

    import coolchic.encoder.video as video

    frames, res, work, cfg = ipb
    shutil.copytree(work / "wd", tmp_path / "wd")
    sections = {p.name: p.read_bytes() for p in (tmp_path / "wd").glob("frame_002*.section")}
    assert sorted(sections) == ["frame_002.section", "frame_002_seed1000.section"]
    e = index_sequence(res.bitstream)[1][1]
    kept = [name for name, data in sections.items() if data.endswith(res.bitstream[e.start:e.end])]
    one = video.encode_video(frames, (0,), (2,), lmbda=1e-3, preset=str(cfg), dec_cfg="vlop", overrides=SMALL,
                             threads=1, workdir=tmp_path / "wd", far_p_seeds=1)  # the first seed's, resumed
    assert one.frames[1]["resumed"]
    costs = [video.frame_cost(frames[2], r.decoded[2], r.frames[1]["bytes"], 1e-3) for r in (res, one)]
    assert costs[0] <= costs[1]
    assert kept == (["frame_002.section"] if costs[0] == costs[1] else ["frame_002_seed1000.section"])


def test_a_workdir_of_other_inputs_is_trained_again_not_refused(ipb, tmp_path):
    """Frames whose inputs changed (here the lambda; in a sequence, a reference the encoder
    coded otherwise) start over: their earlier checkpoints belong to other fingerprints."""
    import shutil

    from coolchic.encoder.video import encode_video

    frames, res, work, cfg = ipb
    shutil.copytree(work / "wd", tmp_path / "wd")
    again = encode_video(frames, (0,), (2,), lmbda=2e-3, preset=str(cfg), dec_cfg="vlop", overrides=SMALL,
                         threads=1, workdir=tmp_path / "wd")
    assert [s["resumed"] for s in again.frames] == [False, False, False]
    for dec, enc in zip(decode_video(again.bitstream), again.decoded):
        assert all(np.array_equal(a, b) for a, b in zip(dec.image.planes, enc.planes))


def test_b_frames_get_their_own_decoder_configuration(tmp_path):
    """``dec_cfg_b`` sets the B frames' architecture, ``dec_cfg_inter`` the P frames'; the
    default B configuration has no latents finer than 1/8 of the resolution."""
    from coolchic.decoder_runtime.sequence import read_sequence_frame
    from coolchic.encoder.presets import decoder_config_to_param, load_decoder_config
    from coolchic.encoder.video import encode_video

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    b_cfg = tmp_path / "b.cfg"
    b_cfg.write_text("arm = 8,0\nlayers_synthesis = X-1-linear-none\nlatent_resolution = 1-3\n")
    res = encode_video(_crop_frames(), (0,), (2,), lmbda=1e-3, preset=str(cfg), dec_cfg="vlop",
                       dec_cfg_inter="vlop", dec_cfg_b=str(b_cfg), threads=1)
    header, entries = index_sequence(res.bitstream)
    arch = {e.spec.frame_type: read_sequence_frame(res.bitstream, header, e).arch for e in entries}
    assert arch["B"].latent_resolution == (1, 3) and arch["B"].n_hidden_layers_arm == 0
    # X: Y, U, V, then per reference a mask or blend and a motion field: 9 channels.
    assert [str(x) for x in arch["B"].layers_synthesis] == ["9-1-linear-none"]
    assert arch["P"].latent_resolution[0] == 0 and arch["P"].n_hidden_layers_arm == 1
    default_b = decoder_config_to_param(load_decoder_config("inter_b"), None, (272, 640))
    assert default_b.latent_resolution == (3, 6)
    fine_b = decoder_config_to_param(load_decoder_config("inter_b_fine"), None, (272, 640))
    assert fine_b.latent_resolution == (2, 6)
    assert (fine_b.spatial_context_arm, fine_b.n_hidden_layers_arm, fine_b.layers_synthesis) == (
        default_b.spatial_context_arm, default_b.n_hidden_layers_arm, default_b.layers_synthesis)


def test_b_frames_with_derived_motion_get_the_small_decoder(tmp_path):
    """By default the Cool-chic with derived motion of a B frame that no frame references has
    ``inter_b_derived``'s decoder (no hidden ARM layer, one linear synthesis layer); a B frame
    that others reference, and any B frame's own-motion Cool-chic, keep ``inter_b``'s."""
    from coolchic.decoder_runtime.sequence import read_sequence_frame
    from coolchic.encoder.video import encode_video

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)

    def archs(n, p, derive):
        res = encode_video(_crop_frames(n, clip=CLIP5 if n == 5 else CLIP), (0,), (p,), lmbda=1e-3, preset=str(cfg),
                           dec_cfg="vlop", threads=1, direct_b=False, derive_b_motion=derive)
        header, entries = index_sequence(res.bitstream)
        return {e.spec.display_index: (e.motion_source, read_sequence_frame(res.bitstream, header, e).arch)
                for e in entries if e.spec.frame_type == "B"}

    def form(arch):
        return (arch.latent_resolution, arch.spatial_context_arm, arch.n_hidden_layers_arm,
                [str(x) for x in arch.layers_synthesis])

    small = ((3, 6), 8, 0, ["9-1-linear-none"])
    inter_b = ((3, 6), 8, 1, ["8-1-linear-relu", "9-1-linear-none"])
    five = archs(5, 4, True)  # I0 P4 B2 B1 B3: B2 is referenced, B1 and B3 are not
    assert [five[d][0] is not None for d in (1, 3)] == [True, True]
    assert (form(five[1][1]), form(five[3][1]), form(five[2][1])) == (small, small, inter_b)
    three = archs(3, 2, False)  # I0 P2 B1, own motion only
    assert three[1][0] is None and form(three[1][1]) == inter_b


def test_frame_presets_and_lambdas_by_frame_type(tmp_path):
    """I frames keep the preset's warm-up and train 2.5 times its main iterations; a P frame
    trains one candidate whose warm-up is 0.3 of its main phase; a B frame trains 2.5 times
    the preset's main iterations at every depth, with lambda 1.5^depth times the sequence's."""
    from coolchic.decoder_runtime.coding_structure import FrameSpec
    from coolchic.encoder.presets import load_encoder_preset
    from coolchic.encoder.video import frame_lambda, frame_preset

    cfg = tmp_path / "p.cfg"
    cfg.write_text("n_itr = 400\nwarmup = 2x50,1x50\nfinal_itr = 100\nrdoq = false\n")
    preset = load_encoder_preset(str(cfg))

    def shape(spec):
        p = frame_preset(preset, spec)
        return ([(w.candidates, w.training_phase.max_itr) for w in p.warmup],
                [ph.max_itr for ph in p.training_phases])

    assert shape(FrameSpec(0, "I", (), 0)) == ([(2, 50), (1, 50)], [1000, 100])
    assert shape(FrameSpec(8, "P", (0,), 0)) == ([(1, 120)], [400, 100])
    assert shape(FrameSpec(4, "B", (0, 8), 1)) == ([(1, 300)], [1000, 100])
    assert shape(FrameSpec(1, "B", (0, 2), 3)) == ([(1, 300)], [1000, 100])
    assert frame_lambda(0.002, FrameSpec(8, "P", (0,), 0)) == 0.002
    assert frame_lambda(0.002, FrameSpec(2, "B", (0, 4), 2)) == pytest.approx(0.0045)


def test_optical_flow_guides_b_frames_and_p_frames_next_to_their_reference():
    from coolchic.decoder_runtime.coding_structure import FrameSpec, coding_structure
    from coolchic.encoder.video import motion_guided

    low_delay = coding_structure(4, (0,), (1, 2, 3))
    assert [motion_guided(s) for s in low_delay] == [False, True, True, True]
    random_access = coding_structure(5, (0,), (4,))  # I0 P4 B2 B1 B3
    assert [(s.display_index, motion_guided(s)) for s in random_access] == [
        (0, False), (4, False), (2, True), (1, True), (3, True)]
    assert not motion_guided(FrameSpec(3, "P", (1,), 0))


def test_inter_frames_decoders_by_distance_and_lambda():
    """A near P frame takes the B frames' decoder, a distant one ``inter``; the B frames'
    latents start at 1/4 of the resolution at low lambda, at 1/8 above."""
    from coolchic.decoder_runtime.coding_structure import FrameSpec, coding_structure
    from coolchic.encoder.video import B_FINE_MAX_LAMBDA, derived_decoder_config, inter_decoder_config

    def names(structure, lmbda=0.002, inter=None, b=None):
        return [(s.display_index, inter_decoder_config(s, lmbda, inter, b)) for s in structure if s.frame_type != "I"]

    assert B_FINE_MAX_LAMBDA == 0.0005
    low_delay = coding_structure(3, (0,), (1, 2))
    assert names(low_delay) == [(1, "inter_b"), (2, "inter_b")]
    assert names(low_delay, lmbda=0.001) == [(1, "inter_b"), (2, "inter_b")]
    assert names(low_delay, lmbda=0.0005) == [(1, "inter_b_fine"), (2, "inter_b_fine")]
    assert names(low_delay, b="mine.cfg") == [(1, "mine.cfg"), (2, "mine.cfg")]
    random_access = coding_structure(5, (0,), (4,))  # I0 P4 B2 B1 B3
    assert names(random_access) == [(4, "inter"), (2, "inter_b"), (1, "inter_b"), (3, "inter_b")]
    assert names(random_access, lmbda=0.0005) == [(4, "inter"), (2, "inter_b_fine"), (1, "inter_b_fine"),
                                                  (3, "inter_b_fine")]
    # Named configurations hold whatever the lambda.
    assert names(low_delay, inter="mop", lmbda=1e-4) == [(1, "mop"), (2, "mop")]
    assert names(random_access, inter="lop", b="inter_b", lmbda=1e-4) == [(4, "lop"), (2, "inter_b"),
                                                                          (1, "inter_b"), (3, "inter_b")]
    assert inter_decoder_config(FrameSpec(3, "P", (1,), 0), 0.002) == "inter"
    # A B frame with derived motion: the small decoder above the fine lambdas, else the B frames'.
    assert derived_decoder_config(0.004) == derived_decoder_config(0.0006) == "inter_b_derived"
    assert derived_decoder_config(0.0005) == derived_decoder_config(1e-4) == "inter_b_fine"
    assert derived_decoder_config(0.004, "mine.cfg") == derived_decoder_config(1e-4, "mine.cfg") == "mine.cfg"


def _rewrite(data: bytes, n_frames=None, drop_last=False) -> bytes:
    """The same sections under another header; optionally without the last section."""
    header, entries = index_sequence(data)
    new = encode_sequence_header(header.height, header.width, header.frame_data_type, header.bitdepth,
                                 n_frames or header.n_frames, header.fps)
    body = data[header.n_bytes:]
    if drop_last:
        body = data[header.n_bytes:entries[-2].end]
    return new + body


def test_bad_sequences_get_clear_errors(ipb):
    _, res, _, _ = ipb
    data = res.bitstream
    header, entries = index_sequence(data)
    cases = [
        (data[:-7], "frame section"),
        (_rewrite(data, n_frames=4), "announces 4 frames but the file holds 3"),
        (_rewrite(data, n_frames=2), r"(goes on after the 2 frames|outside)"),
        (_rewrite(data, drop_last=True), "announces 3 frames but the file holds 2"),
    ]
    # A B frame whose future reference is itself: decoded before it is there.
    b = entries[2]
    bad = bytearray(data)
    bad[b.start + 3] = 1
    cases.append((bytes(bad), "coding structure"))
    # A reference beyond the frame count.
    bad = bytearray(data)
    bad[entries[1].start + 2] = 7
    cases.append((bytes(bad), r"reference 0 is 7, outside \[0, 2\]"))
    for blob, msg in cases:
        with pytest.raises(BitstreamError, match=msg):
            list(decode_video(blob))
    # A flipped payload byte: the frame's own CRC names it, once its turn comes.
    bad = bytearray(data)
    bad[entries[1].end - 10] ^= 0x40
    frames = decode_video(bytes(bad))
    next(frames)  # frame 0 is fine
    with pytest.raises(BitstreamError, match="frame 2 is corrupted"):
        next(frames)


def test_image_and_sequence_apis_refuse_each_other(ipb, tmp_path):
    _, res, _, _ = ipb
    with pytest.raises(BitstreamError, match="decode_video"):
        decode(res.bitstream)
    path = tmp_path / "clip.cool"
    path.write_bytes(res.bitstream)
    with pytest.raises(BitstreamError, match="decode_video"):
        decode(path)
    from coolchic.export.bitstream_writer import encode_header  # noqa: F401

    golden = Path(__file__).parent / "data" / "golden_v1.cool"
    with pytest.raises(BitstreamError, match="one image"):
        list(decode_video(golden.read_bytes()))


# ---- command lines ------------------------------------------------------------------
def test_cli_encodes_and_decodes_a_sequence(ipb, tmp_path, capsys):
    from coolchic.decoder_runtime import cli as dcli
    from coolchic.encoder import cli as ecli

    frames, _, _, cfg = ipb
    src = tmp_path / "clip_48x32_60p_yuv420_8b.yuv"
    src.write_bytes(b"".join(p.tobytes() for f in frames for p in f.planes))
    out = tmp_path / "clip.cool"
    code = ecli.main(["-i", str(src), "-o", str(out), "--n-frames", "3", "--intra-pos", "0", "--p-pos", "2",
                      "--preset", str(cfg), "--dec-cfg", "vlop", "--arm", "8,1", "--layers-synthesis",
                      "8-1-linear-relu,X-1-linear-none", "--n-ft-per-res", "1,1,1", "--threads", "1", "-q"])
    assert code == 0, capsys.readouterr().err
    assert "3 frames" in capsys.readouterr().out
    assert index_sequence(out.read_bytes())[0].fps == (60, 1)
    yuv = tmp_path / "dec_48x32_yuv420_8b.yuv"
    assert dcli.main(["-i", str(out), "-o", str(yuv)], fast_exit=False) == 0
    expect = b"".join(p.tobytes() for d in decode_video(out) for p in d.image.planes)
    assert yuv.read_bytes() == expect
    pattern = tmp_path / "f_%02d.yuv"
    assert dcli.main(["-i", str(out), "-o", str(pattern)], fast_exit=False) == 0
    assert b"".join((tmp_path / f"f_{i:02d}.yuv").read_bytes() for i in range(3)) == expect
    code = dcli.main(["-i", str(out), "-o", str(tmp_path / "x.png")], fast_exit=False)
    assert code == 1 and "pattern" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.png")


def test_cli_refuses_a_b_frame_without_future_reference(tmp_path, capsys):
    from coolchic.encoder import cli as ecli

    frames = _crop_frames(2)
    src = tmp_path / "c_48x32_yuv420_8b.yuv"
    src.write_bytes(b"".join(p.tobytes() for f in frames for p in f.planes))
    code = ecli.main(["-i", str(src), "-o", str(tmp_path / "o.cool"), "--n-frames", "2", "-q"])
    assert code == 2
    assert "--p-pos" in capsys.readouterr().err


def test_mutated_sequences_never_escape_bitstream_error(ipb):
    _, res, _, _ = ipb
    _mutations_never_escape(res.bitstream, 3, seed=11)


def _mutations_never_escape(data: bytes, n_frames: int, seed: int) -> None:
    """Random byte changes, truncations and insertions: a clean error or a decode, nothing else."""
    rng = np.random.default_rng(seed)
    outcomes = {"error": 0, "decoded": 0}
    for _ in range(120):
        blob = bytearray(data)
        kind = rng.integers(3)
        pos = int(rng.integers(len(blob)))
        if kind == 0:
            blob[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            blob = blob[:pos]
        else:
            blob[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8))
        try:
            frames = list(decode_video(bytes(blob)))
        except BitstreamError:
            outcomes["error"] += 1
        else:
            assert len(frames) == n_frames
            outcomes["decoded"] += 1
    assert outcomes["error"] > 100  # CRCs catch nearly all of them


def test_a_sequence_file_is_read_section_by_section(ipb, tmp_path):
    """From a path: the same frames; a section claiming more bytes than its header allows is refused unread."""
    _, res, _, _ = ipb
    path = tmp_path / "clip.cool"
    path.write_bytes(res.bitstream)
    for a, b in zip(decode_video(path), decode_video(res.bitstream)):
        assert all(np.array_equal(x, y) for x, y in zip(a.image.planes, b.image.planes))
    header, entries = index_sequence(res.bitstream)
    # The last section's length varint rewritten to claim 2^31 bytes, then the file cut.
    last = entries[-1]
    n_len = last.start - entries[-2].end
    huge = bytes([0x80, 0x80, 0x80, 0x80, 0x08])
    path.write_bytes(res.bitstream[:entries[-2].end] + huge + res.bitstream[last.start:])
    with pytest.raises(BitstreamError, match="more than its header allows"):
        list(decode_video(path))
    path.write_bytes(res.bitstream[:-5])
    with pytest.raises(BitstreamError, match="ends before"):
        list(decode_video(path))
    assert n_len in (1, 2)
    with pytest.raises(BitstreamError, match="no such file"):
        list(decode_video(tmp_path / "missing.cool"))


@pytest.mark.parametrize("kw, message", [
    (dict(lmbda=0.0), "lmbda must be a positive number, got 0.0"),
    (dict(lmbda=float("nan")), "lmbda must be a positive number"),
    (dict(far_p_seeds=0), "far_p_seeds must be a positive integer, got 0"),
    (dict(far_p_seeds=True), "far_p_seeds must be a positive integer, got True"),
])
def test_bad_sequence_options_are_refused_before_training(kw, message, monkeypatch):
    import coolchic.encoder.video as video
    from coolchic.decoder_runtime.errors import ConfigError

    monkeypatch.setattr(video, "_encode_one", lambda *a, **k: pytest.fail("a frame trained"))
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        video.encode_video(_crop_frames(), (0,), (2,), **{"lmbda": 1e-3, **kw})
