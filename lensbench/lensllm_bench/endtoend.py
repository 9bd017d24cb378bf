"""`lensllm lensbench e2e`: run `lensllm select --local` on each task of a generation and score its pick.

For every task the whole zoo becomes one LLMSelection with the generator's budget and
training settings and the `default` method, run exactly as a user would run it (a
`lensllm select --local` process). Its pick is then scored against the ground truth the
generator measured: the picked model's true loss after fine-tuning on the full training
set against the best model's (RelAcc), and the compute spent against what fully
fine-tuning every candidate cost. The pick is re-ranked from the selection's own status
with the `default` this code ships (as `lensllm report` would), so a selection run before
`default` last changed still scores today's default; the pick at run time is kept too. The selection's own measurements are compared with the
generator's (same spec, same seed: they must agree), which checks that LensBench measures
the product.
"""

import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from lensllm.errors import LensLLMError
from lensllm.science.metrics import relacc
from lensllm.science.selectors import select
from lensllm.selection.status import LLMSelectionStatus, selection_curves
from lensllm_bench.generate import PlanMismatch
from lensllm_bench.measure import NTK_PROBE, TRAINING
from lensllm_bench.tables import six_digits

COLUMNS = ("task", "strategy", "picked", "picked_truth", "best", "best_truth", "relacc", "compute_fraction",
           "estimated_fraction", "max_point_difference", "picked_when_run", "rounds")


@dataclass(frozen=True)
class Outcome:
    task: str
    strategy: str  # fixed: every candidate on every size; race: only those that may still win (issue 11)
    picked: str
    picked_truth: float
    best: str
    best_truth: float
    relacc: float
    compute_fraction: float  # FLOPs the selection spent / FLOPs the generator spent on the full fine-tunes
    estimated_fraction: float  # the selection's own estimate of the same (status.compute.fractionOfFull)
    max_point_difference: float  # largest |bits per byte| gap between the selection's points and the generator's
    picked_when_run: str  # status.best, ranked by the default of the code that ran the selection
    rounds: int  # rounds the race ran (1 for a fixed budget)


def manifest(task: str, models: list[str], out: Path, budget, strategy: str) -> dict:
    """The LLMSelection a user would write for this task and zoo."""
    doublings = len(budget.sizes) - 1
    return {
        "apiVersion": "lensllm.io/v1alpha1",
        "kind": "LLMSelection",
        "metadata": {"name": f"lensbench-{task}"},
        "spec": {
            "candidates": [{"name": m, "model": str((out / "zoo" / m).resolve()), "dtype": "float32"} for m in models],
            "dataset": {"source": str((out / "tasks" / task).resolve()), "inputField": "input", "targetField": "target",
                        "promptTemplate": "{input} =", "maxTestExamples": budget.n_test},
            "budget": {"baseSize": budget.base, "doublings": doublings, "targetSize": budget.target},
            "training": TRAINING.model_dump(mode="json", by_alias=True, exclude_defaults=True),
            "ntk": {"probeSize": NTK_PROBE},
            "method": "default",
            "parallelism": 1,
            "strategy": strategy,
        },
    }


def write_manifest(task: str, models: list[str], out: Path, budget, strategy: str) -> Path:
    folder = out / "e2e" / strategy / task
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "selection.yaml"
    path.write_text(yaml.safe_dump(manifest(task, models, out, budget, strategy), sort_keys=False))
    return path


def run_task(task: str, models: list[str], out: Path, tables: Path, budget, workers: int, strategy: str) -> Outcome:
    """Run the task's selection (unless a completed one is on disk) and score its pick against `tables`."""
    path = write_manifest(task, models, out, budget, strategy)
    status_path = path.parent / "run" / "status.json"
    if not (status_path.exists() and json.loads(status_path.read_text()).get("phase") == "Complete"):
        select_locally(task, path, workers)
    points = read_points(tables / f"{task}.points.csv")
    return score(task, strategy, models, json.loads(status_path.read_text()), points, budget.target)


