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

from lensllm.science.metrics import relacc
from lensllm.science.selectors import select
from lensllm.selection.status import LLMSelectionStatus, selection_curves
from lensllm_bench.measure import NTK_PROBE, TRAINING, point_path

COLUMNS = ("task", "picked", "picked_truth", "best", "best_truth", "relacc", "compute_fraction",
           "estimated_fraction", "max_point_difference", "picked_when_run")


@dataclass(frozen=True)
class Outcome:
    task: str
    picked: str
    picked_truth: float
    best: str
    best_truth: float
    relacc: float
    compute_fraction: float  # FLOPs the selection spent / FLOPs the generator spent on the full fine-tunes
    estimated_fraction: float  # the selection's own estimate of the same (status.compute.fractionOfFull)
    max_point_difference: float  # largest |bits per byte| gap between the selection's points and the generator's
    picked_when_run: str  # status.best, ranked by the default of the code that ran the selection


def manifest(task: str, models: list[str], out: Path, budget) -> dict:
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
        },
    }


def write_manifest(task: str, models: list[str], out: Path, budget) -> Path:
    folder = out / "e2e" / task
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "selection.yaml"
    path.write_text(yaml.safe_dump(manifest(task, models, out, budget), sort_keys=False))
    return path


def run_task(task: str, models: list[str], out: Path, budget, workers: int) -> Outcome:
    """Run the task's selection (unless a completed one is on disk) and score its pick."""
    path = write_manifest(task, models, out, budget)
    status_path = path.parent / "run" / "status.json"
    if not (status_path.exists() and json.loads(status_path.read_text()).get("phase") == "Complete"):
        command = [sys.executable, "-m", "lensllm.cli.main", "select", str(path), "--local", "--workers", str(workers),
                   "--out", str(path.parent / "run")]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return score(task, models, json.loads(status_path.read_text()), out / "results", budget.target)


def shipped_pick(status: dict, target: int) -> str:
    """The candidate today's `default` ranks first, from the selection's own measurements."""
    curves, spectra = selection_curves(LLMSelectionStatus.model_validate(status))
    return curves.models[select("default", curves, target, ntk=spectra).best]


def score(task: str, models: list[str], status: dict, results: Path, target: int) -> Outcome:
    truth_docs = {m: json.loads(point_path(results, task, m, 0, target).read_text())["point"] for m in models}
    truth = [truth_docs[m]["test"]["bitsPerByte"] for m in models]
    picked = models.index(shipped_pick(status, target))
    best = min(range(len(models)), key=truth.__getitem__)
    full = sum(doc["train"]["flops"] for doc in truth_docs.values())
    spent = sum(status["candidates"][m]["flops"] for m in models)
    gaps = [
        abs(p["bitsPerByte"] - json.loads(point_path(results, task, m, 0, p["size"]).read_text())["point"]["test"]["bitsPerByte"])
        for m in models
        for p in status["candidates"][m]["points"]
    ]
    return Outcome(task, models[picked], truth[picked], models[best], truth[best], relacc(truth, picked),
                   spent / full, status["compute"]["fractionOfFull"], max(gaps), status["best"])


def write(outcomes: list[Outcome], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for o in outcomes:
            writer.writerow([o.task, o.picked, f"{o.picked_truth:.6g}", o.best, f"{o.best_truth:.6g}", f"{o.relacc:.4f}",
                             f"{o.compute_fraction:.4f}", f"{o.estimated_fraction:.4f}", f"{o.max_point_difference:.3g}",
                             o.picked_when_run])
