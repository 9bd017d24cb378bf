"""A race through the plan and the status: rounds, eliminations, restarts, and the ranking they end in.

The trials are law-shaped curves with a little seeded measurement noise; the race decides for
real (racing.decide), nothing is forced.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lensllm.curves_io import read_curves
from lensllm.science.laws import rectified_loss
from lensllm.selection import status as st
from lensllm.selection.plan import Trial, advance, next_trials
from lensllm.selection.spec import LLMSelectionSpec
from lensllm.trial.result import Evaluation, Resources, SizePoint, TrainingStats, TrialResult

SIZES = [64, 128, 256, 512, 1024, 2048]
TARGET = 100_000
NOW = "2026-01-01T00:00:00Z"
# Two candidates close at the target, one far behind from the first sizes on.
LAWS = {"close-a": (200, 40, 0.5, 0.9), "close-b": (210, 40, 0.5, 0.9), "far": (200, 40, 0.5, 3.0)}


def race_spec(**changes) -> LLMSelectionSpec:
    return LLMSelectionSpec.model_validate({
        "candidates": [{"name": n, "model": f"org/{n}"} for n in LAWS],
        "dataset": {"source": "d.jsonl", "textField": "text"},
        "budget": {"subsetSizes": SIZES, "targetSize": TARGET, "maxComputeFraction": 1.0},
        "strategy": "race",
        # Four initial sizes: round 0 ranked by the laws (one test below starts on three, the default).
        "race": {"epsilon": 0.05, "delta": 0.01, "initialSizes": 4},
        "maxFailedCandidates": 1,
        **changes,
    })


def evaluation(bpb: float) -> Evaluation:
    return Evaluation(loss=bpb, loss_per_example=bpb * 9, bits_per_byte=bpb, examples=8, tokens=80, seconds=1.0, flops=1.0)


def measured(name: str, size: int) -> float:
    """The candidate's law at `size` with 1% noise that depends only on (candidate, size)."""
    noise = np.random.default_rng([sorted(LAWS).index(name), size]).standard_normal()
    return float(rectified_loss(np.array([float(size)]), *LAWS[name])[0] * np.exp(0.01 * noise))


def result(name: str, sizes: tuple[int, ...], loss: Callable[[str, int], float] = measured) -> TrialResult:
    points = [SizePoint(size=s, test=evaluation(loss(name, s)),
                        train=TrainingStats(steps=1, tokens=s, final_loss=1.0, seconds=0.1, flops=1e6 * s)) for s in sizes]
    resources = Resources(device="cpu", dtype="float32", parameters=10**6, trainable_parameters=10**6,
                          peak_memory_bytes=1, peak_memory_kind="processRss")
    return TrialResult(status="Succeeded", zero_shot=evaluation(3.0), points=points, seconds=1.0, resources=resources)


Status = st.LLMSelectionStatus


def run_round(spec: LLMSelectionSpec, status: Status, failing: tuple[str, ...] = ()) -> Status:
    return advance(spec, run_trials(spec, status, failing))


# How a trial ends: its result, or its Job's failure (reason, message).
Outcome = Callable[[Trial], "TrialResult | tuple[str, str]"]


def run_trials(spec: LLMSelectionSpec, status: Status, failing: tuple[str, ...] = (), outcome: Outcome | None = None) -> Status:
    """Every trial the plan asks for now, run to its end; the round is left undecided. By default each trial
    measures its candidate's law, and the Jobs of the candidates in `failing` end without a result."""
    def law_curve(trial: Trial) -> TrialResult | tuple[str, str]:
        if trial.candidate in failing:
            return "ResultMissing", "no termination message"
        return result(trial.candidate, trial.sizes)

    for trial in next_trials(spec, status):
        job = f"sel-{trial.candidate}-r{trial.round}"
        record = st.TrialRecord(job_name=job, round=trial.round, sizes=list(trial.sizes), state="Running")
        status = st.mark_trial(status, trial.candidate, record)
        ended = (outcome or law_curve)(trial)
        if isinstance(ended, TrialResult):
            status = st.record_result(status, spec, trial.candidate, job, ended, gpus=0)
        else:
            status = st.record_failure(status, trial.candidate, job, *ended)
    return status


