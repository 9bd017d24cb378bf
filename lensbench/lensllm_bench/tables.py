"""Assemble a generation's result files into LensBench tables.

Per task, in OUT/tables/:
- `TASK.csv`: the `lensllm bench` curves format, bits per byte with seed 0 (what one
  selection run sees): `model`, `0` (zero-shot), one column per subset size, then the
  ground-truth column (the full training set, the largest size), `size`, `family`, `uniform`
  (what a uniform guess over the model's vocabulary scores on the test set, bits per byte);
- `TASK.ntk.json`: the ground-truth size and every model's NTK summary, as the runner
  measured it (`lensllm.curves_io` reads it next to the CSV);
- `TASK.points.csv`: every measurement, all seeds and metrics, for noise estimates.
And `zoo.csv`: how every model was made.
"""

import csv
import json
import math
from pathlib import Path

from lensllm_bench.measure import point_path
from lensllm_bench.zoo import ZooModel

FORMAT = "lensbench-ntk/1"
POINT_COLUMNS = ("model", "seed", "size", "loss", "loss_per_example", "bits_per_byte", "train_seconds", "train_flops")


def six_digits(value: float) -> str:
    return f"{value:.6g}"


def write_tables(out: Path, tasks: list[str], zoo: list[ZooModel], budget) -> None:
    results, folder = out / "results", out / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    params = {}
    for task in tasks:
        target = _target(results, task, zoo[0].name)
        sizes = [*budget.sizes, target]
        base = {m.name: _load(point_path(results, task, m.name, 0, 0)) for m in zoo}
        params.update({name: doc["resources"]["parameters"] for name, doc in base.items()})
        with open(folder / f"{task}.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["model", "0", *sizes, "size", "family", "uniform"])
            for m in zoo:
                curve = [_load(point_path(results, task, m.name, 0, s))["point"]["test"]["bitsPerByte"] for s in sizes]
                zero = base[m.name]["zeroShot"]
                row = [m.name, six_digits(zero["bitsPerByte"]), *map(six_digits, curve), params[m.name], m.family, six_digits(_uniform(zero, m))]
                writer.writerow(row)
        ntk = {m.name: _ntk(base[m.name]["ntk"]) for m in zoo}
        doc = {"format": FORMAT, "target": target, "metric": "bitsPerByte", "models": ntk}
        (folder / f"{task}.ntk.json").write_text(json.dumps(doc, indent=1) + "\n")
        _write_points(folder / f"{task}.points.csv", results, task, zoo)
    with open(folder / "zoo.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["model", "family", "width", "depth", "vocab", "corpus", "pretrain_steps", "parameters"])
        for m in zoo:
            writer.writerow([m.name, m.family, m.width, m.depth, m.vocab, m.corpus, m.steps, params[m.name]])


def _uniform(zero_shot: dict, model: ZooModel) -> float:
    """A uniform guess's bits per byte on the test set. Results written before the runner recorded it give it
    through the zero-shot point itself: both are per token over the same tokens and bytes, so they scale alike."""
    if "uniformBitsPerByte" in zero_shot:
        return zero_shot["uniformBitsPerByte"]
    return zero_shot["bitsPerByte"] * math.log(model.vocab) / zero_shot["loss"]


def _target(results: Path, task: str, model: str) -> int:
    """The ground-truth size: the training set, the largest size measured."""
    return max(int(p.stem.split("-n")[1]) for p in (results / task / model).glob("s0-n*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _ntk(summary: dict) -> dict:
    keep = ("n", "eta", "scope", "parameters", "residualNormSq")
    return {
        **{k: summary[k] for k in keep},
        "eigenvalues": [float(six_digits(v)) for v in summary["eigenvalues"]],
        "projectionsSq": [float(six_digits(v)) for v in summary["projectionsSq"]],
    }


def _write_points(path: Path, results: Path, task: str, zoo: list[ZooModel]) -> None:
    rows = []
    for m in zoo:
        for file in sorted((results / task / m.name).glob("s*-n*.json")):
            seed, size = (int(x) for x in file.stem[1:].split("-n"))
            doc = _load(file)
            test = doc["point"]["test"] if size else doc["zeroShot"]
            train = doc["point"]["train"] if size else None
            rows.append((m.name, seed, size, test["loss"], test["lossPerExample"], test["bitsPerByte"],
                         train["seconds"] if train else 0.0, train["flops"] if train else 0.0))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(POINT_COLUMNS)
        writer.writerows([r[0], r[1], r[2], *map(six_digits, r[3:])] for r in rows)
