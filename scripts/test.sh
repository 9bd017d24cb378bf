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
.venv/bin/python -m pytest
for suite in chaos fuzz load; do
  echo "== reliability suite: $suite"
  .venv/bin/python -m pytest -m "$suite" tests/reliability
done
