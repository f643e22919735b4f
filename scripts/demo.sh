#!/usr/bin/env bash
# The main job, end to end: encode the bundled image with coolchic-encode, decode
# it with the torch-free coolchic-decode, print size, bpp, PSNR and times.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
