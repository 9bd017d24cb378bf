"""`lensllm lensbench e2e` scoring: a selection's status against the truth of a LensBench table."""

import dataclasses
import json

import pytest

from lensllm_bench.endtoend import COLUMNS, check_same_plan, manifest, read_points, score, write
from lensllm_bench.generate import Budget, PlanMismatch

MODELS = ["a", "b", "c"]
TARGET = 64
# bits per byte at sizes 0, 8, 16 and the target; train FLOPs at the target
TRUTH = {"a": (3.0, 2.8, 2.7, 2.2), "b": (3.1, 2.9, 2.75, 2.0), "c": (2.9, 2.85, 2.8, 2.6)}
FULL_FLOPS = {"a": 1e9, "b": 2e9, "c": 1e9}


def write_points(path) -> None:
    rows = ["model,seed,size,loss,loss_per_example,bits_per_byte,train_seconds,train_flops"]
    for m, bpb in TRUTH.items():
        for size, value in zip((0, 8, 16, TARGET), bpb):
            flops = FULL_FLOPS[m] if size == TARGET else size * 1e6
            rows.append(f"{m},0,{size},1,1,{value},1,{flops}")
            rows.append(f"{m},1,{size},1,1,{value + 0.5},1,{flops}")  # another seed: not what a selection sees
    path.write_text("\n".join(rows) + "\n")


def race_status(measured: dict[str, int], best: str, rounds: int) -> dict:
    sizes = (0, 8, 16)
    return {
        "best": best,
        "compute": {"fractionOfFull": 0.04},
        "race": {"rounds": [{}] * rounds},
        "candidates": {
            m: {"flops": 3e7 if n == 16 else 1e7,
                "points": [{"size": s, "bitsPerByte": TRUTH[m][i]} for i, s in enumerate(sizes) if s <= n]}
            for m, n in measured.items()
        },
    }


def test_a_race_is_scored_by_its_own_pick_its_rounds_and_the_flops_it_spent(tmp_path):
    write_points(tmp_path / "t.points.csv")
    points = read_points(tmp_path / "t.points.csv")
    outcome = score("t", "race", MODELS, race_status({"a": 16, "b": 16, "c": 8}, "a", rounds=2), points, TARGET)
    assert (outcome.picked, outcome.best, outcome.rounds) == ("a", "b", 2)
    assert outcome.relacc == (2.6 - 2.2) / (2.6 - 2.0)
    assert outcome.compute_fraction == (3e7 + 3e7 + 1e7) / 4e9
    assert outcome.max_point_difference == 0.0 and outcome.estimated_fraction == 0.04


def test_a_point_that_differs_from_the_table_shows_in_the_largest_difference(tmp_path):
    write_points(tmp_path / "t.points.csv")
    status = race_status({m: 16 for m in MODELS}, "b", rounds=1)
    status["candidates"]["c"]["points"][1]["bitsPerByte"] += 0.01
    outcome = score("t", "race", MODELS, status, read_points(tmp_path / "t.points.csv"), TARGET)
    assert outcome.relacc == 1.0 and abs(outcome.max_point_difference - 0.01) < 1e-9


def test_each_manifest_names_its_strategy_on_the_same_budget(tmp_path):
    budget = Budget(base=8, largest=64, target=512, n_test=32)
    race, fixed = (manifest("t", MODELS, tmp_path, budget, s)["spec"] for s in ("race", "fixed"))
    assert (race["strategy"], fixed["strategy"]) == ("race", "fixed")
    assert race["budget"] == fixed["budget"] and "maxComputeFraction" not in race["budget"]  # the race's default: no cap


def test_the_table_keeps_the_rows_of_other_runs_and_replaces_a_rerun(tmp_path):
    write_points(tmp_path / "t.points.csv")
    points = read_points(tmp_path / "t.points.csv")
    race = score("t", "race", MODELS, race_status({"a": 16, "b": 16, "c": 8}, "a", rounds=2), points, TARGET)
    fixed = score("t", "fixed", MODELS, race_status({m: 16 for m in MODELS}, "b", rounds=1), points, TARGET)
    path = tmp_path / "e2e.csv"
    write([race], path)
    write([fixed], path)
    write([dataclasses.replace(race, picked="c")], path)
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert tuple(rows[0]) == COLUMNS
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [("t", "fixed", "b"), ("t", "race", "c")]


def test_tables_of_another_plan_are_refused_and_tables_without_one_are_trusted(tmp_path):
    out, tables = tmp_path / "out", tmp_path / "tables"
    out.mkdir()
    tables.mkdir()
    check_same_plan(out, tables)  # neither has a plan: nothing to compare
    (out / "plan.json").write_text(json.dumps({"seed": 1, "tasks": ["cipher"]}))
    check_same_plan(out, tables)  # committed tables made before plans were recorded
    (tables / "plan.json").write_text(json.dumps({"tasks": ["cipher"], "seed": 1}))
    check_same_plan(out, tables)
    (tables / "plan.json").write_text(json.dumps({"seed": 0, "tasks": ["cipher"]}))
    with pytest.raises(PlanMismatch, match="measured with another plan"):
        check_same_plan(out, tables)


def test_e2e_runs_the_strategy_a_selection_gets_when_it_names_none():
    from lensllm.cli.lensbench import e2e_strategy
    from lensllm.cli.main import build_parser
    from lensllm.selection.spec import LLMSelectionSpec

    parse = build_parser().parse_args
    assert e2e_strategy(parse(["lensbench", "e2e", "--out", "x"])) == LLMSelectionSpec.model_fields["strategy"].default == "race"
    assert e2e_strategy(parse(["lensbench", "e2e", "--out", "x", "--strategy", "fixed"])) == "fixed"