def run_race(spec: LLMSelectionSpec) -> Status:
    status = st.initial_status(spec, 1, NOW)
    while next_trials(spec, status):
        status = run_round(spec, status)
    assert st.all_finished(status)
    return st.finalize(status, spec, 1, NOW)


def test_round_zero_runs_every_candidate_on_the_first_four_sizes():
    spec = race_spec()
    assert next_trials(spec, st.initial_status(spec, 1, NOW)) == [Trial(name, 0, tuple(SIZES[:4])) for name in LAWS]


def test_the_far_candidate_leaves_after_round_zero_and_the_others_run_only_their_new_sizes():
    status = run_race(race_spec())
    rounds = status.race.rounds
    assert [e.candidate for e in rounds[0].eliminated] == ["far"]
    assert "P(best)" in rounds[0].eliminated[0].reason
    assert rounds[0].next_sizes == {"close-a": [1024], "close-b": [1024]}
    assert [r.sizes for r in rounds[1:]] == [{"close-a": [1024], "close-b": [1024]}, {"close-a": [2048], "close-b": [2048]}]
    assert status.race.stop == "exhausted" and rounds[-1].stop == "exhausted"
    far = status.candidates["far"]
    assert (far.eliminated_in, far.lower_confidence, [p.size for p in far.points]) == (0, True, SIZES[:4])
    assert [t.job_name for t in far.trials] == ["sel-far-r0"]
    for name in ("close-a", "close-b"):
        assert [p.size for p in status.candidates[name].points] == SIZES  # nested: no size measured twice
        assert [t.sizes for t in status.candidates[name].trials] == [SIZES[:4], [1024], [2048]]


def test_a_race_by_default_runs_three_sizes_then_one_per_round_and_records_the_power_law():
    spec = race_spec(race={"epsilon": 0.05, "delta": 0.01})
    assert next_trials(spec, st.initial_status(spec, 1, NOW)) == [Trial(name, 0, tuple(SIZES[:3])) for name in LAWS]
    status = run_race(spec)
    first = status.race.rounds[0]
    assert first.law == "power" and set(first.noise) == set(first.law_leaders) == {"power"}
    assert "far" in {e.candidate for e in first.eliminated} and "close-a" in first.next_sizes
    assert status.race.rounds[1].law in ("lensllm", "vanilla")
    assert [t.sizes for t in status.candidates["close-a"].trials][:2] == [SIZES[:3], [SIZES[3]]]
    assert status.candidates["close-a"].rank == 1


def test_the_race_ranks_survivors_first_and_spends_less_than_the_fixed_budget():
    status = run_race(race_spec())
    assert status.phase == "Complete" and status.method == "race"
    assert [r.candidate for r in status.ranking][-1] == "far"
    assert [r.lower_confidence for r in status.ranking] == [False, False, True]
    assert status.best in ("close-a", "close-b")
    for entry in status.candidates.values():
        low, high = entry.interval
        assert low <= entry.predicted_loss <= high and 0.0 <= entry.p_best <= 1.0
    fixed = sum(SIZES) / TARGET
    assert status.race.fixed_budget_fraction == pytest.approx(fixed)
    assert status.race.compute_fraction == pytest.approx((2 * sum(SIZES) + sum(SIZES[:4])) / (3 * TARGET))
    assert status.race.compute_fraction < fixed


def test_the_race_stops_before_a_round_it_cannot_pay_for():
    status = run_race(race_spec(budget={"subsetSizes": SIZES, "targetSize": TARGET, "maxComputeFraction": 0.015}))
    (only,) = status.race.rounds
    assert only.stop == "computeCap" and only.next_sizes == {} and [e.candidate for e in only.eliminated] == ["far"]
    assert status.race.compute_fraction == pytest.approx(3 * sum(SIZES[:4]) / (3 * TARGET))


def test_a_decided_round_is_recomputed_identically_and_never_decided_twice():
    """An operator that restarts before writing the decision makes the same one; one that wrote it moves on."""
    spec = race_spec()
    started = st.initial_status(spec, 1, NOW)
    ended = run_round(spec, started)
    again = run_round(spec, started)
    assert ended == again and len(ended.race.rounds) == 1
    assert advance(spec, ended) == ended  # round 1 has not run: nothing to decide
    assert [t.round for t in next_trials(spec, ended)] == [1, 1]


