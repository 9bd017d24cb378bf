"""Do NTK statistics predict where `default` errs? The pieces on made-up errors, then the repository's tables."""

from pathlib import Path

import numpy as np
import pytest

from lensllm.errors import LensLLMError
from lensllm.science.curves import Curves
from lensllm.science.laws import NTKSpectrum
from lensllm_bench import ntk_signal
from lensllm_bench.loo import Table, load_all

DATA = Path(__file__).resolve().parents[2] / "data"


def made_up_errors(task: str, seed: int, weight: float) -> ntk_signal.Errors:
    """16 models whose true losses are `weight` x their second statistic (F(0)) off the predictions, in log space."""
    rng = np.random.default_rng(seed)
    predicted = rng.uniform(2.0, 4.0, 16)
    raw = rng.normal(size=(16, len(ntk_signal.STATISTICS)))
    stats = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    return ntk_signal.Errors(f"{task}-{seed}", task, 8, predicted, predicted * np.exp(weight * stats[:, 1] + 0.3), stats)


def test_a_partial_correlation_removes_what_both_owe_to_the_control():
    rng = np.random.default_rng(0)
    control, a, b = rng.normal(size=(3, 400))
    assert ntk_signal.spearman(control + a, control + b) > 0.3
    assert abs(ntk_signal.spearman(control + a, control + b, control)) < 0.15
    assert ntk_signal.spearman(control + a, control + a + 0.1 * b, control) > 0.9


def test_the_fitted_weight_recovers_the_error_and_ignores_a_shift_shared_by_every_model():
    found = [made_up_errors("t", seed, weight=0.2) for seed in range(3)]
    assert ntk_signal.fitted_weight(found, 1) == pytest.approx(0.2)
    assert abs(ntk_signal.fitted_weight(found, 2)) < 0.1


def test_a_statistic_that_explains_the_error_fixes_the_held_out_ranking_and_default_does_not():
    found = [made_up_errors(task, seed, weight=0.5) for task in ("a", "b") for seed in range(2)]
    fixed = ntk_signal.corrected(found, 1, "a")
    plain = ntk_signal.corrected(found, None, "a")
    assert fixed.weight == pytest.approx(0.5)
    assert fixed.pearcorr == pytest.approx(1.0) and fixed.relacc == pytest.approx(1.0)
    assert plain.weight == 0.0 and plain.pearcorr < 0.9


def test_leaving_one_task_out_needs_another_task():
    found = [made_up_errors("a", seed, weight=0.5) for seed in range(2)]
    with pytest.raises(LensLLMError, match="at least one other task"):
        ntk_signal.corrected(found, 1, "a")


def spectrum(eigenvalues, projections) -> NTKSpectrum:
    return NTKSpectrum(np.array(eigenvalues, float), np.array(projections, float), 1e-3)


def test_the_spectrum_statistics():
    flat = spectrum([2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0])
    assert ntk_signal._effective_rank(flat) == pytest.approx(4.0)
    assert ntk_signal._top_alignment(spectrum([1.0, 5.0, 3.0, 2.0], [2.0, 6.0, 2.0, 0.0])) == pytest.approx(0.8)
    assert ntk_signal.NTK_STATISTICS["F(0), log"](flat) == pytest.approx(np.log(4.0))


def table_with(spectra) -> Table:
    sizes = np.array([8.0, 16.0, 32.0, 2048.0])
    losses = np.array([[3.0, 2.8, 2.6, 2.0], [3.2, 2.9, 2.7, 2.1], [3.1, 3.0, 2.9, 2.5]])
    curves = Curves(models=("a", "b", "c"), sizes=sizes, losses=losses, zero_shot=np.array([3.5, 3.6, 3.2]),
                    ntk=spectra, target_size=2048.0)
    return Table("t", curves, 2048.0, (64,), "t")


def test_statistics_are_standardised_within_the_table_and_need_every_spectrum():
    spectra = (spectrum([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]), spectrum([3.0, 2.0, 1.0, 1.0], [4.0, 1.0, 2.0, 1.0]),
               spectrum([5.0, 1.0, 1.0, 0.5], [1.0, 1.0, 2.0, 9.0]))
    stats = ntk_signal.statistics_of(table_with(spectra))
    assert stats.shape == (3, len(ntk_signal.STATISTICS))
    assert np.allclose(stats.mean(axis=0), 0.0) and np.allclose(stats.std(axis=0), 1.0)
    with pytest.raises(LensLLMError, match="t: needs every model's NTK spectrum"):
        ntk_signal.statistics_of(table_with((*spectra[:2], None)))


def test_on_two_tasks_of_the_repository_every_statistic_gets_a_row_in_both_tables():
    tables = load_all([DATA / "lensbench" / "gloss.csv", DATA / "lensbench" / "cipher.csv"])
    found = [e for t in tables for e in ntk_signal.errors(t)]
    assert {e.ratio for e in found} == set(tables[0].ratios)
    lines = ntk_signal.markdown(found).splitlines()
    for name in ntk_signal.STATISTICS:
        assert sum(line.startswith(f"| {name} |") for line in lines) == 2
    assert sum(line.startswith("| none (`default`) |") for line in lines) == 1
