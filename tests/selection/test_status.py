import numpy as np
import pytest
from pydantic import ValidationError

from lensllm.science.laws import rectified_loss
from lensllm.selection import status as st
from lensllm.selection.plan import next_trials
from lensllm.selection.spec import LLMSelectionSpec
from lensllm.trial.result import Evaluation, NTKSummary, SizePoint, TrainingStats, TrialResult

SIZES = [100, 200, 400, 800, 1600]
NOW = "2026-01-01T00:00:00Z"


@pytest.fixture
def spec() -> LLMSelectionSpec:
    return LLMSelectionSpec.model_validate(
        {
            "candidates": [{"name": n, "model": f"org/{n}"} for n in ("steep", "flat", "worst")],
            "dataset": {"source": "d.jsonl", "textField": "text"},
            "budget": {"subsetSizes": SIZES, "targetSize": 1_000_000},
            "strategy": "fixed",
            "maxFailedCandidates": 1,
        }
    )


def evaluation(bpb: float) -> Evaluation:
    return Evaluation(loss=bpb * 2, loss_per_example=bpb * 50, bits_per_byte=bpb, examples=10, tokens=100, seconds=1.0, flops=1e9)


def result(law: tuple, zero_shot: float) -> TrialResult:
    curve = rectified_loss(np.array(SIZES, float), *law)
    points = [
        SizePoint(size=s, test=evaluation(float(v)), train=TrainingStats(steps=1, tokens=s * 10, final_loss=1.0, seconds=s / 100, flops=6e9 * s))
        for s, v in zip(SIZES, curve)
    ]
    return TrialResult(status="Succeeded", zero_shot=evaluation(zero_shot), points=points, seconds=30.0)


LAWS = {
    "steep": ((400, 30, 0.5, 0.8), 14.1),  # best at scale
    "flat": ((10, 5, 0.3, 2.0), 4.0),  # best within the budget
    "worst": ((60, 10, 0.25, 2.5), 8.5),
}


def run_all(spec: LLMSelectionSpec, failing: tuple[str, ...] = ()) -> st.LLMSelectionStatus:
    status = st.initial_status(spec, 1, NOW)
    for trial in next_trials(spec, status):
        job = f"sel-{trial.candidate}-r0"
        status = st.mark_trial(status, trial.candidate, st.TrialRecord(job_name=job, sizes=list(trial.sizes), state="Running"))
        if trial.candidate in failing:
            status = st.record_failure(status, trial.candidate, job, "ResultMissing", "no termination message")
        else:
            law, zero = LAWS[trial.candidate]
            status = st.record_result(status, spec, trial.candidate, job, result(law, zero), gpus=1)
    return status


def test_a_fixed_budget_plans_one_trial_per_candidate_over_every_size(spec):
    trials = next_trials(spec, st.initial_status(spec, 1, NOW))
    assert [(t.candidate, t.round, t.sizes) for t in trials] == [(n, 0, tuple(SIZES)) for n in ("steep", "flat", "worst")]


def test_finished_candidates_are_not_planned_again(spec):
    assert next_trials(spec, run_all(spec)) == []


def test_finalize_ranks_by_extrapolated_bits_per_byte_and_names_the_best(spec):
    status = st.finalize(run_all(spec), spec, 1, NOW)
    assert status.phase == "Complete" and status.best == "steep"
    assert [r.candidate for r in status.ranking] == ["steep", "flat", "worst"]
    assert [status.candidates[n].rank for n in ("steep", "flat", "worst")] == [1, 2, 3]
    assert status.progress == "3/3"
    assert [c.type for c in status.conditions] == ["Complete"]


def test_compute_spent_is_compared_with_fully_fine_tuning_every_candidate(spec):
    status = run_all(spec)
    train = sum(6e9 * s for s in SIZES)
    assert status.compute.flops == pytest.approx(3 * (train + 6e9))  # five evaluations and the zero-shot one
    assert status.compute.full_finetune_flops == pytest.approx(3 * 6e9 * 1_000_000)
    assert status.compute.gpu_seconds == pytest.approx(90.0)
    assert 0 < status.compute.fraction_of_full < 0.01


def test_one_failed_candidate_within_the_allowance_is_degraded_not_failed(spec):
    status = st.finalize(run_all(spec, failing=("flat",)), spec, 1, NOW)
    assert status.phase == "Complete"
    assert [r.candidate for r in status.ranking] == ["steep", "worst"]
    assert {c.type for c in status.conditions} == {"Complete", "Degraded"}
    assert status.candidates["flat"].reason == "ResultMissing"


