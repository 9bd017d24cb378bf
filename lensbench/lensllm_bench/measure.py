"""One measurement unit of LensBench: a (model, task, seed) and its subset sizes, run by the runner.

Every number in LensBench comes from `lensllm.trial.recipe.run_trial` with a `TrialSpec`,
the call `lensllm run-trial` makes, so the benchmark measures the product. Results land in
one file per (model, task, size, seed); the zero-shot loss and the NTK go in size 0's file.
A unit that is run again resumes: the runner gets the points already on disk and skips them.

Called by `lensllm_bench.generate` in worker processes.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from lensllm.trial.result import TrialResult
from lensllm.trial.spec import CandidateSpec, DatasetSpec, NTKSpec, TrainingSpec, TrialSpec

# The fine-tuning every measurement uses: full fine-tuning, two passes over each subset.
TRAINING = TrainingSpec(method="full", learning_rate=1e-3, epochs=2, batch_size=8, max_seq_length=64)
NTK_PROBE = 32


@dataclass(frozen=True)
class Unit:
    """The sizes one runner call measures for a model on a task with a seed."""

    model: str
    task: str
    seed: int
    sizes: tuple[int, ...]
    ntk: bool  # measure the NTK too (once per model and task, with seed 0)

    @property
    def label(self) -> str:
        return f"{self.task}/{self.model} seed {self.seed} sizes {','.join(map(str, self.sizes))}"


def point_path(results: Path, task: str, model: str, seed: int, size: int) -> Path:
    """The file of one (model, task, size, seed); size 0 holds the zero-shot loss and the NTK."""
    return results / task / model / f"s{seed}-n{size}.json"


def trial_spec(unit: Unit, model_dir: Path, task_dir: Path, *, target: int, n_test: int) -> TrialSpec:
    return TrialSpec(
        candidate=CandidateSpec(model=str(model_dir.resolve()), dtype="float32"),
        dataset=DatasetSpec(
            source=str(task_dir.resolve()),
            input_field="input",
            target_field="target",
            prompt_template="{input} =",
            max_test_examples=n_test,
        ),
        subset_sizes=list(unit.sizes),
        target_size=target,
        seed=unit.seed,
        fit_metric="bitsPerByte",
        device="cpu",
        training=TRAINING,
        ntk=NTKSpec(enabled=unit.ntk, probe_size=NTK_PROBE),
    )


def pending(unit: Unit, results: Path) -> bool:
    """Whether any file of the unit is missing."""
    sizes = (0, *unit.sizes) if unit.ntk else unit.sizes
    return any(not point_path(results, unit.task, unit.model, unit.seed, s).exists() for s in sizes)


def run_unit(unit: Unit, spec: TrialSpec, results: Path) -> dict:
    """Run the unit's missing sizes through the runner; a summary with its status and CPU seconds."""
    from lensllm.trial.recipe import run_trial  # torch: only in the worker

    start_cpu, start = time.process_time(), time.perf_counter()
    resume = _resume(unit, spec, results)
    result = run_trial(spec, resume=resume, on_checkpoint=lambda r: _save(unit, r, results))
    if result.status == "Succeeded":
        _save(unit, result, results)
    return {
        "unit": unit.label,
        "status": result.status,
        "message": result.message,
        "cpu_seconds": time.process_time() - start_cpu,
        "seconds": time.perf_counter() - start,
    }


def _resume(unit: Unit, spec: TrialSpec, results: Path) -> TrialResult | None:
    """What earlier attempts measured, as the runner's own resume document."""
    docs = {s: _read(point_path(results, unit.task, unit.model, unit.seed, s)) for s in (0, *unit.sizes)}
    docs = {s: d for s, d in docs.items() if d is not None}
    if not docs:
        return None
    base = docs.get(0) or next(iter(docs.values()))
    return TrialResult(
        status="Running",
        spec=spec,
        zero_shot=base["zeroShot"],
        ntk=docs[0]["ntk"] if unit.ntk and 0 in docs else None,
        points=[docs[s]["point"] for s in unit.sizes if s in docs],
    )


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _save(unit: Unit, result: TrialResult, results: Path) -> None:
    """Write the file of every size (and of size 0) that is measured and not on disk yet."""
    common = {
        "spec": result.spec.model_dump(mode="json", by_alias=True),
        "zeroShot": result.zero_shot.model_dump(mode="json", by_alias=True),
        "resources": result.resources.model_dump(mode="json", by_alias=True) if result.resources else None,
    }
    files = {}
    if unit.ntk and result.ntk is not None:
        files[0] = {**common, "ntk": result.ntk.model_dump(mode="json", by_alias=True)}
    for point in result.points:
        files[point.size] = {**common, "point": point.model_dump(mode="json", by_alias=True)}
    for size, doc in files.items():
        path = point_path(results, unit.task, unit.model, unit.seed, size)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            tmp.replace(path)  # atomic: a killed generator never leaves half a file
