"""A selection measures the NTK only when its method uses it (it did not help on LensBench)."""

import pytest

from lensllm.science.selectors import NTK_METHODS
from lensllm.selection.spec import LLMSelectionSpec
from lensllm.trial.spec import TrialSpec


def spec(**changes) -> dict:
    return {
        "candidates": [{"name": "a", "model": "gpt2"}, {"name": "b", "model": "facebook/opt-125m"}],
        "dataset": {"source": "data.jsonl", "inputField": "q", "targetField": "a"},
        "budget": {"baseSize": 100, "doublings": 3, "targetSize": 10_000},
        **changes,
    }


@pytest.mark.parametrize("method", ["default", "ats", "rectified", "lensllm"])
def test_the_trials_measure_the_ntk_exactly_when_the_method_uses_it(method):
    trial = LLMSelectionSpec.model_validate(spec(method=method)).trial_spec("b", [100, 200])
    assert trial.ntk.enabled is (method in NTK_METHODS)
    assert (method == "lensllm") is trial.ntk.enabled


@pytest.mark.parametrize("enabled", [True, False])
def test_an_explicit_choice_wins_over_the_method(enabled):
    trial = LLMSelectionSpec.model_validate(spec(method="ats", ntk={"enabled": enabled})).trial_spec("b", [100, 200])
    assert trial.ntk.enabled is enabled


def test_a_trial_spec_run_on_its_own_still_measures_the_ntk():
    trial = LLMSelectionSpec.model_validate(spec()).trial_spec("b", [100, 200]).model_dump(by_alias=True)
    trial["ntk"].pop("enabled")
    assert TrialSpec.model_validate(trial).ntk.enabled is True


def test_the_lora_scope_check_follows_the_effective_setting():
    assert LLMSelectionSpec.model_validate(spec(method="ats", ntk={"scope": "lora"})).trial_ntk.enabled is False
    with pytest.raises(ValueError, match="ntk.scope lora needs training.method lora"):
        LLMSelectionSpec.model_validate(spec(method="lensllm", ntk={"scope": "lora"}))
