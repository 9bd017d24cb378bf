"""`lensllm select --local` end to end: real runner processes on the demo's tiny models."""

import json
import os
from pathlib import Path

import pytest
import yaml

from lensllm.cli.main import main
from lensllm.selection.status import LLMSelectionStatus

os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> Path:
    import torch

    from lensllm.demo import prepare

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("demo")
    prepare(folder, n_train=1024, n_test=64)
    return folder


def manifest(folder: Path, tmp_path: Path, models: dict[str, str], **spec_changes) -> Path:
    doc = {
        "apiVersion": "lensllm.io/v1alpha1",
        "kind": "LLMSelection",
        "metadata": {"name": "demo"},
        "spec": {
            "candidates": [{"name": n, "model": m} for n, m in models.items()],
            "dataset": {"source": str(folder / "data"), "inputField": "input", "targetField": "target",
                        "promptTemplate": "{input} =", "maxTestExamples": 32},
            "budget": {"baseSize": 16, "doublings": 3, "targetSize": 1024},
            "training": {"learningRate": 0.001, "epochs": 2, "batchSize": 16, "maxSeqLength": 32},
            "ntk": {"probeSize": 8},
            **spec_changes,
        },
    }
    path = tmp_path / "selection.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def demo_models(folder: Path) -> dict[str, str]:
    return {n: str(folder / "models" / n) for n in ("tiny-gpt2", "tiny-opt", "tiny-llama")}


def test_a_local_selection_ranks_every_candidate_and_writes_the_status_document(demo_world, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["select", str(manifest(demo_world, tmp_path, demo_models(demo_world))), "--local", "--workers", "2", "--out", str(out)])
    status = LLMSelectionStatus.model_validate(json.loads((out / "status.json").read_text()))
    assert code == 0 and status.phase == "Complete"
    assert sorted(r.candidate for r in status.ranking) == ["tiny-gpt2", "tiny-llama", "tiny-opt"]
    assert status.best == "tiny-llama"  # the most pre-trained candidate
    assert all(len(c.points) == 4 and c.zero_shot and c.ntk for c in status.candidates.values())
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "tiny-llama" in capsys.readouterr().out


def test_a_candidate_whose_model_is_missing_fails_the_selection_with_its_reason(demo_world, tmp_path):
    models = {"tiny-opt": str(demo_world / "models" / "tiny-opt"), "ghost": str(tmp_path / "no-such-model")}
    out = tmp_path / "out"
    code = main(["select", str(manifest(demo_world, tmp_path, models, budget={"subsetSizes": [16, 32, 64], "targetSize": 1024})),
                 "--local", "--out", str(out)])
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