class SelectionFailed(RuntimeError):
    """`lensllm select --local` failed on a task: its exit code is e2e's, its last words the message."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def select_locally(task: str, manifest_path: Path, workers: int) -> None:
    """Run the task's selection as a user would; its output goes to select.log beside the manifest."""
    log = manifest_path.parent / "select.log"
    command = [sys.executable, "-m", "lensllm.cli.main", "select", str(manifest_path), "--local", "--workers", str(workers),
               "--out", str(manifest_path.parent / "run")]
    with open(log, "w") as out:
        code = subprocess.run(command, check=False, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        why = first_failure(manifest_path.parent / "run" / "status.json") or _last_line(log)
        raise SelectionFailed(f"{task}: `lensllm select --local` exited {code}: {why} (all its output: {log})", code)


def first_failure(status_path: Path) -> str | None:
    """The first failed candidate and why, as the selection's status says; None without a status that says it."""
    try:
        candidates = json.loads(status_path.read_text()).get("candidates") or {}
    except (OSError, ValueError):
        return None
    failed = [(name, c) for name, c in candidates.items() if c.get("state") == "Failed"]
    return next((f"candidate {name} failed: {c.get('reason')}: {c.get('message')}" for name, c in failed), None)


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def check_same_plan(out: Path, tables: Path) -> None:
    """Refuse to score a generation's selections against tables of another plan (another seed: another zoo)."""
    mine, theirs = out / "plan.json", tables / "plan.json"
    if mine.exists() and theirs.exists() and json.loads(mine.read_text()) != json.loads(theirs.read_text()):
        raise PlanMismatch(f"--tables {tables}: measured with another plan than --out {out} ({theirs} and {mine} "
                           "differ): their truth is another zoo's")


def check_truth(tasks: list[str], models: list[str], tables: Path, budget) -> None:
    """Every point the scores read is in the truth tables: a table of another zoo or budget is refused before hours of
    selections, not by a KeyError after them."""
    sizes = (*budget.sizes, budget.target)
    for task in tasks:
        path = tables / f"{task}.points.csv"
        try:
            points = read_points(path)
        except (KeyError, ValueError) as err:
            raise LensLLMError(f"{path}: not a LensBench points table ({type(err).__name__}: {err})") from None
        missing = [f"{m} at {s}" for m in models for s in sizes if (m, s) not in points]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise LensLLMError(f"{path}: no truth for {missing[0]}{more}: are these tables of this generation's zoo "
                               "and budget?")


def read_points(path: Path) -> dict[tuple[str, int], dict[str, float]]:
    """Seed 0's measurements of a `TASK.points.csv`, by (model, size): the generator's numbers as a table holds them."""
    with open(path, newline="") as f:
        return {(r["model"], int(r["size"])): {k: float(r[k]) for k in ("bits_per_byte", "train_flops")}
                for r in csv.DictReader(f) if r["seed"] == "0"}


def shipped_pick(status: dict, target: int) -> str:
    """The candidate today's `default` ranks first, from the selection's own measurements; a race's own pick
    (its eliminated candidates' curves stop short, so re-ranking them all together would not be the race's)."""
    if status.get("race"):
        return status["best"]
    curves, spectra = selection_curves(LLMSelectionStatus.model_validate(status))
    return curves.models[select("default", curves, target, ntk=spectra).best]


def score(task: str, strategy: str, models: list[str], status: dict, points: dict[tuple[str, int], dict[str, float]], target: int) -> Outcome:
    truth = [points[m, target]["bits_per_byte"] for m in models]
    picked = models.index(shipped_pick(status, target))
    best = min(range(len(models)), key=truth.__getitem__)
    full = sum(points[m, target]["train_flops"] for m in models)
    spent = sum(status["candidates"][m]["flops"] for m in models)
    # Rounded as the table rounds, so that identical measurements differ by exactly 0.
    gaps = [abs(float(six_digits(p["bitsPerByte"])) - points[m, p["size"]]["bits_per_byte"])
            for m in models for p in status["candidates"][m]["points"]]
    rounds = len(status["race"]["rounds"]) if status.get("race") else 1
    return Outcome(task, strategy, models[picked], truth[picked], models[best], truth[best], relacc(truth, picked),
                   spent / full, status["compute"]["fractionOfFull"], max(gaps), status["best"], rounds)


def write(outcomes: list[Outcome], path: Path) -> None:
    """Add the outcomes to the table at `path`, replacing the rows of the same task and strategy."""
    fresh = [[o.task, o.strategy, o.picked, f"{o.picked_truth:.6g}", o.best, f"{o.best_truth:.6g}", f"{o.relacc:.4f}",
              f"{o.compute_fraction:.4f}", f"{o.estimated_fraction:.4f}", f"{o.max_point_difference:.3g}",
              o.picked_when_run, str(o.rounds)] for o in outcomes]
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.reader(f)
            if tuple(next(reader, ())) == COLUMNS:
                replaced = {(row[0], row[1]) for row in fresh}
                kept = [row for row in reader if (row[0], row[1]) not in replaced]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(kept + fresh)
