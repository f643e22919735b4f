"""Decoding a sequence file: frames in display order, without torch.

    >>> for frame in decoder_runtime.decode_video("clip.cool"):
    ...     frame.image.planes  # display order

Each frame section is parsed and checked (``sequence.read_sequence_frame``),
its latents decoded by the numba decoder, its synthesis run on onnxruntime;
a P or B frame's output is then combined with its decoded references
(``inter.combine``). A direct B frame (format version 5) has no image: its
motion follows from a reference's own motion (``direct.py``); a B frame with
derived motion adds its own to that. A decoded frame,
and its motion, is kept only while a later frame still references it or it
still waits for its turn in display order
(``coding_structure.max_references_alive`` bounds how many).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence, Union

import numpy as np

from .api import DecodedImage, Source, decode_options, open_bitstream, out_of_memory
from .arch import n_output_channels, synthesis_latents
from .budget import DEFAULT_MAX_MEMORY, check_direct_frame_memory, inter_frame_extra_bytes
from .errors import BitstreamError
from .frame import RawImage


@dataclass(frozen=True)
class DecodedFrame:
    """A frame as decoded, with the motion that later direct B frames may derive theirs from."""

    image: RawImage
    motion: Dict[int, np.ndarray]  # reference display index -> (2, H, W) float32 motion in pixels; {} for I


def _chroma_step(frame_data_type: str) -> int:
    return 2 if frame_data_type == "yuv420" else 1  # chroma only where the frame keeps it


def reconstruct_frame(bs, grids, refs: Sequence[np.ndarray], provider: str = "cpu", threads: int = 1,
                      timings: Optional[Dict[str, float]] = None, ref_indices: Sequence[int] = (),
                      motion_offset: Optional[np.ndarray] = None) -> DecodedFrame:
    """The decoded frame of a parsed frame section, from its latent grids and its
    references (dense, ``inter.dense_reference``; none for an intra frame), whose
    display indices ``ref_indices`` key the frame's motion; ``motion_offset``: a B
    frame's derived motion (``direct.derived_motion``)."""
    from .direct import motion_fields
    from .inter import combine
    from .reconstruct import reconstruct, synthesize, to_raw_image

    arch = bs.arch
    latents = synthesis_latents(arch, grids)
    if arch.frame_type == "I":
        return DecodedFrame(reconstruct(arch, bs.float_params(), latents, provider=provider, threads=threads,
                                        timings=timings), {})
    raw = synthesize(arch, bs.float_params(), latents, provider, threads, timings)
    t0 = time.perf_counter()
    image = to_raw_image(combine(raw, arch.frame_type, refs, _chroma_step(arch.frame_data_type), motion_offset),
                         arch.frame_data_type, arch.bitdepth)
    motion = motion_fields(raw, arch.frame_type, ref_indices, motion_offset) if ref_indices else {}
    if timings is not None:
        timings["motion_compensation"] = time.perf_counter() - t0
    return DecodedFrame(image, motion)


def reconstruct_direct_frame(params, display_index: int, ref_indices: Sequence[int], refs: Sequence[np.ndarray],
                             motion, frame_data_type: str, bitdepth: int) -> DecodedFrame:
    """A direct B frame (``direct.DirectParams``) from its dense references and the motion
    of the decoded frames (display index -> reference -> field); BitstreamError when its
    source carries no motion towards its other reference."""
    from .direct import direct_motion, source_field

    field = source_field(motion, display_index, ref_indices, params.source)
    v0, v1 = direct_motion(display_index, ref_indices, params.source, field)
    return blend_direct_frame(v0, v1, params.beta_k, ref_indices, refs, frame_data_type, bitdepth)


def blend_direct_frame(v0: np.ndarray, v1: np.ndarray, beta_k: int, ref_indices: Sequence[int],
                       refs: Sequence[np.ndarray], frame_data_type: str, bitdepth: int) -> DecodedFrame:
    """The direct B frame of derived motion ``v0``, ``v1`` and blend ``beta_k / 8``: the second
    half of :func:`reconstruct_direct_frame`, which an encoder trying every blend runs alone."""
    from .direct import direct_prediction
    from .reconstruct import to_raw_image

    dense = direct_prediction(refs, v0, v1, beta_k, _chroma_step(frame_data_type))
    return DecodedFrame(to_raw_image(dense, frame_data_type, bitdepth), {ref_indices[0]: v0, ref_indices[1]: v1})


def _held_bytes(done: Dict[int, RawImage], dense: Dict[int, np.ndarray],
                motion: Dict[int, Dict[int, np.ndarray]]) -> int:
    """Bytes of the frames, dense references and motion fields a sequence decoder keeps."""
    n = sum(p.nbytes for image in done.values() for p in image.planes)
    n += sum(a.nbytes for a in dense.values())
    return n + sum(f.nbytes for fields in motion.values() for f in fields.values())


