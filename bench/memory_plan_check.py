"""Predicted against measured peak memory of each phase of a trial: the memory plan's honesty check.

    python bench/memory_plan_check.py --spec SPEC.yaml [--size N] [--phases train,evaluate,ntk]

Each phase runs in a fresh process (freed memory stays in a process's heap and would blur
the next phase): the recipe prepares data and plans, loads the weights, runs the phase
(`train(size)`, `evaluate()` or `measure_ntk()`), and reports its peak. On a GPU the peak
is torch's allocated-memory high-water mark, as the plan counts it; on the CPU it is the
growth of the resident set from just before the weights load (Linux: VmHWM, reset through
/proc/self/clear_refs), which also holds what a CPU run keeps on the host (the snapshot);
modules torch imports on first use are imported before that baseline (code is not a tensor),
and glibc and MKL are told to return freed memory at once (see MALLOC_RETURNS_MEMORY).
Prints one JSON line per phase and a summary table.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

PHASES = ("train", "evaluate", "ntk")
# glibc keeps freed memory in its heap by default, so the resident set records fragmentation
# (3x the live tensors in an NTK phase here), and MKL's own memory manager keeps its GEMM
# buffers for reuse (10-15 MiB of an 8k-vocabulary head's evaluation, 13% of that phase);
# these make both give freed memory back at once, and the resident set then follows the live
# tensors, which is what the plan predicts.
MALLOC_RETURNS_MEMORY = {"MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "1048576", "MKL_DISABLE_FAST_MM": "1"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, required=True, help="trial spec (YAML or JSON)")
    p.add_argument("--size", type=int, help="training examples for the train phase (default: the largest subset)")
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated phases (default: all)")
    p.add_argument("--one", choices=PHASES, help=argparse.SUPPRESS)  # a single phase, in this process
    return p.parse_args(argv)


def resident_bytes(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def measure(spec_path: Path, phase: str, size: int | None) -> dict:
    """Run one phase here and return its predicted and measured peak bytes."""
    import torch

    from lensllm.trial.documents import read_spec
    from lensllm.trial.modeling import load_model
    from lensllm.trial.recipe import TrialRecipe

    torch.set_num_threads(1)
    recipe = TrialRecipe(read_spec(str(spec_path)))
    recipe.setup_data()
    warm_up_lazy_imports()
    cuda = recipe.device.type == "cuda"
    before = 0 if cuda else resident_bytes("VmRSS")
    recipe.setup_model(load_model(recipe.spec.candidate, dtype=recipe.dtype, device=recipe.device))
    if cuda:
        torch.cuda.reset_peak_memory_stats(recipe.device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    if phase == "train":
        recipe.train(size or recipe.sizes[-1])
    elif phase == "evaluate":
        recipe.evaluate()
    else:
        recipe.measure_ntk()
    measured = torch.cuda.max_memory_allocated(recipe.device) if cuda else resident_bytes("VmHWM") - before
    predicted = recipe.plan.phase(phase).bytes
    return {"phase": phase, "predicted": predicted, "measured": measured, "ratio": predicted / measured}


def warm_up_lazy_imports() -> None:
    """Import the model-loading code and peft, and use torch.func, autograd, AdamW and LAPACK once on
    tiny inputs, before the baseline is taken.

    The runner imports these on first use (torch.func alone grows the resident set by ~75 MiB of
    code, peft and transformers' model loading by ~30 MiB, numpy's BLAS allocates its buffers):
    host memory the plan does not predict, because it is no tensor and no GPU holds it.
    """
    import numpy as np
    import torch
    from torch.func import grad_and_value

    import peft  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    np.linalg.eigh(np.eye(2))
    weight = torch.ones(4, requires_grad=True)
    grad_and_value(lambda w: (w * w).sum())(weight.detach())
    (weight * weight).sum().backward()
    torch.optim.AdamW([weight]).step()


def check(spec: Path, phases: list[str], size: int | None) -> list[dict]:
    """Every phase in its own process; their JSON lines."""
    rows = []
    for phase in phases:
        command = [sys.executable, __file__, "--spec", str(spec), "--one", phase]
        if size:
            command += ["--size", str(size)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", **MALLOC_RETURNS_MEMORY}
        proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"phase {phase} failed: {proc.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.spec, args.one, args.size)))
        return 0
    rows = check(args.spec, [p for p in args.phases.split(",") if p], args.size)
    print(f"{'phase':10}{'predicted MiB':>15}{'measured MiB':>15}{'predicted/measured':>20}")
    for row in rows:
        print(f"{row['phase']:10}{row['predicted'] / 2**20:15.1f}{row['measured'] / 2**20:15.1f}{row['ratio']:20.2f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
