#!/usr/bin/env bash
# Creates .venv (once) and installs the project with the encoder, batch (Ray) and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.coolchic-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -e ".[encoder,batch,test]"
  touch "$stamp"
fi
