"""The reliability suites' own checks catch what they claim to: a chaos invariant that could never fire, a fuzz
generator that never produced hostile input or a stand-in that forgot --resume would make a green suite meaningless.
These run in the default test run (no marker): they are fast and need no cluster.
"""

import inspect
import json
from pathlib import Path

import pytest
import stand_in_trial
from chaos import (
    CANDIDATES,
    REFUSALS,
    SIZES,
    Schedule,
    Verdict,
    duplicate_jobs,
    models_not_kept,
    points_lost,
    points_measured_twice,
    selection_manifest,
    settling_table,
)
from hypothesis import HealthCheck, given, settings
from kube_emulator import JournalEntry
from lensllm.science.race_replay import replay_race
from lensllm.selection.spec import LLMSelectionSpec
from lensllm.trial.spec import TrialSpec
from load_run import latencies
from spec_fuzz import HOSTILE, YAML_ONLY, Case, manifests, put

LABELS = {"lensllm.io/candidate": "a", "lensllm.io/round": "0"}


def entry(kind: str, name: str, labels: dict[str, str] = LABELS) -> JournalEntry:
    return JournalEntry(0.0, kind, "jobs", "chaos", name, labels)


def test_a_second_job_for_a_trial_attempt_is_a_violation_unless_the_first_went() -> None:
    assert duplicate_jobs([entry("ADDED", "j"), entry("MODIFIED", "j")]) == []
    assert duplicate_jobs([entry("ADDED", "j"), entry("DELETED", "j"), entry("ADDED", "j")]) == []
    twins = duplicate_jobs([entry("ADDED", "j"), entry("ADDED", "j-2")])
    assert twins == ["Job j-2 created while j runs the same trial ('a', '0')"]
    other = {"lensllm.io/candidate": "b", "lensllm.io/round": "0"}
    assert duplicate_jobs([entry("ADDED", "j"), entry("ADDED", "k", other)]) == []


def test_the_ledger_shows_points_measured_twice(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(json.dumps({"model": f"/models/{m}", "size": s, "pod": "p"}) + "\n"
                              for m, s in (("a", 16), ("a", 32), ("b", 16), ("a", 16))))
    assert points_measured_twice(ledger) == ["a size 16 measured 2 times"]
    assert points_measured_twice(tmp_path / "none.jsonl") == []


def test_a_candidate_without_every_size_has_lost_points() -> None:
    done = {"state": "Succeeded", "points": [{"size": size} for size in SIZES]}
    status = {"candidates": {"model-a": done, "model-b": done, "model-c": {**done, "points": done["points"][1:]}}}
    (lost,) = points_lost(status, "fixed")
    assert lost.startswith("model-c: state Succeeded, sizes [32, 64, 128]")


def race_status(a_points: list[int]) -> dict:
    """A race whose round 1 ran size 256 for model-a and model-b after model-c was eliminated in round 0."""
    rounds = [{"sizes": {name: SIZES for name in ("model-a", "model-b", "model-c")},
               "eliminated": [{"candidate": "model-c", "reason": "behind"}]},
              {"sizes": {"model-a": [256], "model-b": [256]}, "eliminated": []}]
    points = {"model-a": a_points, "model-b": [*SIZES, 256], "model-c": SIZES}
    return {"race": {"rounds": rounds, "stop": "exhausted"},
            "ranking": [{"candidate": name} for name in ("model-b", "model-a", "model-c")],
            "candidates": {name: {"state": "Succeeded", "points": [{"size": s} for s in sizes]}
                           for name, sizes in points.items()}}


def test_a_race_candidate_must_have_the_sizes_of_every_round_it_ran_and_no_others() -> None:
    assert points_lost(race_status([*SIZES, 256]), "race") == []
    (lost,) = points_lost(race_status(SIZES), "race")
    assert lost.startswith("model-a: state Succeeded, sizes [16, 32, 64, 128] of [16, 32, 64, 128, 256]")
    (lost,) = points_lost(race_status([*SIZES, 256, 512]), "race")
    assert lost.startswith("model-a: state Succeeded, sizes [16, 32, 64, 128, 256, 512] of")
    assert len(points_lost({"race": {"rounds": []}, "candidates": {}}, "race")) == 3  # nothing planned is a loss


