#!/usr/bin/env bash
# The runner on one GPU, no internet: throughput, padding, MFU, peak memory against the plan,
# host memory, the NTK at probeSize 64 and (1.5B) the save of the fine-tuned model, timed with
# the host memory it adds, for randomly initialised Qwen2.5-class models (0.5B, 1.5B, 7B;
# configs in bench/configs, nothing downloaded). Prints one table; about 5 minutes on an H100.
#
#   bash bench/gpu.sh                 # on a GPU machine, from the repository root
#   bash bench/gpu.sh --cpu-smoke     # the same script logic on the CPU with a tiny model (tests run this)
#
# Every case runs in its own process with a time limit, so one failure (out of memory, a
# refusal by the plan) costs one row, not the table. Results: $OUT/runner-throughput.jsonl
# (or bench-results/ without $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
RESULTS=${OUT:-bench-results}/runner-throughput.jsonl
mkdir -p "$(dirname "$RESULTS")" && : > "$RESULTS"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BUDGET=${BENCH_BUDGET_S:-450}   # stop starting new cases after this many seconds (the run must end within 8 minutes)
START=$SECONDS

run_case() {  # name limit_seconds args...
  local name=$1 limit=$2
  shift 2
  if (( SECONDS - START + limit > BUDGET )); then
    echo "{\"name\": \"$name\", \"method\": \"-\", \"error\": \"skipped: time budget\"}" >> "$RESULTS"
    return
  fi
  echo "== $name ($(( SECONDS - START ))s)" >&2
  timeout "$limit" "$PY" bench/runner_throughput.py --name "$name" "$@" >> "$RESULTS"
  local rc=$?
  # Exit 1 is a failure the benchmark reported in its own row (WillNotFit, out of memory).
  if [ $rc -ne 0 ] && [ $rc -ne 1 ]; then
    echo "{\"name\": \"$name\", \"method\": \"-\", \"error\": \"exit $rc (124: over its $limit s)\"}" >> "$RESULTS"
  fi
}

if [ "${1:-}" = "--cpu-smoke" ]; then
  COMMON=(--tiny --device cpu --examples 16 --warmup 8 --test-examples 16 --median-len 40 --max-len 96)
  run_case tiny-full 120 "${COMMON[@]}" --method full --ntk-probe 4 --save
  run_case tiny-lora 120 "${COMMON[@]}" --method lora --ntk-probe 4
  run_case tiny-ntk-all-sketch 120 "${COMMON[@]}" --method lora --examples 0 --ntk-probe 4 --ntk-scope all --ntk-method sketch
  run_case tiny-will-not-fit 120 "${COMMON[@]}" --method full --gpu-memory 1000000
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
  COMMON=(--device cuda --examples 1024 --warmup 64 --test-examples 256 --median-len 150 --max-len 512 --batch-size 8)
  run_case qwen2.5-0.5b 90 --config bench/configs/qwen2.5-0.5b.json "${COMMON[@]}" --method full --ntk-probe 64
  run_case qwen2.5-0.5b-lora 75 --config bench/configs/qwen2.5-0.5b.json "${COMMON[@]}" --method lora --ntk-probe 64
  run_case qwen2.5-1.5b 120 --config bench/configs/qwen2.5-1.5b.json "${COMMON[@]}" --method full --ntk-probe 64 --save
  run_case qwen2.5-7b-lora 120 --config bench/configs/qwen2.5-7b.json "${COMMON[@]}" --method lora --ntk-probe 64
  # 7B full fine-tuning does not fit 80 GB with float32 master weights and AdamW states (the plan
  # refuses it); its NTK over all 7.6B weights (the sketch) is measured on the LoRA-wrapped model.
  run_case qwen2.5-7b-full-plan 30 --config bench/configs/qwen2.5-7b.json "${COMMON[@]}" --method full --examples 0
  run_case qwen2.5-7b-ntk-all 90 --config bench/configs/qwen2.5-7b.json "${COMMON[@]}" --method lora --examples 0 \
    --ntk-probe 64 --ntk-scope all
  # Last, with what is left of the budget (at least 120 s): compiling a 24-layer body for training and for
  # evaluation took longer than 120 s on an H200. Its warm-up columns hold the compile times.
  left=$(( BUDGET - (SECONDS - START) ))
  run_case qwen2.5-0.5b-compile $(( left > 120 ? left : 120 )) --config bench/configs/qwen2.5-0.5b.json "${COMMON[@]}" \
    --method full --compile
fi
"$PY" bench/runner_throughput.py --table "$RESULTS"
echo "results: $RESULTS ($(( SECONDS - START ))s)" >&2
