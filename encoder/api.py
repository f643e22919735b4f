"""Encoding an image end to end: configuration, training, bitstream, check decode.

``encode_image`` is what ``coolchic-encode`` and the benchmarks call: it
builds the decoder architecture from a configuration plus overrides, overfits
it (``train.encode_frame``), writes the bitstream with export/ (which re-reads
it), decodes that bitstream with the torch-free runtime and compares the image
with the encoder's own hard-rounded reconstruction.  ``write_outputs`` puts
the bitstream (and optionally the ONNX graphs) on disk atomically.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from coolchic import __version__
from coolchic.decoder_runtime import decode
from coolchic.decoder_runtime.atomic_file import atomic_write_bytes
from coolchic.decoder_runtime.errors import ConfigError, EncodeError
from coolchic.decoder_runtime.frame import RawImage
from coolchic.export.bitstream_writer import WrittenBitstream, write_bitstream

from .frame_encoder import FrameEncoder
from .presets import decoder_config_to_param, load_decoder_config, load_encoder_preset
from .state import export_state, float_rate_per_grid
from .train import EncoderPreset, ProgressCallback, ProgressInfo, encode_frame


@dataclass(frozen=True)
class EncodedImage:
    """A finished encoding: the bytes, the model they came from and the figures."""

    bitstream: bytes
    frame_encoder: FrameEncoder
    written: WrittenBitstream
    decoded: RawImage  # what the runtime decodes from ``bitstream``
    summary: Dict[str, Any]


def with_main_iterations(preset: EncoderPreset, n_itr: int) -> EncoderPreset:
    """The preset with its main (soft-round) training phase set to ``n_itr`` iterations."""
    phases = list(preset.training_phases)
    for i, ph in enumerate(phases):
        if not ph.quantize_model:
            phases[i] = dataclasses.replace(ph, max_itr=n_itr, patience=max(ph.patience, 1))
            return dataclasses.replace(preset, training_phases=tuple(phases))
    raise ConfigError(f"preset {preset.preset_name!r} has no main training phase to set --n-itr on")


def default_substreams(height: int) -> int:
    """One substream per 256 rows: parallel decoding of large images, while the
    context lost at stripe boundaries stays near 0.3 % of the latent rate
    (kodim01, mop: 2 substreams cost 0.33 % more than 1, 4 cost 1.4 %)."""
    return max(1, min(64, height // 256))


def mse_code_values(a: RawImage, b: RawImage) -> float:
    """Mean squared error over every sample of every plane, in code values squared."""
    se, n = 0.0, 0
    for pa, pb in zip(a.planes, b.planes):
        d = pa.astype(np.float64) - pb.astype(np.float64)
        se += float(np.sum(d * d))
        n += d.size
    return se / n


def psnr_db(a: RawImage, b: RawImage) -> float:
    """PSNR over all planes (weighted by their sizes), peak 2^bitdepth - 1."""
    mse = mse_code_values(a, b)
    return float("inf") if mse == 0 else 10 * np.log10(a.max_value**2 / mse)


@torch.no_grad()
def hard_round_reconstruction(fe: FrameEncoder) -> RawImage:
    """The encoder's own decoded image (hard rounding, no noise) as code values."""
    from .frame_encoder import planes_to_raw

    fe.set_to_eval()
    out = fe.forward(quantizer_noise_type="none", quantizer_type="hardround")
    return planes_to_raw(out.decoded_planes, fe.frame_data_type, fe.bitdepth)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="itr", dynamic_ncols=True, leave=False)

    def callback(info: ProgressInfo) -> None:
        bar.n = min(info.iteration, total)
        bar.set_description(info.stage)
        bar.set_postfix(loss=f"{info.loss:.5f}", psnr=f"{info.psnr_db:.2f}", bpp=f"{info.rate_bpp:.4f}", refresh=False)
        bar.refresh()

    return bar, callback


