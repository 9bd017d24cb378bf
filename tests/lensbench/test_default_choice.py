"""The `default` that ships is the rule leave-one-table-out chooses on every committed curve table."""

import warnings
from pathlib import Path

import pytest

from lensllm.science.selectors import DEFAULT_RULE
from lensllm_bench import loo

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
LENSBENCH = [p.with_name(p.name.removesuffix(".ntk.json") + ".csv")
             for draw in ("lensbench", "lensbench-seed1") for p in (REPO / "data" / draw).glob("*.ntk.json")]
TABLES = sorted((REPO / "data" / "curves").glob("*.csv")) + sorted(LENSBENCH)


def test_default_is_the_rule_chosen_on_all_published_and_lensbench_tables():
    names = [f"{p.parent.name}/{p.stem}" for p in TABLES]
    tasks = ("de-en", "gloss", "docstring", "cipher")
    assert {"curves/flan", "curves/gigaword", "curves/wmt19"} | {f"{d}/{t}" for d in ("lensbench", "lensbench-seed1") for t in tasks} <= set(names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluation = loo.evaluate(loo.load_all(TABLES))
    assert evaluation.chosen == DEFAULT_RULE
