"""`lensllm select --local` end to end: real runner processes on the demo's tiny models."""

import json
from pathlib import Path

import pytest
import yaml
from demo_selection import demo_models, selection_manifest

from lensllm.cli.main import main
from lensllm.selection.status import LLMSelectionStatus


def write_manifest(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "selection.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_local_selection_ranks_every_candidate_and_writes_the_status_document(demo_world, tmp_path, capsys):
    out = tmp_path / "out"
    path = write_manifest(tmp_path, selection_manifest(demo_world, demo_models(demo_world)))
    code = main(["select", str(path), "--local", "--workers", "2", "--out", str(out)])
    status = LLMSelectionStatus.model_validate(json.loads((out / "status.json").read_text()))
    assert code == 0 and status.phase == "Complete"
    assert sorted(r.candidate for r in status.ranking) == ["tiny-gpt2", "tiny-llama", "tiny-opt"]
    assert status.best == "tiny-llama"  # the most pre-trained candidate
    assert all(len(c.points) == 4 and c.zero_shot and c.ntk for c in status.candidates.values())
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "tiny-llama" in capsys.readouterr().out


    plot = tmp_path / "report.png"
    assert main(["report", str(out / "selection.json"), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert table.index("tiny-llama") < table.index("tiny-gpt2") and "Complete" in table
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_a_candidate_whose_model_is_missing_fails_the_selection_with_its_reason(demo_world, tmp_path):
    models = {"tiny-opt": str(demo_world / "models" / "tiny-opt"), "ghost": str(tmp_path / "no-such-model")}
    out = tmp_path / "out"
    doc = selection_manifest(demo_world, models, budget={"subsetSizes": [16, 32, 64], "targetSize": 1024})
    code = main(["select", str(write_manifest(tmp_path, doc)), "--local", "--out", str(out)])
    status = LLMSelectionStatus.model_validate(json.loads((out / "status.json").read_text()))
    assert code == 1 and status.phase == "Failed"
    assert status.candidates["ghost"].reason == "ModelNotFound"
    assert status.candidates["tiny-opt"].state == "Succeeded"


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
