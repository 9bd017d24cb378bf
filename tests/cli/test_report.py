"""`lensllm report`'s tables: each law's leader per round, the caveat when the laws disagree, and which candidates
learn the task from scratch."""

import json

import pytest

from rich.console import Console

from lensllm.cli.main import main
from lensllm.cli.report import ranking_table, rounds_table
from lensllm.selection.status import LLMSelectionStatus


def race_status(last_leaders: dict[str, str], conditions: list[dict]) -> LLMSelectionStatus:
    rounds = [
        {"round": 0, "sizes": {"a": [8, 16, 32, 64], "b": [8, 16, 32, 64], "c": [8, 16, 32, 64]}, "law": "lensllm",
         "noise": {"lensllm": 0.01, "vanilla": 0.02}, "lawLeaders": {"lensllm": "a", "vanilla": "a"},
         "fromScratch": ["c"], "eliminated": [{"candidate": "c", "reason": "P(best) 0.0010 < epsilon 0.01 after sizes up to 64"}],
         "computeFraction": 0.05},
        {"round": 1, "sizes": {"a": [128], "b": [128]}, "law": "lensllm", "noise": {"lensllm": 0.01, "vanilla": 0.02},
         "lawLeaders": last_leaders, "computeFraction": 0.08, "stop": "exhausted"},
    ]
    return LLMSelectionStatus.model_validate({
        "phase": "Complete", "conditions": conditions,
        "race": {"rounds": rounds, "stop": "exhausted", "computeFraction": 0.08, "fixedBudgetFraction": 0.12},
    })


def rendered(status: LLMSelectionStatus, table=rounds_table) -> str:
    console = Console(width=250, record=True)
    console.print(table(status))
    return console.export_text()


def test_rounds_name_the_common_leader_when_the_laws_agree():
    complete = {"type": "Complete", "status": "True", "reason": "Ranked", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    text = rendered(race_status({"lensllm": "a", "vanilla": "a"}, [complete]))
    assert text.count("a (every law)") == 2 and "disagree" not in text and "predict different" not in text
    assert "learn the task from scratch (predicted by their worst law): c" in text


def test_the_laws_disagreement_is_named_per_round_and_in_the_caption():
    split = {"type": "LawsAgree", "status": "False", "reason": "LawsDisagree", "lastTransitionTime": "2026-01-01T00:00:00Z",
             "message": "the laws predict different best candidates (lensllm: a, vanilla: b); the ranking follows lensllm"}
    text = rendered(race_status({"lensllm": "a", "vanilla": "b"}, [split]))
    assert "a (every law)" in text and "lensllm: a; vanilla: b" in text
    assert "the laws predict different best candidates (lensllm: a, vanilla: b)" in " ".join(text.split())


def test_a_settled_race_shows_the_round_it_settled_and_what_the_target_size_measured():
    settled = {"type": "LawsAgree", "status": "False", "reason": "SettledByMeasurement", "lastTransitionTime": "2026-01-01T00:00:00Z",
               "message": "the laws predicted different best candidates (lensllm: a, vanilla: b); the race fine-tuned them on "
               "targetSize, and b measured the lowest loss there"}
    status = race_status({"lensllm": "a", "vanilla": "b"}, [settled])
    settling = status.race.rounds[-1]
    settling.stop, settling.settles_instead_of, settling.next_sizes = None, "exhausted", {"a": [2048], "b": [2048]}
    status.race.rounds.append(settling.model_copy(update={
        "round": 2, "sizes": {"a": [2048], "b": [2048]}, "law": "measured", "noise": {}, "law_leaders": {}, "next_sizes": {},
        "settles_instead_of": None, "stop": "settled", "compute_fraction": 0.3}))
    status.race.stop = "settled"
    text = " ".join(rendered(status).split())
    assert "race: 3 rounds, stopped: settled" in text and "exhausted, laws disagree: settle on the target" in text
    assert "2048: 2 candidates │ measured │ - │ - │ 30.00% │ settled" in text
    assert "the race fine-tuned them on targetSize, and b measured the lowest loss there" in text


def test_a_candidate_no_better_than_a_uniform_guess_before_fine_tuning_is_marked_as_learning_from_scratch():
    def candidate(zero_shot: float) -> dict:
        return {"model": "m", "state": "Succeeded",
                "zeroShot": {"size": 0, "loss": 7.0, "bitsPerByte": zero_shot, "lossPerExample": 70.0, "uniformBitsPerByte": 5.28}}

    status = LLMSelectionStatus.model_validate(
        {"phase": "Complete", "candidates": {"random": candidate(5.31), "pretrained": candidate(3.81)}}
    )
    text = rendered(status, lambda s: ranking_table(s, 2048))
    assert "5.3100 (from scratch)" in text and "3.8100 (from scratch)" not in text and "3.8100" in text


def test_a_race_that_ran_under_a_cap_refused_today_is_still_reported(tmp_path, capsys):
    """Round 0 (8 to 64) spends 5.9% of fine-tuning on 2,048 examples: a cap of 1% is refused to a new selection."""
    complete = {"type": "Complete", "status": "True", "reason": "Ranked", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    spec = {"candidates": [{"name": n, "model": f"org/{n}"} for n in "abc"],
            "dataset": {"source": "d", "inputField": "q", "targetField": "a"}, "strategy": "race",
            "race": {"initialSizes": 4}, "budget": {"baseSize": 8, "doublings": 4, "targetSize": 2048, "maxComputeFraction": 0.01}}
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"apiVersion": "lensllm.io/v1alpha1", "kind": "LLMSelection", "metadata": {"name": "old"},
                                "spec": spec, "status": race_status({"lensllm": "a", "vanilla": "a"}, [complete]).dump()}))
    assert main(["report", str(path)]) == 0
    assert "race: 2 rounds, stopped: exhausted" in " ".join(capsys.readouterr().out.split())


