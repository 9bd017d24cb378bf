"""A stand-in for the runner's training: `lensllm run-trial` exactly as shipped, with the recipe replaced by a fast,
deterministic synthetic learning curve.

For suites where the real fine-tuning is not the point but everything around it is: the chaos suite kills, evicts
and restarts trials and checks that no measured point is lost or measured twice. The kubelet
(tests/support/kubelet.py, `commands=`) runs `python stand_in_trial.py run-trial ARGS...` instead of
`lensllm run-trial ARGS...`. Everything but the training is the real runner: argument parsing, spec reading,
`--resume`, the result file rewritten after every size, the compact termination message, exit codes. The recipe:

- each subset size takes LENSLLM_STANDIN_SIZE_SECONDS (default 0.2 s), then yields a point of a rectified-law curve
  whose parameters depend only on the candidate's model (so every run, faulty or not, measures the same points);
- a size finished (its checkpoint written) is appended to the ledger LENSLLM_STANDIN_LEDGER (one JSON line: model,
  size, pod), which is how a suite counts points measured twice;
- a model whose path ends in `/missing` fails as the real recipe does for a model that is not there (ModelNotFound,
  exit 2), before measuring anything;
- the target size, when the spec asks to save its model (output.modelDir), saves a folder holding a config.json
  that names the candidate, over as long again as a size takes;
- sizes already in `--resume` are not measured again; the laws are fitted by the runner's own `fit_all` (unless
  LENSLLM_STANDIN_FITS=0);
- with LENSLLM_STANDIN_TABLE (a curves table in the `lensllm bench` format) the curve is instead the table's row
  named by the model path's last component: its losses, zero-shot and uniform-guess losses and parameter count, so a
  benchmark table's race runs through the real operator; LENSLLM_STANDIN_TRAIN_EXAMPLES is then the training split's
  size the result reports (what lets a race settle on the target size).
"""

import functools
import hashlib
import json
import os
import shutil
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

from lensllm.curves_io import read_curves
from lensllm.science.curves import Curves
from lensllm.trial.fits import fit_all
from lensllm.trial.result import Evaluation, NTKSummary, Resources, SizePoint, TrainingStats, TrialResult
from lensllm.trial.spec import TrialSpec

SIZE_SECONDS = "LENSLLM_STANDIN_SIZE_SECONDS"
LEDGER = "LENSLLM_STANDIN_LEDGER"
FITS = "LENSLLM_STANDIN_FITS"  # "0": leave the law fits out (the bad-input suite runs hundreds of trials)
TABLE = "LENSLLM_STANDIN_TABLE"
TRAIN_EXAMPLES = "LENSLLM_STANDIN_TRAIN_EXAMPLES"
PARAMETERS = 1_000_000


def curve(model: str) -> tuple[float, float, float, float]:
    """(B, D_l, beta, E) of the rectified law bits-per-byte(D) = B / (D_l + D^beta) + E, fixed by the model."""
    digest = hashlib.sha256(model.encode()).digest()
    unit = [byte / 255 for byte in digest[:4]]
    return 40 + 40 * unit[0], 20 + 60 * unit[1], 0.35 + 0.3 * unit[2], 0.8 + 0.6 * unit[3]


@functools.cache
def table() -> Curves | None:
    path = os.environ.get(TABLE)
    return read_curves(path) if path else None


def table_row(model: str) -> int:
    return table().models.index(Path(model).name)


def bits_per_byte(model: str, size: int) -> float:
    if table() is not None:
        losses = table().zero_shot if size == 0 else table().loss_at(size)
        return float(losses[table_row(model)])
    b, d_l, beta, e = curve(model)
    return b / (d_l + size**beta) + e


def parameters(model: str) -> int:
    return PARAMETERS if table() is None else int(table().params[table_row(model)])


def evaluation(spec: TrialSpec, size: int) -> Evaluation:
    bpb = bits_per_byte(spec.candidate.model, size)
    examples = spec.dataset.max_test_examples
    uniform = None if table() is None else float(table().uniform[table_row(spec.candidate.model)])
    return Evaluation(loss=bpb * 0.7, loss_per_example=bpb * 30, bits_per_byte=bpb, examples=examples,
                      tokens=examples * 12, seconds=0.01, flops=2.0 * PARAMETERS * examples * 12,
                      uniform_bits_per_byte=uniform)