def decode_video(
    source: Source,
    provider: str = "cpu",
    threads: int = 1,
    timings: bool = False,
    max_pixels: Optional[int] = None,
    max_memory: Union[int, str, None] = DEFAULT_MAX_MEMORY,
) -> Iterator[DecodedImage]:
    """Yield the frames of a sequence file (path or bytes) in display order.

    Options as :func:`decoder_runtime.decode`; ``max_memory`` bounds each
    frame's decode together with what the decoder keeps of earlier frames
    (references, frames that wait for their turn in display order, motion).
    Raises :class:`BitstreamError` (before the first frame) for a file whose
    sections, frame count or coding structure are unsound, and when a
    frame's section is corrupted (when that frame's turn comes).
    """
    from .direct import derived_motion
    from .inter import dense_reference
    from .latent_codec import decode_latents
    from .sequence import index_sequence, index_sequence_file, read_direct_frame, read_sequence_frame

    max_pixels, max_memory = decode_options(provider, max_pixels, max_memory)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        header, entries = index_sequence(data, max_pixels)

        def section(entry):
            return data, entry
    else:
        # A file is indexed from the starts of its sections, then read one
        # section at a time: memory follows the frames, not the file.
        f = open_bitstream(source)
        with f:
            header, entries = index_sequence_file(f, max_pixels)
        path = os.fspath(source)

        def section(entry):
            with open_bitstream(path) as g:
                g.seek(entry.start)
                body = g.read(entry.end - entry.start)
            if len(body) != entry.end - entry.start:
                raise BitstreamError(f"{path}: the file changed while it was decoded")
            return body, dataclasses.replace(entry, start=0, header_start=entry.header_start - entry.start,
                                             end=len(body))

    uses = Counter(r for e in entries for r in e.spec.refs)
    done: Dict[int, RawImage] = {}
    dense: Dict[int, np.ndarray] = {}
    motion: Dict[int, Dict[int, np.ndarray]] = {}
    frame_times: Dict[int, Dict[str, float]] = {}
    next_out = 0
    for entry in entries:
        t: Dict[str, float] = {}
        t0 = time.perf_counter()
        spec = entry.spec
        blob, local = section(entry)
        params = read_direct_frame(blob, local) if local.direct is not None else None
        # What this frame's decode allocates is checked with what the decoder keeps of earlier
        # frames, so that a structure holding many frames is refused before it grows.
        n_planes = n_output_channels(header.frame_data_type)
        held = _held_bytes(done, dense, motion)
        n_new_dense = sum(1 for r in spec.refs if r not in dense)
        if params is not None:
            held += inter_frame_extra_bytes(header.height, header.width, n_planes, 0, n_new_dense, False)
            check_direct_frame_memory(header.height, header.width, n_planes, max_memory, held)
        else:
            held += inter_frame_extra_bytes(header.height, header.width, n_planes, len(spec.refs), n_new_dense,
                                            local.motion_source is not None)
        bs = read_sequence_frame(blob, header, local, max_memory, held) if params is None else None
        t1 = time.perf_counter()
        try:
            grids = decode_latents(bs, threads=threads) if bs is not None else None
            t2 = time.perf_counter()
            refs = []
            for r in spec.refs:
                if r not in dense:
                    dense[r] = dense_reference(done[r].planes, header.bitdepth)
                refs.append(dense[r])
            if bs is None:
                frame = reconstruct_direct_frame(params, spec.display_index, spec.refs, refs, motion,
                                                 header.frame_data_type, header.bitdepth)
            else:
                offset = None
                if local.motion_source is not None:
                    offset = derived_motion(motion, spec.display_index, spec.refs, local.motion_source)
                frame = reconstruct_frame(bs, grids, refs, provider, threads, t, spec.refs, offset)
        except MemoryError:
            raise out_of_memory((header.height, header.width), max_memory, "sequence") from None
        for r in spec.refs:
            uses[r] -= 1
        done[spec.display_index] = frame.image
        if frame.motion and uses[spec.display_index] > 0:  # only a later frame may derive from it
            motion[spec.display_index] = frame.motion
        t.update(parse=t1 - t0, latents=t2 - t1, total=time.perf_counter() - t0)
        frame_times[spec.display_index] = t
        while next_out in done:
            yield DecodedImage(done[next_out], frame_times.pop(next_out) if timings else None)
            next_out += 1
        # Drop what no later frame needs: output frames no longer referenced.
        for d in [d for d in done if d < next_out and uses[d] <= 0]:
            del done[d]
            dense.pop(d, None)
            motion.pop(d, None)
