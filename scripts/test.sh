#!/usr/bin/env bash
# Set up and run the test suite (includes a short training run on the real MovieLens-100K).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest -q "$@"