def test_a_race_verdict_holds_its_rounds_and_not_only_its_ranking() -> None:
    status = race_status([*SIZES, 256])
    verdict = Verdict.of(status)
    assert verdict.ranking == ("model-b", "model-a", "model-c") and verdict.stop == "exhausted"
    status["race"]["rounds"][1]["sizes"]["model-c"] = [256]  # a round that ran the eliminated candidate too
    assert Verdict.of(status) != verdict and Verdict.of(status).ranking == verdict.ranking


def test_schedules_are_drawn_from_their_seed_alone() -> None:
    assert Schedule.draw(7) == Schedule.draw(7) != Schedule.draw(8)
    kinds = {d.kind for seed in range(50) for d in Schedule.draw(seed).disruptions}
    assert kinds == {"kill-operator", "evict", "delete-job", "compact", "drop-watches"}
    ci_runs = [Schedule.draw(seed) for seed in range(12)]  # LENSLLM_CHAOS_RUNS in scripts/test.sh
    assert {s.strategy for s in ci_runs} == {"fixed", "race", "settle"}
    assert {d.kind for s in ci_runs for d in s.disruptions} == kinds
    assert {r.code for s in ci_runs for r in s.refusals} == {code for code, *_ in REFUSALS}


def test_the_settling_strategy_s_race_settles_on_its_table_with_the_operator_s_race_settings(tmp_path: Path) -> None:
    """The chaos suite's settling runs hit the settling round only if the fault-free race settles: replayed with the
    settings the operator derives from the chaos manifest, the cipher model goes in round 1 and the other two
    settle on the target."""
    table = settling_table(tmp_path / "settling.csv")
    assert table.models == CANDIDATES
    spec = LLMSelectionSpec.model_validate(selection_manifest("s", 3, "work", "settle", table)["spec"])
    replay = replay_race(table, float(spec.budget.target_size), spec.race_settings(), seed=spec.seed)
    assert [[e.name for e in d.eliminated] for d in replay.decisions][:2] == [[], ["model-a"]]
    assert replay.stop == "settled" and replay.decisions[-2].next_sizes == {"model-b": (2048,), "model-c": (2048,)}


def test_a_model_fine_tuned_on_the_target_must_be_named_in_the_status_and_lie_on_the_claim(tmp_path: Path) -> None:
    kept = tmp_path / "lensllm-work" / "uid" / "model-b" / "model"
    kept.mkdir(parents=True)
    (kept / "config.json").write_text("{}")
    entry = {"points": [{"size": 64}, {"size": 2048}], "fineTunedModel": "pvc://work/lensllm-work/uid/model-b/model"}
    status = {"candidates": {"model-a": {"points": [{"size": 64}]}, "model-b": entry}}
    assert models_not_kept(status, 2048, "work", tmp_path) == []
    unnamed = {"candidates": {"model-b": {**entry, "fineTunedModel": None}}}
    assert models_not_kept(unnamed, 2048, "work", tmp_path) == [
        "model-b: fine-tuned on the target size 2048, its model unnamed is not on claim work"]
    elsewhere = {"candidates": {"model-b": {**entry, "fineTunedModel": "pvc://other/lensllm-work/uid/model-b/model"}}}
    assert len(models_not_kept(elsewhere, 2048, "work", tmp_path)) == 1
    (kept / "config.json").unlink()
    assert len(models_not_kept(status, 2048, "work", tmp_path)) == 1


def spec(tmp_path: Path) -> TrialSpec:
    return TrialSpec.model_validate({"candidate": {"model": "/models/a"}, "subsetSizes": [16, 32, 64],
                                     "targetSize": 1024, "dataset": {"source": str(tmp_path), "textField": "t"},
                                     "ntk": {"probeSize": 4}})


