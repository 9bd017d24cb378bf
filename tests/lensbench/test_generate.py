"""`lensllm lensbench generate --quick`: a miniature LensBench, measured by the runner, resumable, deterministic."""

import json
import shutil
import subprocess
import sys

import pytest

from lensllm.curves_io import read_curves
from lensllm_bench.generate import QUICK, units
from lensllm_bench.measure import point_path
from lensllm_bench.tasks import folder_task
from lensllm_bench.zoo import QUICK_ZOO

pytestmark = pytest.mark.slow
TASKS = ("docstring", "cipher")


def lensllm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lensllm.cli.main", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def generation(tmp_path_factory):
    out = tmp_path_factory.mktemp("lensbench")
    proc = lensllm("lensbench", "generate", "--out", str(out), "--quick", "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def bits_per_byte(path) -> float:
    return json.loads(path.read_text())["point"]["test"]["bitsPerByte"]


def test_every_model_task_size_and_seed_has_its_own_result_file(generation):
    tasks = [folder_task(generation / "tasks" / t) for t in TASKS]
    plan = units(QUICK_ZOO, tasks, QUICK)
    files = {point_path(generation / "results", u.task, u.model, u.seed, s) for u in plan for s in u.sizes}
    files |= {point_path(generation / "results", u.task, u.model, 0, 0) for u in plan if u.ntk}
    assert all(f.exists() for f in files)
    assert len(files) == len(TASKS) * len(QUICK_ZOO) * (1 + len(QUICK.sizes) + 2 + 1)  # n0, subsets, seed 1, truth
    doc = json.loads(point_path(generation / "results", "cipher", QUICK_ZOO[0].name, 0, 0).read_text())
    assert doc["ntk"]["n"] == 32 and len(doc["ntk"]["eigenvalues"]) == 32
    assert doc["spec"]["subsetSizes"] == list(QUICK.sizes)  # the runner's own spec echo: measured by run_trial


def test_the_tables_are_bench_tables_with_ntk_and_ground_truth(generation):
    for task in TASKS:
        curves = read_curves(generation / "tables" / f"{task}.csv")
        assert curves.models == tuple(m.name for m in QUICK_ZOO)
        assert curves.target_size == QUICK.target and curves.sizes.tolist() == [*QUICK.sizes, QUICK.target]
        assert all(s is not None and s.initial > 0 for s in curves.ntk)
        proc = lensllm("bench", str(generation / "tables" / f"{task}.csv"), "--methods", "lensllm,rectified,ats,default", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        assert {r["target_n"] for r in json.loads(proc.stdout)["rows"]} == {QUICK.target}


def test_a_rerun_measures_only_what_is_missing_and_reproduces_it_exactly(generation):
    results = generation / "results"
    model = QUICK_ZOO[1].name
    lost = [point_path(results, "cipher", model, 1, 8), point_path(results, "cipher", model, 0, QUICK.target)]
    before = [bits_per_byte(p) for p in lost]
    for path in lost:
        path.unlink()
    proc = lensllm("lensbench", "generate", "--out", str(generation), "--quick", "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 measurement units to run" in proc.stdout
    assert [bits_per_byte(p) for p in lost] == before


def test_a_folder_made_with_another_plan_is_refused_not_resumed(generation, tmp_path):
    proc = lensllm("lensbench", "generate", "--out", str(generation), "--quick", "--seed", "1")
    assert proc.returncode == 2 and "made with another seed" in proc.stderr and proc.stderr.count("\n") == 1
    shutil.copytree(generation / "tokenizers", tmp_path / "tokenizers")
    proc = lensllm("lensbench", "generate", "--out", str(tmp_path), "--quick")
    assert proc.returncode == 2 and "without plan.json" in proc.stderr
    assert not (tmp_path / "zoo").exists()


def test_lensllm_select_local_on_a_zoo_only_build_measures_exactly_what_the_generator_did(generation, tmp_path):
    for part in ("tasks", "tokenizers", "zoo"):
        shutil.copytree(generation / part, tmp_path / part)
    shutil.copy(generation / "plan.json", tmp_path)
    proc = lensllm("lensbench", "generate", "--out", str(tmp_path), "--quick", "--zoo-only")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "measurement units" not in proc.stdout and not (tmp_path / "results").exists()
    proc = lensllm("lensbench", "e2e", "--out", str(tmp_path), "--tasks", "cipher")
    assert proc.returncode == 2 and "no cipher.points.csv" in proc.stderr
    proc = lensllm("lensbench", "e2e", "--out", str(tmp_path), "--tasks", "cipher", "--tables", str(generation / "tables"),
                   "--strategy", "fixed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (tmp_path / "e2e" / "e2e.csv").read_text().splitlines()
    header, row = rows[0].split(","), dict(zip(rows[0].split(","), rows[1].split(",")))
    assert header[:3] == ["task", "strategy", "picked"] and row["task"] == "cipher" and row["strategy"] == "fixed"
    assert row["rounds"] == "1"
    assert row["picked"] in {m.name for m in QUICK_ZOO} and 0.0 <= float(row["relacc"]) <= 1.0
    assert 0.0 < float(row["compute_fraction"]) < 1.0
    assert float(row["max_point_difference"]) == 0.0 and "differ" not in proc.stderr


def test_no_test_row_of_a_built_in_task_is_a_training_row(generation):
    """cipher's one-word phrases recur: its test split is drawn apart from the training rows."""
    for task in TASKS:
        folder = generation / "tasks" / task
        train = set((folder / "train.jsonl").read_text().splitlines())
        test = (folder / "test.jsonl").read_text().splitlines()
        assert len(test) == QUICK.n_test and not train.intersection(test), task
