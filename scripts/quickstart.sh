#!/usr/bin/env bash
# Set up, fetch MovieLens-100K, train the default multi-task model, print results and top-10 for a user.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec polyrec quickstart "$@"
