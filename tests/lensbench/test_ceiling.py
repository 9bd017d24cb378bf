"""The hindsight ceiling: statistics of seen curves, and the best score of them fitted to the truth."""

import warnings

import numpy as np
import pytest

from lensllm.cli.main import main
from lensllm.errors import LensLLMError
from lensllm.science.curves import Curves
from lensllm.science.metrics import pearcorr
from lensllm_bench import ceiling, loo

SIZES = np.array([100.0, 200, 400, 800, 1600, 3200, 6400, 51200])


def power_law_curves(n: int = 10) -> tuple[Curves, np.ndarray, np.ndarray]:
    """Pure power laws a * D^-b: every slope of a curve is -b, and its power phase is all of it."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(5, 20, n), rng.uniform(0.1, 0.4, n)
    losses = a[:, None] * SIZES[None, :] ** -b[:, None]
    curves = Curves(models=tuple(f"m{i}" for i in range(n)), sizes=SIZES, losses=losses, zero_shot=a, target_size=51200.0)
    return curves, a, b


def test_the_statistics_of_a_power_law_are_its_slope_everywhere_and_no_offset():
    curves, a, b = power_law_curves()
    seen = curves.up_to(6400)
    stats = dict(zip(ceiling.STATISTICS, ceiling.statistics(seen).T))
    level = np.log(a) - b * np.log(6400)
    np.testing.assert_allclose(stats["level"], level)
    for name in ("ats_slope", "last_slope", "recent_slope"):
        np.testing.assert_allclose(stats[name], -b, err_msg=name)
    np.testing.assert_allclose(stats["ats_offset"], 0, atol=1e-9)
    np.testing.assert_allclose(stats["zero_shot_drop"], np.log(a) - level)


def test_the_best_linear_score_beats_every_other_linear_score_and_is_exact_on_a_linear_truth():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((30, 3))
    truth = 2.0 + features @ np.array([0.5, -1.0, 0.2]) + 0.3 * rng.standard_normal(30)
    best = ceiling.best_linear_pearcorr(features, truth)
    assert all(pearcorr(features @ rng.standard_normal(3), truth) <= best + 1e-12 for _ in range(200))
    assert ceiling.best_linear_pearcorr(features, 2.0 + features @ np.array([0.5, -1.0, 0.2])) == pytest.approx(1.0)


def test_on_a_table_the_ceilings_are_at_least_ats_and_nest():
    rng = np.random.default_rng(2)
    curves, _, _ = power_law_curves(14)
    noisy = Curves(models=curves.models, sizes=curves.sizes, losses=curves.losses * (1 + 0.01 * rng.standard_normal(curves.losses.shape)),
                   zero_shot=curves.zero_shot, target_size=51200.0)
    table = loo.Table("noisy", noisy, 51200.0, (8, 16), "noisy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ceiling.ceilings(table)
    assert result.ratios == (8, 16)
    for j in range(2):
        assert result.ats[j] <= result.ats_span[j] + 1e-9 <= result.all_statistics[j] + 2e-9
    assert "| noisy | **mean** |" in ceiling.markdown([result])


def test_too_few_models_or_no_zero_shot_is_refused():
    curves, _, _ = power_law_curves(5)
    with pytest.raises(LensLLMError, match="5 models cannot bound a fit of 6 statistics"):
        ceiling.best_linear_pearcorr(ceiling.statistics(curves.up_to(6400)), curves.loss_at(51200))
    blind = Curves(models=curves.models, sizes=curves.sizes, losses=curves.losses, target_size=51200.0)
    with pytest.raises(LensLLMError, match="zero-shot loss"):
        ceiling.statistics(blind)


def test_the_command_prints_a_mean_row_per_table(curves_dir, capsys):
    assert main(["lensbench", "ceiling", str(curves_dir / "gigaword.csv")]) == 0
    out = capsys.readouterr().out
    assert out.count("| gigaword | 1/") == 7  # the paper's ratios 1/8 to 1/512
    # AtS's mean is the paper's Gigaword figure, which `lensllm bench` reproduces.
    assert "| gigaword | **mean** | **93.8** |" in out


def test_the_command_names_a_missing_table(tmp_path, capsys):
    assert main(["lensbench", "ceiling", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