def test_a_candidate_that_fails_leaves_the_race_and_the_ranking():
    spec = race_spec()
    status = run_round(spec, st.initial_status(spec, 1, NOW), failing=("close-b",))
    assert status.race.rounds[0].next_sizes.keys() <= {"close-a"}
    while next_trials(spec, status):
        status = run_round(spec, status)
    status = st.finalize(status, spec, 1, NOW)
    assert status.phase == "Complete" and "close-b" not in [r.candidate for r in status.ranking]
    assert status.conditions[0].reason == "CandidatesFailed"


def test_a_race_with_no_candidate_left_fails_with_the_reason():
    spec = race_spec(maxFailedCandidates=3)
    status = run_round(spec, st.initial_status(spec, 1, NOW), failing=tuple(LAWS))
    assert status.race.stop == "noCandidateLeft" and st.all_finished(status)
    ended = st.finalize(status, spec, 1, NOW)
    assert ended.phase == "Failed" and "no candidate succeeded" in ended.conditions[-1].message


def test_a_fixed_selection_keeps_one_round_over_every_size():
    spec = race_spec(strategy="fixed")
    status = st.initial_status(spec, 1, NOW)
    assert status.race is None and status.method == spec.method
    assert next_trials(spec, status) == [Trial(name, 0, tuple(SIZES)) for name in LAWS]
    assert advance(spec, status) is status


def test_a_race_that_cannot_weigh_a_candidate_s_compute_fails_naming_it():
    spec = race_spec()
    status = st.initial_status(spec, 1, NOW)
    for trial in next_trials(spec, status):
        job = f"sel-{trial.candidate}-r0"
        record = st.TrialRecord(job_name=job, sizes=list(trial.sizes), state="Running")
        status = st.mark_trial(status, trial.candidate, record)
        measured_result = result(trial.candidate, trial.sizes)
        if trial.candidate == "close-b":
            measured_result = measured_result.model_copy(update={"resources": None})
        status = st.record_result(status, spec, trial.candidate, job, measured_result, gpus=0)
    status = advance(spec, status)
    assert status.race.stop == "failed" and next_trials(spec, status) == [] and st.all_finished(status)
    ended = st.finalize(status, spec, 1, NOW)
    assert ended.phase == "Failed" and ended.reason == "RankingFailed"
    assert ended.conditions[-1].message.startswith("close-b: no parameter count")


def test_a_next_round_job_adopted_before_its_round_was_written_is_neither_relaunched_nor_forgotten():
    """The pass that decided round 0 created round 1's Jobs, then its status write failed: the next pass adopts
    the Jobs (collect records them) and decides round 0 again; the adopted trials stand for round 1."""
    spec = race_spec()
    undecided = run_trials(spec, st.initial_status(spec, 1, NOW))
    job = st.TrialRecord(job_name="sel-close-a-r1", round=1, sizes=[1024], state="Running")
    adopted = st.mark_trial(undecided, "close-a", job)
    assert adopted.candidates["close-a"].state == "Succeeded"  # its round-0 state, until the round is decided
    decided = advance(spec, adopted)
    assert decided.race.rounds == advance(spec, undecided).race.rounds
    assert (decided.candidates["close-a"].state, decided.candidates["close-b"].state) == ("Running", "Pending")
    assert next_trials(spec, decided) == [Trial("close-b", 1, (1024,))]


def test_progress_names_the_round_while_survivors_start_again():
    spec = race_spec()
    status = st.initial_status(spec, 1, NOW)
    shown = []
    while next_trials(spec, status):
        status = run_trials(spec, status)
        shown.append(status.progress)
        status = advance(spec, status)
        shown.append(status.progress)
    # Round 0 ends with all three done; "far" is out, the two others start round 1 and finish it, then round 2.
    assert shown == ["3/3 round 0", "1/3 round 1", "3/3 round 1", "1/3 round 2", "3/3 round 2", "3/3"]
    assert st.finalize(status, spec, 1, NOW).progress == "3/3"


