#!/usr/bin/env bash
# The GPU benchmark and the GPU tests on a machine without network, in one command: installs the
# wheels bench/gpu_wheels.sh fetched (into a private folder, nothing of the machine's changes), then
# runs bench/gpu.sh and tests/runner/test_gpu.py with the machine's own Python, torch and transformers.
#
#   bash bench/gpu_offline.sh [WHEELS_DIR] [--cpu-smoke]     # default build/gpu-wheels
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=build/gpu-wheels
SMOKE=()
for arg in "$@"; do
  if [ "$arg" = "--cpu-smoke" ]; then SMOKE=(--cpu-smoke); else WHEELS=$arg; fi
done
PY=${PYTHON:-python3}
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
# --no-deps with the index off: pip picks, of each package, the wheel built for this Python.
if ! pip_out=$("$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$SITE" \
    pydantic pydantic-core annotated-types typing-inspection typing-extensions datasets dill multiprocess 2>&1); then
  why=$(grep -m1 '^ERROR' <<< "$pip_out" || tail -n1 <<< "$pip_out")
  echo "gpu_offline: cannot install the wheels in $WHEELS for $("$PY" -V) (${why#ERROR: }): run bench/gpu_wheels.sh where there is an index" >&2
  exit 2
fi
export PYTHONPATH="$SITE:$PWD/runner${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, transformers, peft, datasets, pydantic; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())" >&2
PYTHON=$PY bash bench/gpu.sh "${SMOKE[@]}"
bench=$?
"$PY" -m pytest -q -p no:cacheprovider --confcutdir=tests/runner tests/runner/test_gpu.py
tests=$?
exit $(( bench != 0 ? bench : tests ))