def _progress_log(every: int, stream=None) -> ProgressCallback:
    """One line per ``every`` iterations on ``stream`` (stderr): progress where no bar can be drawn."""
    next_line = [every]

    def callback(info: ProgressInfo) -> None:
        if info.iteration < next_line[0]:
            return
        next_line[0] = (info.iteration // every + 1) * every
        print(f"coolchic: {info.stage} itr {info.iteration}/{info.total_iterations} loss {info.loss:.6f} "
              f"psnr {info.psnr_db:.2f} dB rate {info.rate_bpp:.4f} bpp", file=stream or sys.stderr, flush=True)

    return callback


def encode_image(
    image: RawImage,
    lmbda: float = 1e-3,
    preset: str = "fast",
    dec_cfg: str = "mop",
    overrides: Optional[Mapping[str, Any]] = None,
    n_itr: Optional[int] = None,
    device: str = "cpu",
    threads: Optional[int] = None,
    workdir: Optional[Path] = None,
    seed: int = 0,
    n_substreams: Optional[int] = None,
    progress: bool = False,
    log_every: Optional[int] = None,
    max_memory: Optional[int] = None,
) -> EncodedImage:
    """Overfit a decoder to ``image`` and return a verified bitstream.

    ``n_substreams``: independent latent substreams (None: one per 256 rows).
    ``max_memory``: training memory budget in bytes (None: half the RAM); a
    frame whose whole-frame training exceeds it trains in bands of rows
    (``encoder/tiling.py``), with the same result up to float rounding.
    ``progress``: a tqdm bar on stderr; ``log_every``: instead, a line on
    stderr every that many iterations (loss, PSNR, rate), for logs and CI.
    Raises ConfigError for bad options, EncodeError if the bitstream does not
    decode to what the encoder computed.
    """
    if not (isinstance(lmbda, (int, float)) and lmbda > 0 and np.isfinite(lmbda)):
        raise ConfigError(f"lmbda must be a positive number, got {lmbda!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but PyTorch sees no CUDA device")
    param = decoder_config_to_param(load_decoder_config(dec_cfg), overrides, (image.height, image.width))
    enc_preset = load_encoder_preset(preset)
    if n_itr is not None:
        enc_preset = with_main_iterations(enc_preset, n_itr)

    n_substreams = n_substreams or default_substreams(image.height)
    t0 = time.perf_counter()
    bar, callback = _progress_bar(enc_preset.total_iterations, progress)
    if callback is None and log_every:
        print(f"coolchic {__version__}: {image.width}x{image.height} {image.frame_data_type} {image.bitdepth}-bit, "
              f"lambda {lmbda:g}, preset {preset}, dec-cfg {dec_cfg}, {enc_preset.total_iterations} iterations",
              file=sys.stderr, flush=True)
        callback = _progress_log(log_every)
    def log_line(text: str) -> None:
        if bar is not None:
            bar.write(f"coolchic: {text}", file=sys.stderr)
        elif progress or log_every:
            print(f"coolchic: {text}", file=sys.stderr, flush=True)

    try:
        result = encode_frame(
            image, param, enc_preset, lmbda,
            workdir=str(workdir) if workdir else None, resume=workdir is not None,
            device=device, seed=seed, callback=callback, num_threads=threads, n_substreams=n_substreams,
            max_memory=max_memory, log_fn=log_line,
        )
    finally:
        if bar is not None:
            bar.close()
    t_train = time.perf_counter() - t0
    fe = result.frame_encoder

    t1 = time.perf_counter()
    state = export_state(fe)
    written = write_bitstream(state.arch, state.q_params, state.shifts, state.expgol, state.latents,
                              n_substreams=n_substreams)
    t_write = time.perf_counter() - t1

    t2 = time.perf_counter()
    decoded = decode(written.data, threads=1).image
    t_decode = time.perf_counter() - t2
    own = hard_round_reconstruction(fe)
    max_diff = max(int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))
                   for a, b in zip(own.planes, decoded.planes))
    # Float rounding in the two synthesis implementations may flip a value
    # sitting on a .5 boundary; anything more is a real mismatch.
    if max_diff > 1:
        raise EncodeError(f"the runtime decodes an image differing by {max_diff} code values "
                          "from the encoder's reconstruction")
    n_pix = image.height * image.width
    float_latent_bits = float(sum(float_rate_per_grid(fe)))
    summary = {
        "bytes": len(written.data),
        "bpp": 8 * len(written.data) / n_pix,
        "psnr_db": psnr_db(image, decoded),
        "mac_per_pixel": fe.coolchic_encoder.get_total_mac_per_pixel(),
        "latent_bytes": written.latent_bytes,
        "param_bytes": written.param_bytes,
        "header_bytes": written.header_bytes,
        "float_latent_bits": float_latent_bits,
        "ideal_latent_bits": written.ideal_latent_bits,
        "max_code_value_diff": max_diff,
        "iterations": result.iterations,
        "train_s": t_train,
        "write_s": t_write,
        "decode_s": t_decode,
    }
    return EncodedImage(written.data, fe, written, decoded, summary)


def write_outputs(result: EncodedImage, output: Path, export_onnx_dir: Optional[Path] = None) -> None:
    """Write the bitstream atomically; with ``export_onnx_dir`` also the ONNX graph."""
    atomic_write_bytes(output, result.bitstream)
    if export_onnx_dir is not None:
        from coolchic.export.onnx_export import export_onnx

        export_onnx_dir.mkdir(parents=True, exist_ok=True)
        export_onnx(result.frame_encoder.coolchic_encoder, export_onnx_dir / (Path(output).stem + ".onnx"))
