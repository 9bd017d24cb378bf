"""AtS reweighted by curve statistics learned on the other tasks: its parametrisation, its fit and its command."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from lensllm.cli.main import main
from lensllm.errors import LensLLMError
from lensllm.science.selectors import select
from lensllm_bench import learned, loo

DATA = Path(__file__).resolve().parents[2] / "data"


def test_ats_weights_give_exactly_the_prediction_of_ats(curves_dir):
    table = loo.load(curves_dir / "wmt19.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ratio in table.ratios:
            seen = table.curves.up_to(table.target / ratio)
            ats = select("ats", seen, table.target).predicted_loss
            np.testing.assert_allclose(np.exp(learned.features(seen, table.target) @ learned.ATS_WEIGHTS), ats, rtol=1e-9)


def synthetic(task: str, weights: np.ndarray, seed: int) -> learned.Seen:
    """A table whose true log losses are exactly a linear score of its features, plus a shift per table."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((20, len(weights)))
    truth = np.exp(x @ weights + rng.uniform(-1, 1))
    return learned.Seen(f"{task}-{seed}", task, x, truth, default=np.exp(x @ learned.ATS_WEIGHTS))


def test_a_tiny_ridge_learns_the_weights_of_the_other_tasks_and_ranks_the_held_out_one_perfectly():
    true_weights = np.array([0.6, 0.3, 1.2, -0.4, 0.2, 0.1])
    found = [synthetic(task, true_weights, seed) for seed, task in enumerate(["a", "a", "b", "c"])]
    np.testing.assert_allclose(learned.fit_weights([s for s in found if s.task != "a"], 1e-9), true_weights, atol=1e-6)
    result = learned.hold_out(found, "a", ridges=(1e-9, 1e6))
    assert result.learned[1e-9].pearcorr == pytest.approx(1.0) and result.learned[1e-9].relacc == 1.0
    assert result.ats.pearcorr < 0.9  # AtS's weights are not the truth's here
    # A huge ridge keeps AtS's weights, and with them AtS's scores.
    np.testing.assert_allclose(result.weights[1e6], learned.ATS_WEIGHTS, atol=1e-5)
    assert result.learned[1e6].pearcorr == pytest.approx(result.ats.pearcorr, abs=1e-4)


def test_leave_one_task_out_needs_another_task():
    found = [synthetic("a", learned.ATS_WEIGHTS, seed) for seed in range(2)]
    with pytest.raises(LensLLMError, match="at least one other task"):
        learned.hold_out(found, "a")


def test_the_command_prints_every_held_out_task_with_ats_at_the_papers_figure(curves_dir, capsys):
    assert main(["lensbench", "learned", str(curves_dir / "flan.csv"), str(curves_dir / "gigaword.csv")]) == 0
    out = capsys.readouterr().out
    # AtS's mean PearCorr on Gigaword is the paper's, which `lensllm bench` reproduces.
    assert "| gigaword | 93.8 / " in out and "| flan | 62.7 / " in out
    assert out.count("| flan |") == 2  # its scores and its weights


def test_the_command_refuses_a_single_task(capsys):
    one_task = [str(DATA / draw / "cipher.csv") for draw in ("lensbench", "lensbench-seed1")]
    assert main(["lensbench", "learned", *one_task]) == 2
    assert "learned leaves one task out: give tables of at least two tasks" in capsys.readouterr().err