def test_each_round_predicts_with_one_of_the_laws_the_spec_allows():
    both = run_race(race_spec()).race.rounds
    alone = run_race(race_spec(race={"epsilon": 0.05, "delta": 0.01, "initialSizes": 4, "laws": ["lensllm"]})).race.rounds
    # The zero-shot point of these curves (3.0 for all) is off their laws, so the vanilla law fits them better.
    assert {r.law for r in both} == {"vanilla"} and all(set(r.noise) == {"lensllm", "vanilla"} for r in both)
    assert {r.law for r in alone} == {"lensllm"} and all(set(r.noise) == {"lensllm"} for r in alone)


def test_each_round_names_each_law_s_leader_and_eliminates_none_of_them():
    for record in run_race(race_spec()).race.rounds:
        assert set(record.law_leaders) == {"lensllm", "vanilla"} and set(record.law_leaders.values()) <= set(record.sizes)
        assert not set(record.law_leaders.values()) & {e.candidate for e in record.eliminated}


def test_a_race_whose_laws_disagree_on_the_best_completes_with_that_caveat():
    spec = race_spec()
    finished = run_race(spec)
    agree, split = finished.model_copy(deep=True), finished.model_copy(deep=True)
    agree.race.rounds[-1].law_leaders = {"lensllm": "close-a", "vanilla": "close-a"}
    split.race.rounds[-1].law_leaders = {"lensllm": "close-a", "vanilla": "close-b"}
    assert [c.type for c in st.finalize(agree, spec, 1, NOW).conditions] == ["Complete"]
    ended = st.finalize(split, spec, 1, NOW)
    caveat, complete = ended.conditions
    assert (caveat.type, caveat.status, caveat.reason, complete.type) == ("LawsAgree", "False", "LawsDisagree", "Complete")
    assert "lensllm: close-a, vanilla: close-b" in caveat.message
    assert ended.phase == "Complete" and ended.reason is None  # a caveat, not a degraded selection


# LensBench docstring, eighth draw: its race (seed 0) ends exhausted with the laws naming different leaders.
DOCSTRING = Path(__file__).resolve().parents[2] / "data" / "lensbench-seed7" / "docstring.csv"


def table_race(
    train_examples: int, settle: bool = True, failing: Callable[[str, tuple[int, ...]], bool] = lambda *_: False,
    failed_result: bool = False,
) -> tuple[LLMSelectionSpec, Status]:
    """The race of the docstring table through the plan and the status, each trial reading its losses from the
    table (its last column, the full fine-tuning, is the target); the training split holds `train_examples` rows,
    and the trials `failing` names fail: their Jobs, or with `failed_result` the runner, with a Failed result."""
    table = read_curves(DOCSTRING)
    target = int(table.sizes[-1])
    spec = LLMSelectionSpec.model_validate({
        "candidates": [{"name": n, "model": f"org/{n}"} for n in table.models],
        "dataset": {"source": "d.jsonl", "textField": "text"},
        "budget": {"subsetSizes": [int(s) for s in table.sizes[:-1]], "targetSize": target},
        "strategy": "race",
        "race": {"settle": settle},
    })

    def read(name: str, sizes: tuple[int, ...]) -> TrialResult:
        row = table.models.index(name)
        ran = result(name, sizes, lambda _, size: float(table.loss_at(size)[row]))
        ran.zero_shot = evaluation(float(table.zero_shot[row]))
        ran.zero_shot.uniform_bits_per_byte = float(table.uniform[row])
        ran.resources.parameters = int(table.params[row])
        ran.train_examples = train_examples
        return ran

    def outcome(trial: Trial) -> TrialResult | tuple[str, str]:
        if not failing(trial.candidate, trial.sizes):
            return read(trial.candidate, trial.sizes)
        if failed_result:
            return TrialResult(status="Failed", reason="OutOfMemory", message="out of memory", seconds=1.0)
        return "DeadlineExceeded", "out of time"

    status = st.initial_status(spec, 1, NOW)
    while next_trials(spec, status):
        status = advance(spec, run_trials(spec, status, outcome=outcome))
    return spec, st.finalize(status, spec, 1, NOW)


