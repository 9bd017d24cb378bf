import json
import os
import shutil

import pytest
import torch

from lensllm.cli.main import main
from lensllm.trial import TrialResult
from lensllm.trial import recipe as recipe_module


def assert_classified_failure(run, *, reason, exit_code, says):
    """Exit code, result document, termination message and stderr of a classified failure."""
    compact = TrialResult.model_validate_json(run.message)
    assert run.code == exit_code
    assert (run.doc["status"], run.doc["reason"]) == ("Failed", reason)
    assert says in run.doc["message"] and "\n" not in run.doc["message"]
    assert (compact.status, compact.reason) == ("Failed", reason)
    assert run.stderr.strip() == f"lensllm run-trial: {reason}: {run.doc['message']}"


def test_missing_model_directory_is_model_not_found(tiny_models, task_dir, tmp_path, spec_template, trial_run):
    run = trial_run(spec_template(tmp_path / "no-such-model", task_dir))
    assert_classified_failure(run, reason="ModelNotFound", exit_code=2, says="no such directory")


def test_unknown_hub_model_is_model_not_found(task_dir, spec_template, trial_run):
    run = trial_run(spec_template("lensllm-tests/no-such-model", task_dir))
    assert_classified_failure(run, reason="ModelNotFound", exit_code=2, says="'lensllm-tests/no-such-model'")


def test_missing_dataset_file_is_dataset_not_found(tiny_models, tmp_path, spec_template, trial_run):
    run = trial_run(spec_template(tiny_models["gpt2"], tmp_path / "missing.jsonl"))
    assert_classified_failure(run, reason="DatasetNotFound", exit_code=2, says="no such file or directory")
    assert run.doc["zeroShot"] is None and run.doc["spec"]["candidate"]["model"] == str(tiny_models["gpt2"])


def test_wrong_field_is_dataset_field_missing(tiny_models, task_dir, spec_template, trial_run):
    spec = spec_template(tiny_models["gpt2"], task_dir)
    spec["dataset"]["inputField"] = "question"
    run = trial_run(spec)
    assert_classified_failure(run, reason="DatasetFieldMissing", exit_code=2, says="dataset.inputField 'question'")


def test_subset_larger_than_the_train_split_is_budget_exceeds_dataset(tiny_models, task_dir, spec_template, trial_run):
    run = trial_run(spec_template(tiny_models["gpt2"], task_dir, subsetSizes=[32, 2048], targetSize=4096))
    assert_classified_failure(run, reason="BudgetExceedsDataset", exit_code=2, says="need 2048 training examples")


def test_huge_learning_rate_is_diverged(tiny_models, task_dir, spec_template, trial_run):
    spec = spec_template(tiny_models["gpt2"], task_dir)
    spec["training"]["learningRate"] = 1e8
    run = trial_run(spec)
    assert_classified_failure(run, reason="Diverged", exit_code=4, says="training loss at size 32")
    assert run.doc["zeroShot"]["loss"] > 0  # what was measured before the failure is kept


@pytest.mark.parametrize(
    "error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), MemoryError()]
)
def test_memory_exhaustion_during_training_is_out_of_memory(
    tiny_models, task_dir, spec_template, trial_run, monkeypatch, error
):
    """Simulated: the training loss raises what torch (GPU) or Python (host) raise when memory runs out."""

    def exhausted_in_training(*args, **kwargs):
        raise error

    monkeypatch.setattr(recipe_module, "backward_losses", exhausted_in_training)
    run = trial_run(spec_template(tiny_models["gpt2"], task_dir))
    assert_classified_failure(run, reason="OutOfMemory", exit_code=3, says="out of memory")