def test_the_stand_in_trial_resumes_after_the_sizes_it_finished(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(stand_in_trial.SIZE_SECONDS, "0")
    monkeypatch.setenv(stand_in_trial.LEDGER, str(tmp_path / "ledger.jsonl"))
    checkpoints = []
    first = stand_in_trial.run_trial(spec(tmp_path), on_checkpoint=lambda r: checkpoints.append(len(r.points)))
    assert first.status == "Succeeded" and checkpoints == [1, 2, 3] and first.fits
    partial = first.model_copy(update={"points": first.points[:2]})
    again = stand_in_trial.run_trial(spec(tmp_path), resume=partial)
    assert [p.size for p in again.points] == [16, 32, 64] and again.points == first.points
    measured = [line["size"] for line in stand_in_trial.read_ledger(tmp_path / "ledger.jsonl")]
    assert measured == [16, 32, 64, 64]  # the resumed trial measured only the size it lacked


def test_put_reaches_into_lists_and_creates_what_is_missing() -> None:
    document = {"spec": {"candidates": [{"name": "a"}]}}
    put(document, ("spec", "candidates", 0, "name"), "b\n")
    put(document, ("spec", "resources", "cpu"), "lots")
    assert document == {"spec": {"candidates": [{"name": "b\n"}], "resources": {"cpu": "lots"}}}


def test_the_generator_makes_plain_hostile_and_yaml_only_manifests() -> None:
    seen: list[Case] = []

    @settings(max_examples=120, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(manifests())
    def collect(case: Case) -> None:
        seen.append(case)

    collect()
    kinds = {case.hostility for case in seen}
    assert "none" in kinds and kinds & set(YAML_ONLY) and len(kinds) > 30, kinds
    assert all(case.document is None for case in seen if case.isolated)
    assert len(HOSTILE) >= 50


def test_the_stand_in_trial_takes_exactly_the_recipes_arguments() -> None:
    """run-trial calls the recipe with keywords; a stand-in that missed a new one would fail every trial it runs."""
    from lensllm.trial import recipe  # torch: imported only when this test runs

    assert inspect.signature(stand_in_trial.run_trial).parameters.keys() == inspect.signature(
        recipe.run_trial
    ).parameters.keys()


def test_the_load_suite_times_every_trial_of_a_race_from_its_job_done_to_its_result_recorded() -> None:
    def job(at: float, name: str, done: bool, kind: str = "MODIFIED") -> JournalEntry:
        return JournalEntry(at, kind, "jobs", "load", name, ("race-1", done))

    def selection(at: float, trials: dict[str, str]) -> JournalEntry:
        return JournalEntry(at, "MODIFIED", "llmselections", "load", "race-1", ("Running", trials))

    journal = [
        selection(0.0, {}),
        job(0.5, "race-1-a-r0", False, "ADDED"), job(0.6, "race-1-b-r0", False, "ADDED"),
        job(2.0, "race-1-a-r0", True), job(3.0, "race-1-b-r0", True),
        selection(4.0, {"race-1-a-r0": "Succeeded", "race-1-b-r0": "Running"}),
        selection(5.0, {"race-1-a-r0": "Succeeded", "race-1-b-r0": "Succeeded"}),
        job(6.0, "race-1-a-r1", False, "ADDED"), job(7.0, "race-1-a-r1", True),  # round 1: one survivor
        selection(9.5, {"race-1-a-r0": "Succeeded", "race-1-b-r0": "Succeeded", "race-1-a-r1": "Succeeded"}),
        job(10.0, "race-1-b-r1", True),  # never recorded: not timed
    ]
    measured = latencies(journal, {"race-1"}, candidates=2)
    assert sorted(measured["result_latency"]) == [2.0, 2.0, 2.5]
    assert measured["jobs_created"] == [0.6]
