#!/usr/bin/env bash
# Fetch, on a machine with a package index, the wheels a GPU machine without network lacks to run
# bench/gpu_offline.sh: what the runner needs beyond the machine's own torch, transformers, peft and
# pyarrow. For every Python the machine may have; a few MiB, within what a device run carries.
#
#   bash bench/gpu_wheels.sh [DIR]          # default build/gpu-wheels
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-build/gpu-wheels}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p "$DEST"
for version in 3.11 3.12 3.13; do
  # pydantic with its dependencies: pydantic-core must be the exact version this pydantic wants.
  "$PY" -m pip download --quiet --python-version "$version" --only-binary=:all: -d "$DEST" pydantic
  "$PY" -m pip download --quiet --python-version "$version" --only-binary=:all: --no-deps -d "$DEST" \
    datasets dill multiprocess
done
du -sh "$DEST" >&2
