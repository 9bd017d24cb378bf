"""The floor of a race's intervals, measured on benchmark tables (lensllm_bench.calibrate)."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from lensllm.cli import options
from lensllm.cli.main import main
from lensllm.science.race_replay import replay_race
from lensllm.science.racing import RaceSettings
from lensllm.science.uncertainty import POWER_LAW
from lensllm_bench.calibrate import coverage_markdown, final_predictions, measured_errors, module_text

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
TABLE = DATA / "lensbench-seed6" / "docstring.csv"


@pytest.fixture(scope="module")
def predictions():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return final_predictions(TABLE)


def test_each_candidate_counts_once_per_race_with_its_last_prediction_and_the_truth(predictions):
    curves = options.load_curves(TABLE)
    target = options.resolve_target(curves, None)
    truth = dict(zip(curves.models, curves.loss_at(target)))
    assert len(predictions) == 3 * len(curves.models)
    replay = replay_race(curves, target, RaceSettings(), 0)
    finalists = {r.name: r for r in replay.ranking if r.eliminated_in is None}
    seed0 = predictions[: len(curves.models)]
    assert sum(p.finalist for p in seed0) == len(finalists)
    for name, r in finalists.items():
        [p] = [p for p in seed0 if p.finalist and p.predicted == r.predicted_loss]
        assert p.true == truth[name] and p.interval == r.interval and p.predictor == "laws"
        assert p.error == pytest.approx(math.log(p.true / p.predicted) / p.reach)
    # Round 0 runs three sizes: those eliminated then were predicted by the power law, 2,048 / 32 away.
    assert any(p.predictor == POWER_LAW and p.reach == pytest.approx(math.log(2048 / 32)) for p in seed0)


def test_the_module_it_writes_holds_the_quantiles_of_those_errors(predictions):
    text = module_text([TABLE], predictions)
    found = {}
    exec(compile(text, "benchmark_errors.py", "exec"), found)
    assert found["TABLES"] == (str(TABLE),)
    errors = measured_errors(predictions)
    np.testing.assert_allclose(found["POWER"], errors.power, atol=1e-6)
    np.testing.assert_allclose(found["LAWS"], errors.laws, atol=1e-6)
    laws = sorted(p.error for p in predictions if p.predictor == "laws")
    assert (found["LAWS"][0], found["LAWS"][-1]) == pytest.approx((laws[0], laws[-1]), abs=1e-6)


def test_the_shipped_floor_is_what_its_tables_measure_today():
    """The floor is data, like the CRD is the spec: this fails when a table changes and nobody recalibrates."""
    from lensllm.science import benchmark_errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measured = measured_errors([p for t in benchmark_errors.TABLES for p in final_predictions(ROOT / t)])
    np.testing.assert_allclose(benchmark_errors.POWER, measured.power, atol=1e-5)
    np.testing.assert_allclose(benchmark_errors.LAWS, measured.laws, atol=1e-5)


def test_coverage_holds_out_each_group_and_says_what_the_floor_adds():
    groups = {"a": [TABLE], "b": [DATA / "lensbench-seed5" / "docstring.csv"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = coverage_markdown(groups, ["a", "b"]).splitlines()
    assert len(table) == 4 and table[2].startswith("| a | 48 |") and table[3].startswith("| b | 48 |")
    for row in table[2:]:
        cells = [float(c) for c in row.strip("|").split("|")[1:]]
        assert all(0 <= c <= 100 for c in cells[1:3] + cells[4:6])
        assert cells[2] >= cells[1] and cells[5] >= cells[4]  # a floor only widens


def test_calibrate_names_a_table_it_cannot_race(tmp_path, capsys):
    bad = tmp_path / "nosize.csv"
    bad.write_text("model,0,8,16,32,64\nm1,5,4,3.5,3.2,3.1\nm2,5,4.2,3.6,3.3,3.2\n")
    assert main(["lensbench", "calibrate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1
