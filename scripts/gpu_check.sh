#!/usr/bin/env bash
# `make gpu-check`: what only a GPU can measure, in at most ~8 minutes on one GPU, written under
# reports/bench/gpu/ (each part's command, output and exit status; a part that fails or runs out of time is
# recorded and the next one runs, so the folder always holds what could be measured):
#   1. the CUDA-marked tests (tests/test_gpu_guards.py: no host sync, CUDA graph replay == eager)
#   2. hopelab bench --scale small: hope and the Transformer eager, hope with its chunk steps compiled,
#      both captured as CUDA graphs (+captured: the eager step replayed, no compile); 2 repeats, with the
#      saved activations and the peak CUDA memory of a step
#   3. hope and the Transformer eager and with the whole model compiled and replayed as CUDA graphs
#      (--cudagraphs), at GRAPHS_SCALE (default tiny: the whole-model compile unrolls every chunk, and at small
#      takes longer than this check has; GRAPHS_SCALE=small T_GRAPHS=1200 measures it there)
#   4. a 50-step `small` hope run with probes
# Usage: make gpu-check [GPU_PY=python]; per-part limits in seconds: T_TESTS, T_BENCH, T_GRAPHS, T_TRAIN.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${GPU_PY:-python3}"
OUT="${GPU_OUT:-reports/bench/gpu}"
mkdir -p "$OUT"
SUMMARY="$OUT/SUMMARY.md"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}"

{
  echo "# make gpu-check"
  echo
  echo "Started $(date -u +%FT%TZ) on $(hostname); git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
  echo '```'
  echo
  echo "| part | status | seconds | command |"
  echo "|---|---|---:|---|"
} > "$SUMMARY"

# part NAME LIMIT_S COMMAND...: run it under a time limit, its output to $OUT/NAME.log, a row in the summary
part() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS status=0
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1 || status=$?
  local word="ok"
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then word="timed out"; elif [ "$status" -ne 0 ]; then word="failed ($status)"; fi
  echo "| $name | $word | $((SECONDS - t0)) | \`$*\` |" >> "$SUMMARY"
  echo "   $word in $((SECONDS - t0)) s (log: $OUT/$name.log)"
  tail -n 3 "$OUT/$name.log" | sed 's/^/   /'
}

BENCH=(-m hopelab.cli bench --repeats 2 --device cuda --no-probes --no-audit --no-reference)
part tests "${T_TESTS:-60}" "$PY" -m pytest -q -m cuda tests/test_gpu_guards.py -p no:cacheprovider
part bench-eager-compiled-captured "${T_BENCH:-140}" "$PY" "${BENCH[@]}" --scale small --compile \
  --variants hope,transformer,hope+captured,transformer+captured --out "$OUT/eager-compiled-captured"
part bench-cudagraphs "${T_GRAPHS:-170}" "$PY" "${BENCH[@]}" --scale "${GRAPHS_SCALE:-tiny}" \
  --variants hope,transformer --cudagraphs --out "$OUT/cudagraphs"
rm -rf runs/gpu-check  # this check's own run: trained afresh each time (a finished run is not retrained)
part train-small-50 "${T_TRAIN:-100}" "$PY" -m hopelab.cli train --variant hope --scale small --steps 50 \
  --set ckpt_every=25 --set val_batches=2 --accelerator gpu --devices 1 --study gpu-check --out runs
RUN=runs/gpu-check/small/hope/seed0  # its checkpoints stay there; what it measured is copied beside the rest
mkdir -p "$OUT/train-small-50"
cp -r "$RUN"/manifest.json "$RUN"/config.json "$RUN"/metrics.parquet "$RUN"/probes "$OUT/train-small-50/" 2>/dev/null || true

{
  echo
  echo "Ended $(date -u +%FT%TZ). Each part's output is in <part>.log; the benches' tables in"
  echo "eager-compiled-captured/README-small.md and cudagraphs/README-${GRAPHS_SCALE:-tiny}.md; the run's manifest,"
  echo "metrics and probes in train-small-50/ (its checkpoints in $RUN)."
} >> "$SUMMARY"
cat "$SUMMARY"