def test_more_failures_than_allowed_fail_the_selection(spec):
    status = st.finalize(run_all(spec, failing=("flat", "worst")), spec, 1, NOW)
    assert status.phase == "Failed" and status.best is None
    failed = status.conditions[-1]
    assert (failed.type, failed.reason) == ("Failed", "MaxFailedCandidatesReached")
    assert failed.message.startswith("2 of 3 candidates failed (maxFailedCandidates 1): ")
    assert "flat: ResultMissing" in failed.message


def test_the_status_document_round_trips_through_json(spec):
    status = st.finalize(run_all(spec), spec, 1, NOW)
    assert st.LLMSelectionStatus.model_validate(status.dump()) == status


def test_a_status_ignores_what_a_newer_release_added_while_a_spec_refuses_unknown_keys(spec):
    status = st.finalize(run_all(spec), spec, 1, NOW)
    status.candidates["steep"].ntk = NTKSummary(n=2, eta=1.0, scope="all", parameters=10, eigenvalues=[2.0, 1.0],
                                                projections_sq=[1.0, 1.0], residual_norm_sq=2.0, seconds=1.0)
    newer = status.dump()
    newer["queueTime"] = "2027-01-01T00:00:00Z"
    newer["compute"]["energyJoules"] = 1.0
    newer["candidates"]["steep"]["ntk"]["trace"] = 3.0
    newer["candidates"]["steep"]["trials"][0]["node"] = "gpu-7"
    assert st.LLMSelectionStatus.model_validate(newer) == status
    with pytest.raises(ValidationError, match="queueTime"):
        LLMSelectionSpec.model_validate({**spec.model_dump(by_alias=True, exclude_none=True), "queueTime": "now"})


def test_the_race_learns_what_a_uniform_guess_scores_from_the_zero_shot_point_only(spec):
    status = st.initial_status(spec, 1, NOW)
    law, zero = LAWS["steep"]
    measured = result(law, zero)
    measured.zero_shot.uniform_bits_per_byte = 14.0
    for point in measured.points:
        point.test.uniform_bits_per_byte = 14.0
    status = st.mark_trial(status, "steep", st.TrialRecord(job_name="j", sizes=SIZES, state="Running"))
    status = st.record_result(status, spec, "steep", "j", measured, gpus=1)
    entry = status.candidates["steep"]
    assert entry.zero_shot.uniform_bits_per_byte == 14.0
    assert all(p.uniform_bits_per_byte is None for p in entry.points)  # said once, on the zero-shot point
    entry.parameters = 1_000  # what the race counts compute with (the result's resources, left out above)
    (candidate,) = st.race_candidates(status)
    assert (candidate.zero_shot, candidate.uniform) == (14.1, 14.0) and candidate.curve().learns_from_scratch


def test_a_result_says_how_many_test_rows_its_training_split_holds_and_a_resumed_one_keeps_it(spec):
    status = st.initial_status(spec, 1, NOW)
    law, zero = LAWS["steep"]
    measured = result(law, zero)
    measured.test_rows_in_train = 5
    status = st.record_result(status, spec, "steep", "j", measured, gpus=1)
    assert status.candidates["steep"].test_rows_in_train == 5
    measured.test_rows_in_train = None  # a result of a runner before the count
    assert st.record_result(status, spec, "steep", "k", measured, gpus=1).candidates["steep"].test_rows_in_train == 5


@pytest.mark.parametrize(("reason", "spreads"), [("DatasetFieldMissing", True), ("TestSplitNotHeldOut", True),
                                                 ("ModelNotFound", False), ("OutOfMemory", False)])
def test_a_dataset_failure_fails_the_candidates_not_started_yet_and_only_those(spec, reason, spreads):
    """The dataset is every candidate's: the ones still waiting for a Job would fail the same way."""
    status = st.initial_status(spec, 1, NOW)
    status = st.mark_trial(status, "flat", st.TrialRecord(job_name="f", sizes=SIZES, state="Running"))
    failed = TrialResult(status="Failed", reason=reason, message="dataset.targetField 'answer' is not a column")
    status = st.record_result(status, spec, "steep", "s", failed, gpus=1)
    worst, flat = status.candidates["worst"], status.candidates["flat"]
    assert flat.state == "Running"  # its trial runs already: its own result will say
    if spreads:
        assert (worst.state, worst.reason, worst.trials) == ("Failed", reason, [])
        assert worst.message == "not run: the trial of steep found the dataset unusable: dataset.targetField 'answer' is not a column"
    else:
        assert (worst.state, worst.reason) == ("Pending", None)
