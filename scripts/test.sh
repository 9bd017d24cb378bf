#!/usr/bin/env bash
# Set up the development environment (.venv) and run every check: the import
# boundaries, the whole test suite, then the reliability suites (chaos, bad input,
# load), each as its own pytest run. The README's Quickstart and .ci/run call this.
# With arguments, runs only `pytest ARGS` (e.g. one test file).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "lensllm needs Python >= 3.11 as python3" >&2; exit 2; }
[ -x .venv/bin/python ] || python3 -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: its CPU wheel lies on this machine's disk; anything that pulls
# torch unpinned would fetch a multi-GB CUDA build.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[runner,operator,dev]'

# The monitoring test scrapes the operator with Debian's Prometheus server.
bash scripts/fetch_prometheus.sh

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/lint-imports
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# One worker per core, whole files to a worker (their module fixtures, e.g. an emulated cluster, are built once).
.venv/bin/python -m pytest -n "$(nproc)" --dist loadfile
# Here the reliability suites run at a size that keeps the whole script under 20 minutes on 2 cores;
# `scripts/reliability_figures.py` runs them at full size (50 chaos runs, 500 bad manifests, 100 selections
# x 10 candidates, fixed and racing) and prints the figures. Set the knobs to run the full size here too.
# The 12 chaos runs hold all three strategies (fixed, race, a race that settles), every fault kind and every refused status code (a test checks).
export LENSLLM_CHAOS_RUNS=${LENSLLM_CHAOS_RUNS:-12} LENSLLM_FUZZ_EXAMPLES=${LENSLLM_FUZZ_EXAMPLES:-100} \
  LENSLLM_LOAD_SELECTIONS=${LENSLLM_LOAD_SELECTIONS:-20}
for suite in chaos fuzz load; do
  echo "== reliability suite: $suite"
  .venv/bin/python -m pytest -m "$suite" tests/reliability
done
