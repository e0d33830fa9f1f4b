#!/usr/bin/env bash
# Re-compress every published V4 model on one GPU within a time budget, then print the table of what finished.
#   bash benchmarks/recompress_gpu.sh [SECONDS [ARGS...]]   (default 420 s; ARGS go to benchmarks/recompress.py,
#   e.g. --per-session 2 for a sample; WORK, WORKERS and PY may be set, the release path by COMPACTVISION_COWLEY_DIR)
# The pruning runs in WORKERS processes sharing the GPU. When the budget is spent the run is stopped like a Ctrl-C,
# keeping every finished neuron; rerunning the script resumes it. The table then scores the finished neurons.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-runs/recompress_gpu}
BUDGET=${1:-420}
shift || true
ARGS=("$@")  # with no --per-session the benchmark takes every published model where a GPU is present
export PYTHONUNBUFFERED=1
# The workers read and batch their labels on the CPU: keep freed memory there, as on a CPU machine
# (README, "COMPACTVISION_KEEP_FREED_MEMORY"); each worker stayed under 6.7 GB on the CPU sample.
export COMPACTVISION_KEEP_FREED_MEMORY=${COMPACTVISION_KEEP_FREED_MEMORY:-1}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
# Each line is stamped with the seconds since the start, so a run cut short still shows where its time went.
timeout --signal=TERM --kill-after=60 "$BUDGET" "$PY" benchmarks/recompress.py "${ARGS[@]}" --workers "${WORKERS:-12}" \
    --work "$WORK" 2>&1 | while IFS= read -r line; do printf '%5d s  %s\n' "$(( $(date +%s) - start ))" "$line"; done
echo "compression: $(( $(date +%s) - start )) s of a $BUDGET s budget"
"$PY" benchmarks/recompress.py "${ARGS[@]}" --work "$WORK" --finished-only
