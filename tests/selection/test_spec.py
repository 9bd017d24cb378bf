import pytest
from pydantic import ValidationError

from lensllm.selection.plan import Trial, next_trials
from lensllm.selection.spec import EARLIER_DEFAULTS, IMMUTABLE_FIELDS, LLMSelectionSpec, SpecError, with_defaults
from lensllm.selection.status import MAX_ATTEMPTS, TrialRecord, initial_status, mark_trial, record_lost, record_result
from lensllm.trial.result import Evaluation, SizePoint, TrialResult
from lensllm.trial.spec import TrialSpec, validation_message


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
        ({"candidates": [{"name": "Not_DNS", "model": "x"}]}, "should match pattern"),
        ({"budget": {"subsetSizes": [100, 200, 50], "targetSize": 1000}}, "strictly increasing"),
        ({"budget": {"subsetSizes": [100, 200, 300], "targetSize": 150}}, "targetSize 150 is below the largest subset size 300"),
        ({"budget": {"subsetSizes": [1, 2, 3], "baseSize": 10, "doublings": 2, "targetSize": 1000}}, "either subsetSizes"),
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


def refusal(changes: dict, strict: bool = True) -> str:
    with pytest.raises(ValidationError) as refused:
        LLMSelectionSpec.model_validate(spec(**changes), strict=strict)
    return validation_message(refused.value)


@pytest.mark.parametrize(
    "changes, where, says",
    [
        # Accepted before, then refused by the API server (or a crash) only when the Job was created.
        ({"candidates": [{"name": "a\n", "model": "x"}]}, "candidates.0.name", "pattern"),
        ({"budget": {"subsetSizes": [], "targetSize": 100}}, "budget.subsetSizes", "at least 3 items"),
        ({"budget": {"subsetSizes": [100, 200], "targetSize": 1000}}, "budget.subsetSizes", "at least 3 items"),
        ({"budget": {"baseSize": 100, "doublings": 1, "targetSize": 1000}}, "budget.doublings", "greater than or equal to 2"),
        ({"budget": {"subsetSizes": list(range(1, 18)), "targetSize": 1000}}, "budget.subsetSizes", "at most 16 items"),
        ({"candidates": [{"name": f"c{i}", "model": "m"} for i in range(51)]}, "candidates", "at most 50 items"),
        ({"resources": {"cpu": "lots"}}, "resources.cpu", "pattern"),
        ({"resources": {"memory": "-1Gi"}}, "resources.memory", "pattern"),
        ({"resources": {"extended": {"gpu": 1}}}, "resources.extended", "pattern"),
        ({"queue": "gpu queue!"}, "queue", "pattern"),
        ({"nodeSelector": {"gpu": "a100 80gb"}}, "nodeSelector", "pattern"),
        ({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedul"}]}, "tolerations.0.effect", "NoSchedule"),
        ({"tolerations": [{"key": "nvidia.com/gpu", "tolerationSeconds": "soon"}]}, "tolerations.0.tolerationSeconds", "integer"),
        ({"tolerations": [{"key": "nvidia.com/gpu", "operater": "Exists"}]}, "tolerations.0.operater", "Extra inputs"),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}}, "affinity", "nodeSelectorTerms"),
        ({"affinity": {"nodeAfinity": {}}}, "affinity.nodeAfinity", "Extra inputs"),
        ({"modelCache": {"claimName": "cache", "mountPath": "/etc"}}, "modelCache.mountPath", "Extra inputs"),
        ({"env": [{"name": "HF_TOKEN", "value": "stolen"}]}, "env.0.name", "set by the operator"),
        ({"strategy": "race", "race": {"initialSizes": 4}, "budget": {"baseSize": 100, "doublings": 2, "targetSize": 10_000}},
         "budget", "strategy race needs at least race.initialSizes = 4 subset sizes (round 0 runs that many), got 3"),
        ({"strategy": "race", "race": {"initialSizes": 6}}, "budget", "race.initialSizes = 6 subset sizes (round 0 runs that many), got 4"),
        ({"race": {"initialSizes": 2}}, "race.initialSizes", "greater than or equal to 3"),
        ({"strategy": "greedy"}, "strategy", "'fixed' or 'race'"),
        ({"race": {"epsilon": 0.0}}, "race.epsilon", "greater than 0"),
        ({"race": {"delta": 0.7}}, "race.delta", "less than or equal to 0.5"),
        ({"budget": {"baseSize": 100, "doublings": 3, "targetSize": 10_000, "maxComputeFraction": 0.07}},
         "budget.maxComputeFraction", "0.07 is spent by round 0 alone (sizes 100, 200, 400 cost 0.07 of fine-tuning"),
        ({"budget": {"baseSize": 100, "doublings": 3, "targetSize": 10_000, "maxComputeFraction": 1.5}},
         "budget.maxComputeFraction", "less than or equal to 1"),
        ({"hfTokenSecretRef": {"name": "Bad_Name"}}, "hfTokenSecretRef.name", "pattern"),
    ],
)
def test_values_a_kubernetes_api_server_or_the_fit_would_refuse_are_refused_up_front(changes, where, says):
    message = refusal(changes)
    assert message.startswith(where) and says in message, message


