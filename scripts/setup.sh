#!/usr/bin/env bash
# Create .venv (if missing) and install polyrec with its test and benchmark extras.
# torch==2.13.0 goes first so pip never pulls a multi-GB CUDA build for the `torch>=2.2` requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
pip install --quiet --disable-pip-version-check -e ".[test,bench]"