def test_memory_exhaustion_in_the_ntk_names_the_ntk_settings(
    tiny_models, task_dir, spec_template, trial_run, monkeypatch
):
    """Simulated: the Jacobian of a large model over the probe set does not fit on the device."""

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 120.00 GiB")

    monkeypatch.setattr(recipe_module, "measure_kernel", exhausted)
    run = trial_run(spec_template(tiny_models["gpt2"], task_dir))
    assert_classified_failure(run, reason="OutOfMemory", exit_code=3, says="use ntk.method sketch, ntk.scope lora")


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"subsetSizes": [64, 32]}, "subsetSizes: sizes must be strictly increasing"),
        ({"trainig": {}}, "trainig: Extra inputs are not permitted"),
    ],
)
def test_bad_spec_is_invalid_spec_with_exit_code_2(task_dir, spec_template, trial_run, changes, says):
    run = trial_run({**spec_template("unused", task_dir), **changes})
    assert_classified_failure(run, reason="InvalidSpec", exit_code=2, says=says)
    assert run.doc["spec"] is None


def test_text_field_with_an_encoder_decoder_model_is_invalid_spec(tiny_models, text_dir, spec_template, trial_run):
    spec = spec_template(tiny_models["t5"], text_dir, dataset={"source": str(text_dir), "textField": "text"})
    run = trial_run(spec)
    assert_classified_failure(run, reason="InvalidSpec", exit_code=2, says="encoder-decoder model needs inputField")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_a_gpu_is_invalid_spec(tiny_models, task_dir, spec_template, trial_run):
    run = trial_run(spec_template(tiny_models["gpt2"], task_dir, device="cuda"))
    assert_classified_failure(run, reason="InvalidSpec", exit_code=2, says="device: cuda requested")


def test_unreadable_spec_file_still_writes_a_failed_result(tmp_path, capsys):
    out, log = tmp_path / "result.json", tmp_path / "termination-log"
    code = main(
        ["run-trial", "--spec", str(tmp_path / "missing.yaml"), "--out", str(out), "--termination-log", str(log)]
    )
    assert code == 2
    assert TrialResult.model_validate_json(out.read_text()).reason == "InvalidSpec"
    assert "missing.yaml" in TrialResult.model_validate_json(log.read_text()).message
    assert "Traceback" not in capsys.readouterr().err


def test_unexpected_error_is_an_internal_error_with_its_traceback(
    tiny_models, task_dir, spec_template, trial_run, monkeypatch
):
    monkeypatch.setattr(recipe_module, "fit_all", lambda *a, **k: 1 / 0)
    run = trial_run(spec_template(tiny_models["gpt2"], task_dir))
    assert (run.code, run.doc["reason"], run.doc["message"]) == (
        1,
        "InternalError",
        "ZeroDivisionError: division by zero",
    )
    assert len(run.doc["points"]) == 3
    assert "Traceback" in run.stderr


def test_invalid_spec_in_a_subprocess_exits_2_without_a_traceback(tmp_path, spec_file, trial_process):
    log = tmp_path / "termination-log"
    spec = {
        "candidate": {"model": "x"},
        "dataset": {"source": "y", "textField": "t"},
        "subsetSizes": [8],
        "targetSize": 4,
    }
    proc = trial_process("--spec", spec_file(spec), "--termination-log", log)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "lensllm run-trial: InvalidSpec: targetSize 4 is below the largest subset size 8"
    assert json.loads(log.read_text())["reason"] == "InvalidSpec"