def a_selection(tmp_path, status: object):
    path = tmp_path / "selection.json"
    spec = {"candidates": [{"name": "a", "model": "org/a"}], "dataset": {"source": "d", "inputField": "q", "targetField": "a"},
            "budget": {"baseSize": 8, "doublings": 4, "targetSize": 2048}}
    path.write_text(json.dumps({"apiVersion": "lensllm.io/v1alpha1", "kind": "LLMSelection", "metadata": {"name": "s"},
                                "spec": spec, "status": status}))
    return path


@pytest.mark.parametrize(("status", "says"), [
    ([1], "status: Input should be a valid dictionary or instance of LLMSelectionStatus"),
    ({"candidates": {"a": {"model": "org/a", "predictedLoss": float("nan")}}},
     "status.candidates.a.predictedLoss: Input should be a finite number"),
    ({"candidates": {"a": {"model": "org/a", "pBest": 7}}}, "status.candidates.a.pBest: Input should be less than or equal to 1"),
    ({"candidates": {"a": {"model": "org/a", "interval": [1.0, float("inf")]}}},
     "status.candidates.a.interval.1: Input should be a finite number"),
    ({"ranking": [{"candidate": "a", "predictedLoss": float("nan")}]}, "status.ranking.0.predictedLoss: Input should be a finite"),
    ({"candidates": {"a": {"model": "org/a", "points": [
        {"size": 8, "loss": 1.0, "bitsPerByte": float("nan"), "lossPerExample": 9.0}]}}},
     "status.candidates.a.points.0.bitsPerByte: Input should be a finite number"),
])
def test_a_status_that_is_not_valid_is_refused_naming_the_file_and_field(status, says, tmp_path, capsys):
    path = a_selection(tmp_path, status)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lensllm report: error: {path}: {says}") and err.count("\n") == 1


def test_test_rows_the_training_split_holds_too_are_said_under_the_ranking():
    point = {"size": 0, "loss": 7.0, "bitsPerByte": 3.8, "lossPerExample": 70.0}
    status = LLMSelectionStatus.model_validate({"phase": "Complete", "candidates": {
        "a": {"model": "m", "state": "Succeeded", "zeroShot": point, "testRowsInTrain": 12},
        "b": {"model": "m", "state": "Failed"}}})
    text = " ".join(rendered(status, lambda s: ranking_table(s, 2048)).split())
    assert "12 rows of the test split are rows of the training split too: the test losses leave them out" in text
    status.candidates["a"].test_rows_in_train = 0
    assert "training split" not in rendered(status, lambda s: ranking_table(s, 2048))
