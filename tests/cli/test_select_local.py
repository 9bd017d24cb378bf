"""`lensllm select --local` end to end: real runner processes on the demo's tiny models."""

import contextlib
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from demo_selection import RACE_BUDGET, RACE_SETTINGS, demo_models, selection_manifest

from lensllm.cli.main import main
from lensllm.cli.report import race_curves
from lensllm.selection.status import LLMSelectionStatus
from lensllm.trial.model_files import host_memory_bytes


def write_manifest(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "selection.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def fixed_selection(demo_world, tmp_path_factory) -> tuple[int, Path, str]:
    """`lensllm select --local` on a fixed budget, the race's (demo_selection.RACE_BUDGET): exit code, output folder
    and what it printed. Read by the test of its own output and by the race's comparison."""
    folder = tmp_path_factory.mktemp("fixed")
    doc = selection_manifest(demo_world, demo_models(demo_world), name="demo-fixed", budget=RACE_BUDGET,
                             race=RACE_SETTINGS)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # on the CPU on any machine: the memory shared out is the host's
        code = main(["select", str(write_manifest(folder, doc)), "--local", "--workers", "2", "--out", str(folder / "out")])
    return code, folder / "out", printed.getvalue()


def test_a_local_selection_ranks_every_candidate_and_writes_the_status_document(fixed_selection, tmp_path, capsys):
    code, out, printed = fixed_selection
    status = LLMSelectionStatus.model_validate(json.loads((out / "status.json").read_text()))
    assert code == 0 and status.phase == "Complete"
    assert sorted(r.candidate for r in status.ranking) == ["tiny-gpt2", "tiny-llama", "tiny-opt"]
    assert status.best == "tiny-llama"  # the most pre-trained candidate
    assert all(len(c.points) == 5 and c.zero_shot and c.ntk for c in status.candidates.values())
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "tiny-llama" in printed
    # Two workers without a GPU: each trial plans for half the host's memory, not all of it.
    planned = [json.loads(result.read_text())["plan"]["capacityBytes"] for result in (out / "trials").glob("*-r0.json")]
    assert planned == [host_memory_bytes() // 2] * 3


    plot = tmp_path / "report.png"
    assert main(["report", str(out / "selection.json"), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert table.index("tiny-llama") < table.index("tiny-gpt2") and "Complete" in table
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_a_local_trial_on_the_target_size_saves_its_fine_tuned_model_in_the_output_folder(demo_world, tmp_path, capsys):
    """As a settling round's trials do: the model fine-tuned on targetSize is kept, and the status names it."""
    out = tmp_path / "out"
    doc = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"), ntk={"enabled": False},
                             budget={"subsetSizes": [16, 32, 64], "targetSize": 64})
    assert main(["select", str(write_manifest(tmp_path, doc)), "--local", "--out", str(out)]) == 0
    status = LLMSelectionStatus.model_validate(json.loads((out / "status.json").read_text()))
    saved = out.resolve() / "models" / "tiny-opt"
    unwrapped = "".join(capsys.readouterr().out.split())  # the table's caption wraps the path
    assert "".join(f"tiny-opt fine-tuned on 64 examples, saved in {saved}".split()) in unwrapped
    assert status.candidates["tiny-opt"].fine_tuned_model == str(saved)
    assert json.loads((saved / "config.json").read_text())["model_type"] == "opt"
    (complete,) = [c for c in status.conditions if c.type == "Complete"]
    assert complete.message.endswith(f"; its fine-tuned model: {saved}")


def test_a_candidate_whose_model_is_missing_fails_the_selection_with_its_reason(demo_world, tmp_path):
    models = {"tiny-opt": str(demo_world / "models" / "tiny-opt"), "ghost": str(tmp_path / "no-such-model")}
    out = tmp_path / "out"
    doc = selection_manifest(demo_world, models, budget={"subsetSizes": [16, 32, 64], "targetSize": 1024})
    code = main(["select", str(write_manifest(tmp_path, doc)), "--local", "--out", str(out)])
    status = LLMSelectionStatus.model_validate(json.loads((out / "status.json").read_text()))
    assert code == 1 and status.phase == "Failed"
    assert status.candidates["ghost"].reason == "ModelNotFound"
    assert status.candidates["tiny-opt"].state == "Succeeded"


def test_a_trial_that_finds_the_dataset_unusable_leaves_the_candidates_not_yet_started_unrun(demo_world, tmp_path):
    doc = selection_manifest(demo_world, demo_models(demo_world))
    doc["spec"]["dataset"]["targetField"] = "answer"
    out = tmp_path / "out"
    assert main(["select", str(write_manifest(tmp_path, doc)), "--local", "--workers", "1", "--out", str(out)]) == 1
    status = LLMSelectionStatus.model_validate(json.loads((out / "status.json").read_text()))
    first, *others = doc["spec"]["candidates"]
    ran = status.candidates[first["name"]]
    assert (status.phase, ran.state, ran.reason, len(ran.trials)) == ("Failed", "Failed", "DatasetFieldMissing", 1)
    for candidate in others:
        entry = status.candidates[candidate["name"]]
        assert (entry.state, entry.reason, entry.trials) == ("Failed", "DatasetFieldMissing", [])
        assert entry.message == f"not run: the trial of {first['name']} found the dataset unusable: {ran.message}"
    assert [p.name for p in (out / "trials").glob("*.spec.json")] == [f"demo-{first['name']}-r0.spec.json"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, "no such file"),
        ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\n", "expected apiVersion lensllm.io/v1alpha1 and kind LLMSelection"),
        ("a: [unclosed\n", "not valid YAML"),
        ("apiVersion: lensllm.io/v1alpha1\nkind: LLMSelection\nmetadata: {name: x}\nspec: {candidates: []}\n", "spec.candidates"),
    ],
)
def test_bad_manifests_exit_2_with_one_line(text, expected, tmp_path, capsys):
    path = tmp_path / "selection.yaml"
    if text is not None:
        path.write_text(text)
    code = main(["select", str(path), "--local"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.count("\n") == 1


def test_report_needs_a_selection_with_a_status(tmp_path, capsys):
    doc = selection_manifest(tmp_path, {"a": "gpt2"})
    path = write_manifest(tmp_path, doc)
    assert main(["report", str(path)]) == 2
    assert "has no status yet" in capsys.readouterr().err


def test_a_local_race_eliminates_a_hopeless_candidate_early_and_picks_the_fixed_budget_s_winner(
    demo_race, fixed_selection, tmp_path, capsys, monkeypatch
):
    """Real runner processes on the demo models; the race decides for real (epsilon 5%, stop at P(best) >= 99%).
    The race is the default strategy: its manifest names none (demo_selection.race_manifest)."""
    race = LLMSelectionStatus.model_validate(json.loads((demo_race / "status.json").read_text()))
    fixed = LLMSelectionStatus.model_validate(json.loads((fixed_selection[1] / "status.json").read_text()))
    assert race.best == fixed.best == "tiny-llama"
    rounds = race.race.rounds
    assert len(rounds) >= 2 and "tiny-gpt2" in [e.candidate for e in rounds[0].eliminated]
    assert rounds[0].from_scratch == ["tiny-gpt2"]  # random weights: no better than a uniform guess before fine-tuning
    gpt2 = race.candidates["tiny-gpt2"]
    assert (gpt2.eliminated_in, gpt2.lower_confidence, [t.sizes for t in gpt2.trials]) == (0, True, [[16, 32, 64]])
    assert rounds[0].law == "power" and rounds[1].law in ("lensllm", "vanilla")  # three sizes: the laws from round 1
    assert race.ranking[-1].candidate == "tiny-gpt2" and race.ranking[-1].lower_confidence
    llama = race.candidates["tiny-llama"]
    assert [t.sizes for t in llama.trials][:2] == [[16, 32, 64], [128]]  # nested: round 1 ran only the new size
    assert llama.ntk is not None and llama.p_best > 0.9
    assert llama.zero_shot == fixed.candidates["tiny-llama"].zero_shot  # round 0's: round 1 did not measure it again
    assert race.race.compute_fraction < race.race.fixed_budget_fraction == pytest.approx(496 / 1024)
    assert race.compute.flops < fixed.compute.flops

    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "260")  # rows on one line each
    assert main(["report", str(demo_race / "selection.json")]) == 0
    report = capsys.readouterr().out
    assert f"race: {len(rounds)} rounds, stopped: {race.race.stop}" in report and "out in round 0" in report
    round_1 = "tiny-llama" if len(rounds[1].sizes) == 1 else f"{len(rounds[1].sizes)} candidates"
    assert f"128: {round_1}" in report  # round 1: only the survivors ran, and only the next size
    assert set(rounds[1].sizes) == {"tiny-llama", "tiny-opt"} - {e.candidate for e in rounds[0].eliminated}
    assert "tiny-llama (every law)" in report and all(set(r.law_leaders) == {"lensllm", "vanilla"} for r in rounds[1:])

    plotted = {row.name: row for row in race_curves(race)}
    assert list(plotted["tiny-llama"].sizes) == [16, 32, 64, 128, 256][: 2 + len(rounds)]  # every round's points
    assert list(plotted["tiny-gpt2"].sizes) == [16, 32, 64] and plotted["tiny-gpt2"].eliminated_in == 0
    assert plotted["tiny-gpt2"].law == "power"
    for row in plotted.values():
        assert row.law == race.race.rounds[-1 if row.eliminated_in is None else row.eliminated_in].law
        low, high = row.interval
        assert low <= row.predicted_loss <= high
        assert np.allclose(row.curve(row.sizes), row.losses, rtol=0.1)  # the law's curve runs through its points
    plot = tmp_path / "race.png"
    assert main(["report", str(demo_race / "selection.json"), "--plot", str(plot)]) == 0
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_a_race_report_plots_a_prediction_outside_its_interval_and_refuses_one_with_no_decided_round(
    demo_race, tmp_path, capsys
):
    """The race predicts the mean of its draws in log space and bounds them by quantiles: skewed draws can put the
    mean outside the bounds, which must not cost the plot. A status with no decided round has nothing to plot."""
    document = json.loads((demo_race / "selection.json").read_text())
    entry = document["status"]["candidates"]["tiny-llama"]
    entry["interval"] = [entry["predictedLoss"] * 1.1, entry["predictedLoss"] * 1.2]
    skewed, plot = tmp_path / "skewed.json", tmp_path / "skewed.png"
    skewed.write_text(json.dumps(document))
    assert main(["report", str(skewed), "--plot", str(plot)]) == 0
    assert plot.read_bytes().startswith(b"\x89PNG")

    document["status"]["race"]["rounds"] = []
    undecided = tmp_path / "undecided.json"
    undecided.write_text(json.dumps(document))
    capsys.readouterr()
    assert main(["report", str(undecided), "--plot", str(tmp_path / "undecided.png")]) == 2
    assert "nothing to plot" in capsys.readouterr().err


def test_a_trial_result_that_does_not_validate_names_its_field(tmp_path):
    from lensllm.local import _outcome

    compact, log = tmp_path / "t.termination", tmp_path / "t.log"
    compact.write_text(json.dumps({"status": "Succeeded", "zeroShot": {"loss": 1.0}}))
    log.write_text("")
    assert _outcome(compact, log, 0) == (None, ("ResultInvalid", f"{compact}: zeroShot.lossPerExample: Field required "
                                                                 "(and 5 more)"))


def measured_points(result_file: Path) -> list[dict]:
    return json.loads(result_file.read_text())["points"] if result_file.exists() else []


def interruptible() -> None:
    """Ctrl-C's default action in the child, as a terminal's foreground job has it. A test process left ignoring
    SIGINT by an earlier test of the same worker hands the ignoring down, and nothing is interrupted (the full
    suite did so on 2026-12-04)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_local_selection_resumes_the_sizes_its_trial_finished_and_a_finished_one_runs_afresh(
    demo_world, tmp_path
):
    """Ctrl-C (SIGINT to the terminal's process group) mid-trial, then the same command again."""
    # Epochs enough that the sizes after the first take seconds, not milliseconds: the interrupt lands among them.
    training = {"learningRate": 0.001, "epochs": 30, "batchSize": 16, "maxSeqLength": 32}
    doc = selection_manifest(demo_world, demo_models(demo_world, "tiny-llama"), name="cut",
                             budget={"baseSize": 16, "doublings": 4, "targetSize": 1024}, training=training)
    command = [sys.executable, "-m", "lensllm.cli.main", "select", str(write_manifest(tmp_path, doc)), "--local",
               "--out", str(tmp_path / "out")]
    result_file = tmp_path / "out" / "trials" / "cut-tiny-llama-r0.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                          start_new_session=True, preexec_fn=interruptible) as proc:
        deadline = time.monotonic() + 120
        while not measured_points(result_file) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    kept = measured_points(result_file)
    assert proc.returncode == 130, err
    assert "interrupted; the sizes each trial finished are kept in" in err and "Traceback" not in err
    assert 1 <= len(kept) < 5 and not (tmp_path / "out" / "status.json").exists()

    def run_again() -> list[dict]:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return measured_points(result_file)

    resumed = run_again()
    assert [p["size"] for p in resumed] == [16, 32, 64, 128, 256]
    assert resumed[: len(kept)] == kept  # the very same measurements, timings included: not measured again
    again = run_again()  # the run before finished: this one measures everything anew
    assert [p["size"] for p in again] == [16, 32, 64, 128, 256]
    assert all(a["train"]["seconds"] != r["train"]["seconds"] for a, r in zip(again, resumed))


def test_a_runner_killed_outright_is_result_missing_not_the_result_an_earlier_run_left(
    fixed_selection, tmp_path, monkeypatch
):
    """The folder of a finished selection, run again with runners that die at start-up (as an OOM kill would)."""
    earlier = fixed_selection[1].parent
    folder = tmp_path / "again"
    shutil.copytree(earlier, folder)
    killer = tmp_path / "killer"
    killer.mkdir()
    (killer / "sitecustomize.py").write_text("import os\nos._exit(137)\n")  # imported by every new interpreter
    monkeypatch.setenv("PYTHONPATH", str(killer))
    assert main(["select", str(folder / "selection.yaml"), "--local", "--out", str(folder / "out")]) == 1
    status = LLMSelectionStatus.model_validate(json.loads((folder / "out" / "status.json").read_text()))
    assert {c.reason for c in status.candidates.values()} == {"ResultMissing"}, status.candidates


def test_a_second_selection_into_a_folder_in_use_is_refused_in_one_line(demo_world, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    doc = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"))
    with open(out / ".lensllm-select.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the first run holds it
        held.write("4242")
        held.flush()
        assert main(["select", str(write_manifest(tmp_path, doc)), "--local", "--out", str(out)]) == 2
    assert capsys.readouterr().err.endswith(
        f"--out {out}: another lensllm select is running into it (process 4242); wait for it, or give another --out\n")
    assert not (out / "trials").exists()


def test_a_trial_past_the_active_deadline_is_stopped_as_its_job_would_be(demo_world, tmp_path):
    doc = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"), activeDeadlineSeconds=1)
    out = tmp_path / "out"
    started = time.monotonic()
    assert main(["select", str(write_manifest(tmp_path, doc)), "--local", "--out", str(out)]) == 1
    assert time.monotonic() - started < 30  # the runner alone needs seconds to import torch: it was killed
    entry = LLMSelectionStatus.model_validate(json.loads((out / "status.json").read_text())).candidates["tiny-opt"]
    assert (entry.state, entry.reason) == ("Failed", "DeadlineExceeded")
    assert entry.message == "stopped after spec.activeDeadlineSeconds (1 s), as its Job would be"


def test_lines_a_library_prints_among_the_progress_events_are_passed_over():
    from lensllm.local import _progress_event

    assert _progress_event('{"event": "size", "size": 16}\n') == {"event": "size", "size": 16}
    assert [_progress_event(line) for line in ("3\n", "[1, 2]\n", "Loading weights...\n", "null\n")] == [None] * 4


FAIL_ONCE = '''
import json, os, pathlib, threading, time
marker = pathlib.Path(os.environ["LENSLLM_TEST_MARKER"])
if not marker.exists():  # the first runner: dies (exit 1, a transient fault) once it has saved a size
    marker.write_text("")
    result = pathlib.Path(os.environ["LENSLLM_TEST_RESULT"])

    def die_after_a_size():
        while True:
            try:
                if json.loads(result.read_text())["points"]:
                    marker.write_text(result.read_text())
                    os._exit(1)
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)

    threading.Thread(target=die_after_a_size, daemon=True).start()
'''


@pytest.mark.parametrize("backoff_limit", [1, 0])
def test_a_runner_that_fails_transiently_is_retried_up_to_the_backoff_limit_resuming_its_sizes(
    demo_world, tmp_path, monkeypatch, backoff_limit
):
    training = {"learningRate": 0.001, "epochs": 30, "batchSize": 16, "maxSeqLength": 32}  # sizes take seconds
    doc = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"), name="flaky", training=training,
                             backoffLimit=backoff_limit)
    out, hooks = tmp_path / "out", tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAIL_ONCE)  # imported by every runner process
    marker, result_file = tmp_path / "failed-once", out / "trials" / "flaky-tiny-opt-r0.json"
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    monkeypatch.setenv("LENSLLM_TEST_MARKER", str(marker))
    monkeypatch.setenv("LENSLLM_TEST_RESULT", str(result_file))
    code = main(["select", str(write_manifest(tmp_path, doc)), "--local", "--out", str(out)])
    entry = LLMSelectionStatus.model_validate(json.loads((out / "status.json").read_text())).candidates["tiny-opt"]
    left_by_the_first = json.loads(marker.read_text())["points"]
    if backoff_limit == 0:
        assert (code, entry.state, entry.reason) == (1, "Failed", "ResultMissing")
        return
    assert (code, entry.state) == (0, "Succeeded")
    assert "--- attempt 2 (spec.backoffLimit) ---" in (out / "trials" / "flaky-tiny-opt-r0.log").read_text()
    points = measured_points(result_file)
    assert [p["size"] for p in points] == [16, 32, 64, 128]
    assert points[: len(left_by_the_first)] == left_by_the_first  # the retry kept them, as a pod on a volume does


def test_a_retry_in_a_fresh_run_never_resumes_the_result_of_the_finished_run_before(demo_world, tmp_path, monkeypatch):
    doc = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"), name="twice")
    manifest, out = write_manifest(tmp_path, doc), tmp_path / "out"
    result_file = out / "trials" / "twice-tiny-opt-r0.json"
    assert main(["select", str(manifest), "--local", "--out", str(out)]) == 0
    before = measured_points(result_file)
    hooks, marker = tmp_path / "hooks", tmp_path / "failed-once"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(  # the first runner dies at start-up, before it saves anything
        "import os, pathlib\nmarker = pathlib.Path(os.environ['LENSLLM_TEST_MARKER'])\n"
        "if not marker.exists():\n    marker.write_text('')\n    os._exit(1)\n")
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    monkeypatch.setenv("LENSLLM_TEST_MARKER", str(marker))
    assert main(["select", str(manifest), "--local", "--out", str(out)]) == 0
    after = measured_points(result_file)
    assert marker.exists() and [p["size"] for p in after] == [p["size"] for p in before]
    assert all(a["train"]["seconds"] != b["train"]["seconds"] for a, b in zip(after, before))  # measured anew


def test_fresh_measures_anew_what_a_run_cut_short_left(demo_world, tmp_path):
    doc = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"), name="redo")
    manifest, out = write_manifest(tmp_path, doc), tmp_path / "out"
    result_file = out / "trials" / "redo-tiny-opt-r0.json"
    assert main(["select", str(manifest), "--local", "--out", str(out)]) == 0
    before = measured_points(result_file)
    (out / "status.json").unlink()  # as if that run had been cut short after its trials
    assert main(["select", str(manifest), "--local", "--out", str(out)]) == 0
    assert measured_points(result_file) == before  # resumed: nothing measured again
    (out / "status.json").unlink()
    assert main(["select", str(manifest), "--local", "--out", str(out), "--fresh"]) == 0
    after = measured_points(result_file)
    assert [p["size"] for p in after] == [p["size"] for p in before]
    assert all(a["train"]["seconds"] != b["train"]["seconds"] for a, b in zip(after, before))
