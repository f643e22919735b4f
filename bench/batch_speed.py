"""Wall time of coolchic-encode-batch against a serial loop of coolchic-encode.

    python bench/batch_speed.py [--images 8] [--crop 128] [--preset fast] [--n-itr 300]

Centre crops of the first ``--images`` Kodak images (../shared/data/kodak/),
encoded (1) one after the other by ``coolchic-encode`` processes using every
core each (the shell loop a user would write), then (2) by one
``coolchic-encode-batch`` run, one single-threaded Ray task per image. Prints
both wall times and checks that both runs wrote every bitstream; the last
line is the headline.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
KODAK = HERE.parent.parent / "shared" / "data" / "kodak"
BIN = Path(sys.executable).parent


def crops(n: int, size: int, where: Path) -> list:
    out = []
    for i in range(1, n + 1):
        arr = np.asarray(Image.open(KODAK / f"kodim{i:02d}.png").convert("RGB"))
        h, w = arr.shape[:2]
        y, x = (h - size) // 2, (w - size) // 2
        path = where / f"kodim{i:02d}_{size}.png"
        Image.fromarray(np.ascontiguousarray(arr[y:y + size, x:x + size])).save(path)
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--n-itr", default="300")
    ap.add_argument("--dec-cfg", default="mop")
    args = ap.parse_args()
    opts = ["--preset", args.preset, "--n-itr", args.n_itr, "--dec-cfg", args.dec_cfg, "--lmbda", "0.002"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = crops(args.images, args.crop, tmp)
        (tmp / "serial").mkdir()
        t0 = time.perf_counter()
        for img in images:
            subprocess.run([str(BIN / "coolchic-encode"), "-i", str(img), "-o", str(tmp / "serial" / (img.stem + ".cool")),
                            "-q", *opts], check=True, stdout=subprocess.DEVNULL)
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = subprocess.run([str(BIN / "coolchic-encode-batch"), *map(str, images), "-o", str(tmp / "batch"), "-q", *opts],
                           capture_output=True, text=True)
        batch = time.perf_counter() - t0
        print(r.stdout.strip())
        n_serial = len(list((tmp / "serial").glob("*.cool")))
        n_batch = len(list((tmp / "batch").glob("*.cool")))
        assert r.returncode == 0 and n_serial == n_batch == len(images), (r.returncode, n_serial, n_batch, r.stderr)
    print(f"{len(images)} crops {args.crop}x{args.crop}, preset {args.preset} --n-itr {args.n_itr}, {args.dec_cfg}: "
          f"serial coolchic-encode loop {serial:.1f} s, coolchic-encode-batch {batch:.1f} s (x{serial / batch:.2f})")


if __name__ == "__main__":
    main()
