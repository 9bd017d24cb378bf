#!/usr/bin/env bash
# Set up the development environment (.venv) and run every check: the import
# boundaries and the whole test suite. The README's Quickstart and .ci/run call this.
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

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
