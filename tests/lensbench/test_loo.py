"""Leave-one-table-out choice of `default`'s rule, on small synthetic tables (fast)."""

import warnings

import numpy as np
import pytest

from lensllm.errors import LensLLMError
from lensllm.science.curves import Curves
from lensllm.science.selectors import BlendRule, select_default
from lensllm_bench import loo

SIZES = np.array([100.0, 200, 400, 800, 1600, 3200, 6400, 12800, 102400])


def synthetic_table(name: str, seed: int, task: str | None = None) -> loo.Table:
    """Rectified-law curves with a little noise, 12 models, target 102400."""
    rng = np.random.default_rng(seed)
    B, D_l = rng.uniform(20, 80, 12), rng.uniform(10, 400, 12)
    beta, E = rng.uniform(0.3, 0.7, 12), rng.uniform(0.8, 1.5, 12)
    clean = B[:, None] / (D_l[:, None] + SIZES[None, :] ** beta[:, None]) + E[:, None]
    losses = clean * (1 + 0.004 * rng.standard_normal(clean.shape))
    # Every fourth model scores no better than a uniform guess before fine-tuning: it learns from scratch.
    uniform = (B / D_l + E) * np.where(np.arange(12) % 4 == 0, 1.0, 1.5)
    curves = Curves(models=tuple(f"m{i}" for i in range(12)), sizes=SIZES, losses=losses,
                    zero_shot=B / D_l + E, target_size=102400.0, uniform=uniform)
    return loo.Table(name, curves, 102400.0, (8, 16, 32), task or name)


@pytest.fixture(scope="module")
def tables():
    """Three tasks; t0 has two draws."""
    return [synthetic_table("t0", 0), synthetic_table("t1", 1), synthetic_table("t2", 2), synthetic_table("t0-again", 3, "t0")]


@pytest.fixture(scope="module")
def evaluation(tables):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loo.evaluate(tables)


@pytest.mark.parametrize(
    "rule",
    [BlendRule(ats_k=2, ats_deltas=(3.0, 5.0), law_weight=0.3, vanilla_weight=0.25, gain=1.25),
     BlendRule(ats_k=3, ats_deltas=(3.0, 4.0, 5.0), law_weight=0.1, vanilla_weight=0.5, gain=None),
     BlendRule(ats_k=3, ats_deltas=(5.0,), law_weight=0.0, vanilla_weight=0.0, gain=1.0)],
)
def test_a_rule_predicts_from_the_shared_fits_exactly_what_select_default_predicts(tables, rule):
    table = tables[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = loo.components(table, 8)
        direct = select_default(table.curves.up_to(table.target / 8), table.target, rule=rule).predicted_loss
    assert parts.scratch.tolist() == [i % 4 == 0 for i in range(12)]
    np.testing.assert_allclose(loo.predict(rule, parts), direct, rtol=1e-12)


def test_each_held_out_task_gets_the_best_rule_on_the_other_tasks(evaluation, tables):
    assert evaluation.tasks == {"t0": ["t0", "t0-again"], "t1": ["t1"], "t2": ["t2"]}
    assert [h.table for h in evaluation.held_out] == ["t0", "t0-again", "t1", "t2"]
    task_of = {t.name: t.task for t in tables}
    for held in evaluation.held_out:
        others = [names for task, names in evaluation.tasks.items() if task != task_of[held.table]]
        objective = lambda rule: loo.objective(evaluation.scores[rule], evaluation.ats, others)  # noqa: E731
        assert objective(held.rule) == max(objective(r) for r in loo.RULES)
        assert held.score == evaluation.scores[held.rule][held.table]  # reported out of sample
    # Both draws of t0 are held out together: neither helps choose the rule the other is scored with.
    assert evaluation.held_out[0].rule == evaluation.held_out[1].rule


def test_a_task_weighs_the_mean_of_its_draws_once():
    scores = {"a": loo.Score(0.9, 1.0), "b": loo.Score(0.5, 1.0), "c": loo.Score(0.6, 0.5)}
    baseline = {"a": loo.Score(0.6, 1.0), "b": loo.Score(0.6, 1.0), "c": loo.Score(0.5, 1.0)}
    # gains: a +0.3, b -0.1, c +0.1 - 2 * 0.5 = -0.9
    assert loo.objective(scores, baseline, [["a", "b"]]) == pytest.approx((0.1, 0.1))
    assert loo.objective(scores, baseline, [["a"], ["b"]]) == pytest.approx((-0.1, 0.1))
    assert loo.objective(scores, baseline, [["a", "b"], ["c"]]) == pytest.approx((-0.9, -0.4))


def test_the_shipped_rule_is_the_best_on_all_tasks_and_ats_is_the_baseline(evaluation, tables):
    tasks = list(evaluation.tasks.values())
    best = max(loo.objective(evaluation.scores[r], evaluation.ats, tasks) for r in loo.RULES)
    assert loo.objective(evaluation.scores[evaluation.chosen], evaluation.ats, tasks) == best
    # The baseline is the paper's AtS: without the from-scratch rule every rule is scored with.
    for table in tables:
        parts = [loo.components(table, r) for r in table.ratios]
        assert evaluation.ats[table.name] == loo.score(loo.ATS, table, parts, from_scratch=False)
    text = loo.markdown(evaluation)
    assert text.count("\n") == 2 + len(tables) + 1  # and one line for t0's mean
    assert "| t0, mean of 2 |" in text


def test_tables_of_two_draws_keep_apart_as_one_task_and_one_table_given_twice_is_refused(curves_dir):
    draws = curves_dir.parent
    paths = [draws / "lensbench" / "cipher.csv", draws / "lensbench-seed1" / "cipher.csv", curves_dir / "flan.csv"]
    tables = loo.load_all(paths)
    assert [t.name for t in tables] == ["lensbench/cipher", "lensbench-seed1/cipher", "flan"]
    assert [t.task for t in tables] == ["cipher", "cipher", "flan"]
    assert not np.array_equal(tables[0].truth, tables[1].truth)
    with pytest.raises(LensLLMError, match="table given twice"):
        loo.load_all([paths[2], curves_dir / ".." / "curves" / "flan.csv"])
