"""Are the reference Cool-chic's published rates file sizes?

    python bench/reference_rates.py [--decoded kodim14_ref.png]
                                    [--curve bench/results/rd_whole_kodim14_medium_hopref5.coolchic.tsv]

A bitstream is a whole number of bytes, so a rate taken from a file satisfies
``rate_bpp * n_pixels / 8 = integer``; a rate from the encoder's entropy
estimate almost never does. For every published table in
../shared/reference/coolchic-results/ this counts the rows whose rate lies
within its printing's rounding (half the last printed digit, times the
pixels / 8) of a whole byte count: a file size always passes, an estimate
passes by chance with probability twice that tolerance, which is printed as
the count expected by chance. Rows printed too coarsely to tell (tolerance
0.25 byte or more) are left out.

It then compares the reference's own sample bitstream
(../shared/data/coolchic-bitstreams/kodim14.cool, Cool-chic 5.0.1) with the
published kodim14 point it sits on (lambda 0.001). With ``--decoded``, the
sample as decoded by the reference's own decoder (a PNG; our runtime refuses
reference files by name), it also gives the sample's PSNR and places the file
against ``--curve`` (one of our ``rd_kodak.py`` TSVs, pchip of log-rate over
PSNR). Last line: ``reference_sample_file_vs_published=<percent> %``: how
many more bits the sample file holds than the published rate of its point.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rd_kodak import KODAK, REFERENCE_RESULTS, REFERENCE_TABLES, SHARED, psnr  # noqa: E402

SAMPLE = SHARED / "data" / "coolchic-bitstreams" / "kodim14.cool"
SAMPLE_IMAGE, SAMPLE_LMBDA = "kodim14", 0.001
MAX_TOLERANCE = 0.25  # bytes; beyond it a row cannot tell a file from an estimate


def _rows(table: Path) -> list:
    return list(csv.DictReader(table.open(), delimiter="\t"))


def whole_byte_share(table: Path) -> tuple:
    """(rows whose rate is a whole byte count, rows that can tell, hits expected by chance)."""
    hits = n = 0
    chance = 0.0
    for r in _rows(table):
        if "rate_bpp" not in r or "n_pixels" not in r:
            continue
        text = r["rate_bpp"].strip()
        decimals = len(text.split(".")[1]) if "." in text else 0
        bytes_per_bpp = float(r["n_pixels"]) * float(r.get("n_frames") or 1) / 8
        tol = 0.5 * 10.0 ** -decimals * bytes_per_bpp + 1e-9
        if tol >= MAX_TOLERANCE:
            continue
        n_bytes = float(text) * bytes_per_bpp
        hits += abs(n_bytes - round(n_bytes)) <= tol
        chance += 2 * tol
        n += 1
    return hits, n, chance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decoded", type=Path, help="kodim14.cool decoded by the reference's decoder (PNG)")
    ap.add_argument("--curve", type=Path, help="our rd_kodak.py coolchic TSV holding a kodim14 curve")
    args = ap.parse_args()

    print("table\twhole-byte rates\texpected by chance")
    for table in sorted(REFERENCE_RESULTS.glob("*.tsv")):
        hits, n, chance = whole_byte_share(table)
        if n:
            print(f"{table.name}\t{hits} of {n}\t{chance:.1f}")

    (row,) = [r for r in _rows(REFERENCE_TABLES["reference-coolchic-5.0-estimates"])
              if r["seq_name"] == SAMPLE_IMAGE and float(r["lmbda"]) == SAMPLE_LMBDA]
    n_pix = int(row["n_pixels"])
    file_bpp = 8 * SAMPLE.stat().st_size / n_pix
    pub_bpp, pub_psnr = float(row["rate_bpp"]), float(row["psnr_db"])
    print(f"published {SAMPLE_IMAGE} lambda {SAMPLE_LMBDA}: {pub_bpp:.4f} bpp ({pub_bpp * n_pix / 8:.2f} bytes), "
          f"{pub_psnr:.3f} dB")
    print(f"sample file {SAMPLE.name}: {SAMPLE.stat().st_size} bytes, {file_bpp:.4f} bpp")
    if args.decoded is not None:
        ref = np.asarray(Image.open(KODAK / f"{SAMPLE_IMAGE}.png").convert("RGB"))
        dec = np.asarray(Image.open(args.decoded).convert("RGB"))
        if dec.shape != ref.shape:
            sys.exit(f"{args.decoded}: {dec.shape[1]}x{dec.shape[0]}, expected {ref.shape[1]}x{ref.shape[0]}")
        sample_psnr = psnr(ref, dec)
        print(f"sample decoded: {sample_psnr:.3f} dB (published point: {pub_psnr:.3f} dB)")
        if args.curve is not None:
            from rd_point import rate_vs_curve

            r = rate_vs_curve(args.curve, SAMPLE_IMAGE, file_bpp, sample_psnr)
            print(f"sample file against {args.curve.name}: {r:+.2f} % (ours against the file: "
                  f"{100 * (1 / (1 + r / 100) - 1):+.2f} %)")
    print(f"reference_sample_file_vs_published={100 * (file_bpp / pub_bpp - 1):+.2f} %")


if __name__ == "__main__":
    main()
