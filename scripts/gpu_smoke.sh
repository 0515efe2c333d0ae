#!/usr/bin/env bash
# The GPU-only paths in under 3 minutes (scripts/gpu_smoke.py): every weighting method on cuda,
# torchrun x 2 on nccl where two GPUs exist, LoRA scoring that encodes the catalog once.
# On a machine without a GPU it says so and exits 0. Uses .venv when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1
exec timeout 180 python scripts/gpu_smoke.py "$@"
