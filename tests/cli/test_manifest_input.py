"""Every manifest reader (select --local, report, run-trial) refuses hostile or wrongly typed input with exit 2 and one
line, and reads what it accepts exactly as the cluster's CRD does."""

import json
from pathlib import Path

import pytest
import yaml

from lensllm.cli.main import main
from lensllm.safe_load import MAX_DEPTH, UnsafeDocument, load_json, load_yaml

SELECTION = {
    "apiVersion": "lensllm.io/v1alpha1", "kind": "LLMSelection", "metadata": {"name": "x"},
    "spec": {"candidates": [{"name": "a", "model": "m"}], "dataset": {"source": "d.jsonl", "textField": "text"},
             "budget": {"subsetSizes": [10, 20, 40], "targetSize": 100}},
}
TRIAL = {"candidate": {"model": "m"}, "dataset": {"source": "d.jsonl", "textField": "text"},
         "subsetSizes": [10, 20, 40], "targetSize": 100}


def alias_bomb(levels: int = 9) -> str:
    """Nine lines whose aliases expand to 10^9 strings."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 10)}]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_yaml_1_2_floats_and_booleans_read_as_kubectl_reads_them():
    assert load_yaml("a: 1e-4\nb: 5E+3\nc: 42\nd: true\ne: '204045'\n") == {
        "a": 1e-4, "b": 5000.0, "c": 42, "d": True, "e": "204045"}


@pytest.mark.parametrize("text, says", [(alias_bomb(), "aliases are expanded"), (f"a: {nested(10_000)}", "levels deep")])
def test_alias_bombs_and_deep_nesting_are_refused_before_they_are_built(text, says):
    with pytest.raises(UnsafeDocument, match=says):
        load_yaml(text)


def test_deep_json_is_refused_and_brackets_inside_strings_do_not_count():
    with pytest.raises(UnsafeDocument, match=f"more than {MAX_DEPTH} levels"):
        load_json(nested(MAX_DEPTH + 1))
    assert load_json(json.dumps({"prompt": "[" * 500})) == {"prompt": "[" * 500}


def write(tmp_path: Path, text: str, name: str = "selection.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def with_spec(**changes) -> str:
    doc = json.loads(json.dumps(SELECTION))
    doc["spec"].update(changes)
    return yaml.safe_dump(doc)


@pytest.mark.parametrize(
    "text, says",
    [
        (with_spec(budget={"subsetSizes": [], "targetSize": 100}), "spec.budget.subsetSizes: List should have at least 3"),
        (with_spec(budget={"subsetSizes": [10, 20], "targetSize": 100}), "spec.budget.subsetSizes: List should have at least 3"),
        (with_spec(budget={"subsetSizes": [10, 20, 40], "targetSize": "204045"}), "spec.budget.targetSize"),
        (with_spec(suspend="yes"), "spec.suspend"),
        (with_spec(suspend=True), "spec.suspend is true: a suspended selection runs no trials"),
        (with_spec(candidates=[{"name": "a\n", "model": "m"}]), "spec.candidates.0.name"),
        (yaml.safe_dump(SELECTION) + "bomb:\n" + "".join(f"  {line}\n" for line in alias_bomb().splitlines()), "alias"),
        ("spec: " + nested(10_000) + "\n", "levels deep"),
        (yaml.safe_dump({**SELECTION, "spec": None}), "spec: expected an object"),
        (yaml.safe_dump({**SELECTION, "spec": {**SELECTION["spec"], "training": {"learningRate": float("inf")}}}),
         "spec.training.learningRate: Input should be a finite number"),
    ],
)
def test_select_local_refuses_bad_manifests_with_exit_2_and_one_line(text, says, tmp_path, capsys):
    code = main(["select", str(write(tmp_path, text)), "--local", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_report_refuses_an_alias_bomb_with_exit_2(tmp_path, capsys):
    assert main(["report", str(write(tmp_path, alias_bomb()))]) == 2
    assert "aliases are expanded" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, says",
    [
        (yaml.safe_dump({**TRIAL, "subsetSizes": []}), "subsetSizes"),
        ("candidate: " + nested(10_000) + "\n", "levels deep"),
        (alias_bomb(), "aliases are expanded"),
        (yaml.safe_dump({**TRIAL, "targetSize": "100"}), "targetSize"),
    ],
)
def test_run_trial_refuses_bad_specs_with_exit_2_and_a_failed_result(text, says, tmp_path, capsys):
    out, log = tmp_path / "result.json", tmp_path / "termination-log"
    code = main(["run-trial", "--spec", str(write(tmp_path, text, "spec.yaml")), "--out", str(out),
                 "--termination-log", str(log)])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1 and "Traceback" not in err
    assert json.loads(log.read_text())["reason"] == "InvalidSpec"


def test_run_trial_refuses_deep_json_in_its_environment_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEC", "{\"candidate\": " + nested(5_000) + "}")
    assert main(["run-trial", "--spec-env", "SPEC", "--termination-log", str(tmp_path / "log")]) == 2
    assert "levels deep" in capsys.readouterr().err


def test_the_cluster_example_reads_as_the_crd_accepts_it():
    repo = Path(__file__).resolve().parents[2]
    from lensllm.selection.manifest import read_manifest

    manifest = read_manifest(repo / "examples" / "cluster-selection.yaml")
    assert manifest.spec.budget.target_size == 204045 and manifest.spec.dataset.revision


@pytest.mark.parametrize("out", ["/proc/lensllm-out", "a-file"])
def test_select_local_refuses_an_output_folder_it_cannot_write_before_any_work(out, tmp_path, capsys):
    manifest = tmp_path / "selection.yaml"
    manifest.write_text(yaml.safe_dump(SELECTION))
    target = out if out.startswith("/") else tmp_path / out
    if out == "a-file":
        target.write_text("")
    assert main(["select", str(manifest), "--local", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lensllm select: error: --out {target}: ") and "\n" not in err
