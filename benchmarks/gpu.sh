#!/usr/bin/env bash
# GPU figures for the scale-out issue; a few minutes on one GPU. Needs CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" benchmarks/gpu.py --steps 20 --batch 64 "$@"