def test_spec_from_an_environment_variable_is_read_like_a_file(
    tiny_models, task_dir, spec_template, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "result.json"
    monkeypatch.setenv(
        "TRIAL_SPEC", json.dumps(spec_template(tiny_models["gpt2"], task_dir, subsetSizes=[32], ntk={"enabled": False}))
    )
    assert main(["run-trial", "--spec-env", "TRIAL_SPEC", "--out", str(out), "--termination-log", os.devnull]) == 0
    assert [p.size for p in TrialResult.model_validate_json(out.read_text()).points] == [32]
    monkeypatch.delenv("TRIAL_SPEC")
    assert main(["run-trial", "--spec-env", "TRIAL_SPEC", "--termination-log", os.devnull]) == 2
    assert "TRIAL_SPEC: the environment variable is not set" in capsys.readouterr().err


def test_an_output_path_that_cannot_be_written_is_refused_before_training_and_the_other_output_still_says_why(
    tiny_models, task_dir, spec_template, spec_file, trial_process, tmp_path
):
    spec = spec_file(spec_template(tiny_models["gpt2"], task_dir, subsetSizes=[32], ntk={"enabled": False}))
    log, folder = tmp_path / "termination-log", tmp_path / "a-folder"
    folder.mkdir()
    proc = trial_process("--spec", spec, "--out", folder, "--termination-log", log)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"lensllm run-trial: InvalidSpec: --out {folder}: is a folder; give a file name"
    assert json.loads(log.read_text())["reason"] == "InvalidSpec"

    out = tmp_path / "result.json"
    proc = trial_process("--spec", spec, "--out", out, "--termination-log", "/proc/no-such-log")
    assert proc.returncode == 2 and "--termination-log /proc/no-such-log: cannot be written" in proc.stderr
    assert TrialResult.model_validate_json(out.read_text()).points == []


def broken_copy(model, tmp_path, break_it) -> str:
    """A copy of a tiny model folder, broken by `break_it(folder)`."""
    folder = tmp_path / "broken"
    shutil.copytree(model, folder)
    break_it(folder)
    return str(folder)


def truncate_weights(folder) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short


def drop_tokenizer(folder) -> None:
    for file in folder.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")) or file.name in ("vocab.json", "merges.txt"):
            file.unlink()


def shrink_vocabulary(folder) -> None:
    """The config of a model with a smaller vocabulary than its tokenizer's (the tokenizer of another model)."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 10}))


@pytest.mark.parametrize(("break_it", "says"), [
    (truncate_weights, "model.safetensors is not a readable safetensors file: "),
    (shrink_vocabulary, "and the model's vocabulary (config vocab_size) has 10: is the tokenizer this model's?"),
    (lambda folder: (folder / "config.json").write_text('{"model_type": "gpt2",'), "is not a valid JSON file"),
    # transformers makes a GPT-2 tokenizer of the EOS token alone: every text would encode to nothing.
    (drop_tokenizer, "its tokenizer has no vocabulary (1 tokens, all special)"),
])
def test_a_broken_model_folder_is_model_not_found_naming_what_is_broken(
    tiny_models, task_dir, tmp_path, spec_template, trial_run, break_it, says
):
    run = trial_run(spec_template(broken_copy(tiny_models["gpt2"], tmp_path, break_it), task_dir))
    assert_classified_failure(run, reason="ModelNotFound", exit_code=2, says=says)


def test_a_tokenizer_that_reads_the_data_as_nothing_is_model_not_found(
    tiny_models, task_dir, tmp_path, spec_template, trial_run
):
    # transformers reads a qwen2 folder's tokenizer through Qwen2Tokenizer, which rebuilds a byte-level BPE from
    # the (here word-level) vocabulary: every target would encode to nothing but its end token.
    def retype_as_qwen2(folder) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))

    run = trial_run(spec_template(broken_copy(tiny_models["llama"], tmp_path, retype_as_qwen2), task_dir))
    assert_classified_failure(run, reason="ModelNotFound", exit_code=2,
                              says="its tokenizer (Qwen2Tokenizer) encodes 64 of 64 non-blank texts of "
                                   "dataset.targetField 'target' (test split 'test') to no tokens")


def test_a_gguf_file_missing_from_a_local_folder_is_named(tiny_models, task_dir, spec_template, trial_run):
    spec = spec_template(tiny_models["gpt2"], task_dir)
    spec["candidate"]["ggufFile"] = "model-q8.gguf"
    run = trial_run(spec)  # not a hub page made of the folder's path
    assert_classified_failure(run, reason="ModelNotFound", exit_code=2,
                              says=f"candidate.ggufFile 'model-q8.gguf': no such file in '{tiny_models['gpt2']}'")
