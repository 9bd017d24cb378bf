"""`lensllm bench --strategy race`: the output contract of each format, and its input errors."""

import csv
import io
import json

import numpy as np
import pytest

from lensllm.cli.main import main
from lensllm.science.laws import rectified_loss

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZES = [100 * 2**k for k in range(9)]  # 100 .. 25,600; the last column is the target
# (B, D_l, beta, E, parameters) per model; "late" wins at the target, "early" at small sizes.
MODELS = {
    "late": (300.0, 40.0, 0.6, 0.7, 7e8),
    "early": (8.0, 4.0, 0.3, 1.2, 1e8),
    "steady": (40.0, 10.0, 0.35, 0.95, 3e8),
    "weak": (20.0, 6.0, 0.25, 1.6, 2e9),
    "flat": (2.0, 1.0, 0.2, 2.4, 5e8),
}


@pytest.fixture
def race_csv(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["model,0," + ",".join(map(str, SIZES)) + ",size"]
    for name, (B, D_l, beta, E, params) in MODELS.items():
        losses = rectified_loss(np.array([0.0, *SIZES]), B=B, D_l=D_l, beta=beta, E=E)
        losses[1:] *= np.exp(0.004 * rng.standard_normal(len(SIZES)))
        lines.append(f"{name}," + ",".join(f"{v:.6f}" for v in losses) + f",{params:g}")
    path = tmp_path / "race.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# Three initial sizes (the default) cannot see "late" turn down: these races start on four.
FOUR = ["--initial-sizes", "4"]


def test_race_csv_has_the_contract_header_and_one_row_per_seed(race_csv, capsys):
    code, out, _ = run_cli(["bench", race_csv, "--strategy", "race", *FOUR, "--seeds", "2", "--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert list(rows[0]) == ["seed", "rounds", "stop", "compute_fraction", "relacc", "pearcorr", "coverage", "selected", "survivors", "laws_agree"]
    assert [r["seed"] for r in rows] == ["0", "1"]
    for row in rows:
        assert row["selected"] == "late" and float(row["relacc"]) == 1.0
        assert 0 < float(row["compute_fraction"]) < 1 and 1 <= int(row["rounds"]) <= 7
        assert 0 <= float(row["coverage"]) <= 1
        assert row["stop"] in ("confident", "exhausted", "computeCap", "settled")


def test_race_json_holds_rounds_ranking_front_and_the_fixed_budgets(race_csv, capsys, tmp_path):
    plot = tmp_path / "race.png"
    args = ["bench", race_csv, "--strategy", "race", *FOUR, "--seeds", "1", "--ratios", "2,4,8", "--format", "json", "--plot", plot]
    code, out, _ = run_cli(args, capsys)
    doc = json.loads(out)
    assert code == 0
    assert doc["settings"]["epsilon"] == 0.01 and doc["settings"]["max_rounds"] == 7
    run = doc["runs"][0]
    assert [r["rank"] for r in run["ranking"]] == [1, 2, 3, 4, 5]
    assert run["ranking"][0]["name"] == "late" and run["ranking"][0]["lower_confidence"] is False
    first = run["decisions"][0]
    assert first["round"] == 0 and {a["name"] for a in first["assessments"]} == set(MODELS)
    assert all(e["round"] == 0 and e["reason"].startswith("P(best)") for e in first["eliminated"])
    assert [p["label"] for p in doc["fixed"]] == ["ats 1/2", "ats 1/4", "ats 1/8"]
    assert doc["front"] and all(p["label"].startswith("race n0=") for p in doc["front"])
    assert isinstance(doc["undominated_fixed"], list)
    assert plot.read_bytes().startswith(PNG_MAGIC)


def test_race_markdown_and_table_show_runs_rounds_and_the_comparison(race_csv, capsys):
    code, out, _ = run_cli(["bench", race_csv, "--strategy", "race", "--seeds", "1", "--ratios", "2,4", "--format", "markdown"], capsys)
    assert code == 0
    assert out.startswith("Race (epsilon 0.01, delta 0.05, no compute cap")
    assert "| seed | rounds | stop | compute (%) | RelAcc (%) | PearCorr (%) | 90% intervals holding the truth (%) | selected | survivors |" in out
    assert "Rounds of the race with seed 0" in out and "| ats 1/2 |" in out
    assert "fixed-budget AtS" in out.splitlines()[-1]
    code, out, _ = run_cli(["bench", race_csv, "--strategy", "race", "--seeds", "1", "--ratios", "2"], capsys)
    assert code == 0 and "RelAcc" in out and "Rounds" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "race", "--methods", "ats"], "--methods applies to --strategy fixed"),
        (["--epsilon", "0.1", "--seeds", "2"], "--epsilon, --seeds: race options, which need --strategy race"),
    ],
)
def test_options_of_the_other_strategy_exit_2_naming_them(race_csv, capsys, extra, message):
    code, _, err = run_cli(["bench", race_csv, *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize(("option", "value"), [("--max-rounds", "0"), ("--delta", "1"), ("--epsilon", "x"), ("--max-compute-fraction", "-0.1"),
     ("--max-compute-fraction", "5")])
def test_race_settings_out_of_range_are_usage_errors(race_csv, capsys, option, value):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", str(race_csv), "--strategy", "race", option, value])
    assert exit_.value.code == 2 and f"argument {option}" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["csv", "table"])
def test_more_initial_sizes_than_the_table_has_below_its_target_exit_2(race_csv, capsys, output):
    """Round 0 would otherwise run every column, at the whole of a fixed budget's compute, and call it a race."""
    code, out, err = run_cli(["bench", race_csv, "--strategy", "race", "--initial-sizes", "9", "--format", output], capsys)
    assert code == 2 and out == ""
    assert "race setting initial_sizes is 9, but the ladder has only 8 sizes (100, 200, " in err and err.count("\n") == 1
    assert run_cli(["bench", race_csv, "--strategy", "race", "--initial-sizes", "8", "--format", "csv"], capsys)[0] == 0


def test_a_table_without_parameter_counts_exits_2_naming_the_column(tmp_path, capsys):
    path = tmp_path / "no_size.csv"
    path.write_text("model,0,100,200,400,800,1600\na,3,2.9,2.8,2.7,2.6,2.5\nb,3,2.8,2.7,2.6,2.5,2.45\n")
    code, _, err = run_cli(["bench", path, "--strategy", "race", "--format", "csv"], capsys)
    assert code == 2 and "parameter counts (a `size` column)" in err


def test_fixed_budgets_stay_the_default_strategy(race_csv, capsys):
    code, out, _ = run_cli(["bench", race_csv, "--methods", "ats", "--ratios", "2", "--format", "csv"], capsys)
    assert code == 0 and out.splitlines()[0] == "method,ratio,max_n,target_n,pearcorr,relacc,selected"


@pytest.mark.parametrize(("flag", "stop", "found_best"), [([], "settled", True), (["--no-settle"], "exhausted", False)])
def test_a_replay_settles_the_laws_disagreement_on_the_target_column_unless_told_not_to(curves_dir, capsys, flag, stop, found_best):
    """LensBench docstring (eighth draw): the laws disagree when the ladder runs out."""
    table = curves_dir.parent / "lensbench-seed7" / "docstring.csv"
    code, out, _ = run_cli(["bench", table, "--strategy", "race", "--seeds", "1", "--format", "csv", *flag], capsys)
    (row,) = csv.DictReader(io.StringIO(out))
    assert code == 0 and row["stop"] == stop and row["laws_agree"] == "False"
    assert (float(row["relacc"]) == 1.0) == found_best