def test_a_race_whose_laws_disagree_settles_by_fine_tuning_their_leaders_on_the_target_size():
    table = read_curves(DOCSTRING)
    target = int(table.sizes[-1])
    truth = dict(zip(table.models, table.loss_at(target)))
    spec, status = table_race(train_examples=target)
    *_, settling, settled = status.race.rounds
    leaders = set(settling.law_leaders.values())
    assert len(leaders) == 2 and (settling.stop, settling.settles_instead_of) == (None, "exhausted")
    assert settling.next_sizes == {name: [target] for name in leaders}
    assert (settled.law, settled.stop, status.race.stop, settled.sizes) == ("measured", "settled", "settled", settling.next_sizes)
    assert status.best == min(leaders, key=truth.get) == min(truth, key=truth.get)  # the table's best model
    assert [r.candidate for r in status.ranking[:2]] == sorted(leaders, key=truth.get)
    assert status.ranking[0].predicted_loss == pytest.approx(truth[status.best])  # measured, not predicted
    left = {e.candidate for e in settled.eliminated}
    assert left and not left & leaders and all(status.candidates[n].eliminated_in == settled.round for n in left)
    caveat, complete = status.conditions
    assert (caveat.type, caveat.status, caveat.reason) == ("LawsAgree", "False", "SettledByMeasurement")
    assert f"{status.best} measured the lowest loss" in caveat.message and "measured" in complete.message
    assert st.laws_agree(status) is False
    params = {n: status.candidates[n].parameters for n in table.models}
    spent_before = settling.compute_fraction
    assert status.race.compute_fraction == pytest.approx(spent_before + sum(params[n] for n in leaders) / sum(params.values()))


@pytest.mark.parametrize(("train_examples", "settle"), [(2047, True), (2048, False)])
def test_a_race_stops_unsettled_when_the_data_lacks_the_target_size_or_the_spec_says_so(train_examples, settle):
    spec, status = table_race(train_examples, settle)
    last = status.race.rounds[-1]
    assert (status.race.stop, last.settles_instead_of, last.next_sizes, last.law) == ("exhausted", None, {}, "lensllm")
    assert [c.reason for c in status.conditions] == ["LawsDisagree", "Ranked"]
    assert max(p.size for e in status.candidates.values() for p in e.points) < spec.budget.target_size == 2048


@pytest.mark.parametrize(("who", "failed_result"), [("every contender", False), ("one contender", False), ("one contender", True)])
def test_a_race_whose_settling_trials_fail_ranks_by_its_laws_and_loses_no_candidate(who, failed_result):
    """A settling trial can fail where the ladder's did not (e.g. past activeDeadlineSeconds, on 8x the data): its
    candidate stands on its earlier sizes, the race does not try again, and the laws rank it as before settling."""
    unsettled = table_race(train_examples=2048, settle=False)[1]
    one = lambda name: who == "every contender" or name == "llama-s-mix-1k"
    spec, status = table_race(2048, failing=lambda name, sizes: 2048 in sizes and one(name), failed_result=failed_result)
    *_, settling, last = status.race.rounds
    assert settling.settles_instead_of == "exhausted" and last.settles_instead_of is None
    assert (status.race.stop, last.stop, last.law) == ("exhausted", "exhausted", "lensllm")
    assert status.phase == "Complete" and all(e.state == "Succeeded" for e in status.candidates.values())
    failed = [(n, t.failure) for n, e in status.candidates.items() for t in e.trials if t.state == "Failed"]
    assert {n for n, _ in failed} == {n for n in settling.next_sizes if one(n)}
    why = "OutOfMemory: out of memory" if failed_result else "DeadlineExceeded: out of time"
    assert all(failure == why for _, failure in failed)
    caveat = next(c for c in status.conditions if c.type == "LawsAgree")
    assert caveat.reason == "LawsDisagree" and "could not settle it on targetSize: the trials of " in caveat.message
    assert f"llama-s-mix-1k ({why})" in caveat.message
    if who == "every contender":
        assert status.best == unsettled.best and [r.candidate for r in status.ranking] == [r.candidate for r in unsettled.ranking]