@pytest.mark.parametrize(
    "changes, where",
    [
        ({"budget": {"baseSize": 100, "doublings": 3, "targetSize": "204045"}}, "budget.targetSize"),
        ({"suspend": "yes"}, "suspend"),
        ({"parallelism": 2.0}, "parallelism"),
    ],
)
def test_the_spec_coerces_nothing_the_crd_would_refuse(changes, where):
    assert refusal(changes).startswith(where)


def test_a_candidate_s_resources_override_only_the_fields_it_sets():
    selection = LLMSelectionSpec.model_validate(spec(
        resources={"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1, "shmSize": "8Gi", "extended": {"rdma/ib": 1}},
        candidates=[{"name": "a", "model": "m", "resources": {"memory": "64Gi", "extended": {"amd.com/gpu": 2}}}],
    ))
    merged = selection.resources_for("a")
    assert (merged.cpu, merged.memory, merged.gpu, merged.shm_size) == ("8", "64Gi", 1, "8Gi")
    assert merged.extended == {"rdma/ib": 1, "amd.com/gpu": 2}
    assert merged.gpus == 3  # nvidia.com/gpu and amd.com/gpu


def test_an_unknown_candidate_is_a_spec_error_not_a_stop_iteration():
    with pytest.raises(SpecError, match="'c' is not in spec.candidates"):
        LLMSelectionSpec.model_validate(spec()).trial_spec("c", [100, 200, 400])


def test_the_digest_changes_with_immutable_fields_only():
    base = LLMSelectionSpec.model_validate(spec())
    assert LLMSelectionSpec.model_validate(spec(parallelism=1, suspend=True)).digest() == base.digest()
    for changes in ({"seed": 3}, {"method": "ats"}, {"candidates": [{"name": "a", "model": "gpt2"}]}):
        assert LLMSelectionSpec.model_validate(spec(**changes)).digest() != base.digest(), changes
    assert set(IMMUTABLE_FIELDS) >= {"candidates", "dataset", "budget", "training", "ntk", "method", "strategy", "race"}


def test_race_settings_change_the_digest_of_a_race_only():
    """A fixed selection's digest is the one it had before the race existed: an upgraded operator fails none."""
    base = LLMSelectionSpec.model_validate(spec(strategy="fixed"))
    assert base.digest() == "49a277283895561e"  # main at 9bebc72, before spec.strategy existed
    budget = {"baseSize": 100, "doublings": 3, "targetSize": 10_000, "maxComputeFraction": 0.2}
    fixed = spec(strategy="fixed", race={"epsilon": 0.2}, budget=budget)
    assert LLMSelectionSpec.model_validate(fixed).digest() == base.digest()
    race = LLMSelectionSpec.model_validate(spec(strategy="race"))
    assert race.digest() != base.digest()
    default = LLMSelectionSpec.model_validate(spec())
    assert default.strategy == "race" and default.digest() == race.digest()
    assert LLMSelectionSpec.model_validate(spec(strategy="race", race={"delta": 0.1})).digest() != race.digest()
    assert race.race_settings().max_compute_fraction is None and race.race_settings().epsilon == 0.01
    assert race.race_settings().laws == ("lensllm", "vanilla") and race.race_settings().initial_sizes == 3
    # Before spec.race.laws and initialSizes existed every race ran both laws from four sizes: such a race keeps
    # its digest; one on today's default schedule does not match it (an upgraded operator must not change its rounds).
    # They were capped at 5% by default; round 0 alone spent more here, as a race created now may not.
    capped = {"baseSize": 100, "doublings": 3, "targetSize": 10_000, "maxComputeFraction": 0.05}
    before = LLMSelectionSpec.from_wire(spec(strategy="race", race={"initialSizes": 4, "settle": False}, budget=capped), started=True)
    assert before.digest() == "7d0216b9f8a9617e" != race.digest()  # main at 8bf178f
    vanilla = LLMSelectionSpec.model_validate(spec(strategy="race", race={"laws": ["vanilla"]}))
    assert vanilla.race_settings().laws == ("vanilla",) and vanilla.digest() != race.digest()
    assert before.race_settings().initial_sizes == 4
    # Races started before race.settle existed never settled: at false it stays out of the digest.
    unsettled = LLMSelectionSpec.model_validate(spec(strategy="race", race={"settle": False}))
    assert unsettled.digest() != race.digest() and not unsettled.race_settings().settle and race.race_settings().settle


def test_a_race_capped_below_its_round_0_is_refused_unless_it_started_so():
    capped = spec(budget={"baseSize": 100, "doublings": 3, "targetSize": 10_000, "maxComputeFraction": 0.05})
    assert LLMSelectionSpec.from_wire(capped, started=True).race_settings().max_compute_fraction == 0.05
    assert LLMSelectionSpec.model_validate({**capped, "strategy": "fixed"}).strategy == "fixed"  # a fixed budget has no cap
    three_sizes = spec(budget={"baseSize": 100, "doublings": 2, "targetSize": 10_000, "maxComputeFraction": 0.05})
    assert LLMSelectionSpec.model_validate(three_sizes).budget.sizes == [100, 200, 400]  # round 0 is the whole race


def test_earlier_defaults_fill_only_the_fields_a_spec_leaves_out():
    raw = spec(strategy="race", race={"epsilon": 0.02})
    filled = with_defaults(raw, EARLIER_DEFAULTS[0])
    assert filled["strategy"] == "race" and filled["race"] == {"epsilon": 0.02, "initialSizes": 4, "settle": False}
    assert raw["race"] == {"epsilon": 0.02}  # a copy
    assert with_defaults(spec(), EARLIER_DEFAULTS[1])["strategy"] == "fixed"
    assert with_defaults(spec(race="fast"), EARLIER_DEFAULTS[0])["race"] == "fast"  # validation names it


@pytest.mark.parametrize("laws", [[], ["vanilla", "vanilla"], ["rectified"]])
def test_race_laws_must_be_distinct_known_laws(laws):
    with pytest.raises(ValidationError, match="race.laws"):
        LLMSelectionSpec.model_validate(spec(strategy="race", race={"laws": laws}))


def test_trials_after_the_first_round_measure_no_ntk_and_no_zero_shot_loss():
    selection = LLMSelectionSpec.model_validate(spec(ntk={"enabled": True}))
    first, later = selection.trial_spec("a", [100], round=0), selection.trial_spec("a", [800], round=1)
    assert first.ntk.enabled and first.measure_zero_shot
    assert not later.ntk.enabled and not later.measure_zero_shot


def test_a_candidate_added_after_the_start_gets_no_trial_and_no_key_error():
    started = initial_status(LLMSelectionSpec.model_validate(spec()), 1, "now")
    edited = LLMSelectionSpec.model_validate(spec(candidates=[{"name": "a", "model": "gpt2"}, {"name": "new", "model": "x"}]))
    assert [t.candidate for t in next_trials(edited, started)] == ["a"]


def test_a_lost_trial_runs_again_as_its_next_attempt_until_attempts_run_out():
    selection = LLMSelectionSpec.model_validate(spec(candidates=[{"name": "a", "model": "gpt2"}], strategy="fixed"))
    status = initial_status(selection, 1, "now")
    for attempt in range(MAX_ATTEMPTS):
        (trial,) = next_trials(selection, status)
        assert trial == Trial("a", 0, (100, 200, 400, 800), attempt=attempt)
        status = mark_trial(status, "a", TrialRecord(job_name=f"j{attempt}", attempt=attempt, sizes=[100], state="Running"))
        assert next_trials(selection, status) == []
        status = record_lost(status, "a", f"j{attempt}", "deleted")
    assert next_trials(selection, status) == []
    assert (status.candidates["a"].state, status.candidates["a"].reason) == ("Failed", "JobLost")


def test_a_lost_attempt_never_undoes_a_later_attempt_that_already_succeeded():
    """Chaos seed 43: attempt 1's Job existed (and finished) before attempt 0's loss was ever written."""
    selection = LLMSelectionSpec.model_validate(spec(candidates=[{"name": "a", "model": "gpt2"}]))
    status = mark_trial(initial_status(selection, 1, "now"), "a", TrialRecord(job_name="j0", sizes=[100], state="Running"))
    status = mark_trial(status, "a", TrialRecord(job_name="j1", attempt=1, sizes=[100], state="Running"))
    evaluation = Evaluation(loss=1.0, loss_per_example=9.0, bits_per_byte=0.5, examples=8, tokens=80, seconds=1.0, flops=1.0)
    result = TrialResult(status="Succeeded", points=[SizePoint(size=100, test=evaluation)])
    status = record_lost(record_result(status, selection, "a", "j1", result, gpus=0), "a", "j0", "deleted")
    entry = status.candidates["a"]
    assert (entry.state, entry.reason, [t.state for t in entry.trials]) == ("Succeeded", None, ["Lost", "Succeeded"])
    assert next_trials(selection, status) == []
