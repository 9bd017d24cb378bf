import pytest
from pydantic import ValidationError

from lensllm.selection.spec import LLMSelectionSpec
from lensllm.trial.spec import TrialSpec


def spec(**changes) -> dict:
    base = {
        "candidates": [{"name": "a", "model": "gpt2"}, {"name": "b", "model": "facebook/opt-125m"}],
        "dataset": {"source": "data.jsonl", "inputField": "q", "targetField": "a"},
        "budget": {"baseSize": 100, "doublings": 3, "targetSize": 10_000},
    }
    base.update(changes)
    return base


def test_budget_from_a_base_size_and_doublings():
    assert LLMSelectionSpec.model_validate(spec()).budget.sizes == [100, 200, 400, 800]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"candidates": [{"name": "a", "model": "x"}, {"name": "a", "model": "y"}]}, "candidate name 'a' is used twice"),
        ({"candidates": [{"name": "Not_DNS", "model": "x"}]}, "must be a DNS label"),
        ({"budget": {"subsetSizes": [100, 50], "targetSize": 1000}}, "strictly increasing"),
        ({"budget": {"subsetSizes": [100, 200], "targetSize": 150}}, "targetSize 150 is below the largest subset size 200"),
        ({"budget": {"subsetSizes": [100], "baseSize": 10, "doublings": 2, "targetSize": 1000}}, "either subsetSizes"),
        ({"method": "magic"}, "method"),
        ({"parallelism": 0}, "parallelism"),
        ({"ntk": {"scope": "lora", "enabled": True}}, "ntk.scope lora needs training.method lora"),
    ],
)
def test_invalid_specs_are_rejected_with_a_message_naming_the_problem(changes, message):
    with pytest.raises(ValidationError, match=message):
        LLMSelectionSpec.model_validate(spec(**changes))


def test_trial_spec_carries_the_selection_settings_for_one_candidate():
    selection = LLMSelectionSpec.model_validate(spec(seed=7, training={"learningRate": 0.01}))
    trial = selection.trial_spec("b", [100, 200])
    assert isinstance(trial, TrialSpec)
    assert trial.candidate.model == "facebook/opt-125m"
    assert (trial.subset_sizes, trial.target_size, trial.seed) == ([100, 200], 10_000, 7)
    assert trial.training.learning_rate == 0.01
    assert trial.dataset == selection.dataset
    assert trial.fit_metric == "bitsPerByte"  # what the selection ranks by


def test_the_methods_a_selection_accepts_are_exactly_the_selectors():
    from typing import get_args

    from lensllm.science.selectors import SELECTORS
    from lensllm.selection.spec import MethodName

    assert list(get_args(MethodName)) == list(SELECTORS)