def ntk_summary(spec: TrialSpec) -> NTKSummary | None:
    if not spec.ntk.enabled:
        return None
    n = spec.ntk.probe_size
    eigenvalues = [10.0 / (k + 1) for k in range(n)]
    projections = [1.0 / (k + 1) ** 2 for k in range(n)]
    return NTKSummary(n=n, eta=spec.ntk_eta, scope=spec.ntk.scope, parameters=PARAMETERS, eigenvalues=eigenvalues,
                      projections_sq=projections, residual_norm_sq=sum(projections), seconds=0.01)


def run_trial(spec: TrialSpec, *, resume: TrialResult | None = None,
              on_progress: Callable[[dict], None] | None = None,
              on_checkpoint: Callable[[TrialResult], None] | None = None,
              device_memory: int | None = None) -> TrialResult:
    """The recipe's interface (lensllm.trial.recipe.run_trial) over the synthetic curve (which needs no memory plan,
    so `device_memory` is accepted and not used)."""
    started = time.perf_counter()
    kept = [point for point in (resume.points if resume else []) if point.size in spec.subset_sizes]
    weights = parameters(spec.candidate.model)
    train_examples = os.environ.get(TRAIN_EXAMPLES)
    result = TrialResult(status="Running", candidate=spec.candidate.model, target_size=spec.target_size, spec=spec,
                         zero_shot=evaluation(spec, 0), ntk=ntk_summary(spec), points=kept,
                         train_examples=int(train_examples) if train_examples else None,
                         model_dir=resume.model_dir if resume and spec.target_size in {p.size for p in kept} else None,
                         resources=Resources(device="cpu", dtype="float32", parameters=weights,
                                             trainable_parameters=weights, peak_memory_bytes=1 << 20,
                                             peak_memory_kind="processRss"))
    if spec.candidate.model.endswith("/missing"):
        message = f"model {spec.candidate.model}: no such local directory and not a hub id"
        return result.model_copy(update={"status": "Failed", "reason": "ModelNotFound", "message": message,
                                         "seconds": time.perf_counter() - started})
    delay = float(os.environ.get(SIZE_SECONDS, "0.2"))
    for size in spec.subset_sizes:
        if any(point.size == size for point in result.points):
            continue
        time.sleep(delay)
        train = TrainingStats(steps=size, tokens=size * 12, final_loss=1.0, seconds=delay,
                              flops=6.0 * PARAMETERS * size * 12)
        if size == spec.target_size and spec.output.model_dir:
            result.model_dir = save_model(spec, Path(spec.output.model_dir), delay)
        result.points.append(SizePoint(size=size, test=evaluation(spec, size), train=train))
        if on_checkpoint is not None:
            on_checkpoint(result)
        record(spec, size)
        if on_progress is not None:
            on_progress({"event": "size", "size": size, "bitsPerByte": result.points[-1].test.bits_per_byte})
    result.points.sort(key=lambda point: point.size)
    if os.environ.get(FITS) != "0":
        result.fits = fit_all(result.zero_shot, result.points, target=spec.target_size, metric=spec.fit_metric,
                              ntk=result.ntk)
    result.status = "Succeeded"
    result.seconds = time.perf_counter() - started
    return result


def save_model(spec: TrialSpec, folder: Path, seconds: float) -> str:
    """The recipe's save, whole or not at all, of a stand-in model: a config naming the candidate it was tuned from,
    written over `seconds` (a real save takes a while: a trial killed meanwhile leaves a partial folder)."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "config.json").write_text(json.dumps({"tunedFrom": spec.candidate.model, "size": spec.target_size}))
    time.sleep(seconds)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return str(folder)


def record(spec: TrialSpec, size: int) -> None:
    """Append the finished size to the ledger, in one write (lines from concurrent pods never interleave)."""
    ledger = os.environ.get(LEDGER)
    if ledger:
        line = json.dumps({"model": spec.candidate.model, "size": size, "pod": os.environ.get("HOSTNAME", "")})
        with open(ledger, "a") as out:
            out.write(line + "\n")


def read_ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> int:
    """`lensllm ARGS...` with this module as the recipe."""
    recipe = types.ModuleType("lensllm.trial.recipe")
    recipe.run_trial = run_trial  # type: ignore[attr-defined]
    sys.modules["lensllm.trial.recipe"] = recipe
    from lensllm.cli.main import main as lensllm

    return lensllm(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
