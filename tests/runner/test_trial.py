import json
import math

import pytest
import safetensors

from lensllm.trial import TrialResult, memory
from lensllm.trial.recipe import TrialRecipe
from lensllm.trial.result import METHODS

SIZES = [32, 64, 128, 256, 512]


def without_timings(value):
    """The document less what legitimately differs between two runs: wall times and peak memory."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in ("seconds", "resources")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def repeated_test_rows(task_dir) -> int:
    """Test pairs that are training pairs too: the fixture's short made-up sentences repeat."""
    train = set((task_dir / "train.jsonl").read_text().splitlines())
    return sum(line in train for line in (task_dir / "test.jsonl").read_text().splitlines())


@pytest.mark.parametrize("name", ["gpt2", "opt", "llama", "t5"])
def test_every_architecture_learns_from_zero_shot_to_the_largest_size(
    tiny_models, task_dir, trial_run, spec_template, name
):
    run = trial_run(spec_template(tiny_models[name], task_dir))
    doc = run.doc
    losses = [p["test"]["loss"] for p in doc["points"]]
    assert (run.code, doc["status"]) == (0, "Succeeded")
    assert doc["zeroShot"]["loss"] > losses[0] > losses[-1]
    assert [e["event"] for e in run.events] == ["testRowsInTrain", "plan", "zeroShot", "ntk", "size", "size", "size"]
    assert run.events[0]["rows"] == doc["testRowsInTrain"] == repeated_test_rows(task_dir) > 0
    assert [f["method"] for f in doc["fits"]] == list(METHODS)
    assert all(f["predictedLoss"] > 0 and f["error"] is None for f in doc["fits"])
    assert doc["resources"]["trainableParameters"] == doc["resources"]["parameters"]


def test_a_trial_told_not_to_measure_the_zero_shot_loss_measures_the_same_points_without_it(
    tiny_models, task_dir, trial_run, spec_template
):
    """What a race's later rounds ask for: the same fine-tunes, one evaluation fewer, fits on the points alone."""
    spec = spec_template(tiny_models["llama"], task_dir, ntk={"enabled": False})
    measured = trial_run(spec).doc
    run = trial_run({**spec, "measureZeroShot": False})
    doc = run.doc
    assert (run.code, doc["status"], doc.get("zeroShot")) == (0, "Succeeded", None)
    assert [e["event"] for e in run.events] == ["testRowsInTrain", "plan", "size", "size", "size"]
    assert without_timings(doc["points"]) == without_timings(measured["points"])
    assert all(f["predictedLoss"] > 0 and f["error"] is None for f in doc["fits"])


def test_size_points_record_cost_and_tokenizer_free_losses(tiny_models, task_dir, trial_run, spec_template):
    doc = trial_run(spec_template(tiny_models["llama"], task_dir)).doc
    params = doc["resources"]["parameters"]
    for point, size in zip(doc["points"], [32, 64, 128]):
        train, test = point["train"], point["test"]
        assert point["size"] == size
        assert train["steps"] == 2 * size // 16  # two epochs of batches of 16
        assert train["flops"] == 6 * params * train["tokens"]
        assert test["lossPerExample"] == pytest.approx(test["loss"] * test["tokens"] / test["examples"])
        assert test["bitsPerByte"] < test["loss"]  # several bytes per token


def test_text_field_trial_scores_every_token(tiny_models, text_dir, trial_run, spec_template, tokenizer):
    dataset = {"source": str(text_dir), "textField": "text", "maxTestExamples": 100}
    run = trial_run(
        spec_template(
            tiny_models["gpt2"],
            text_dir,
            dataset=dataset,
            training={"learningRate": 3e-3, "batchSize": 16, "maxSeqLength": 64},
        )
    )
    doc = run.doc
    texts = [json.loads(line)["text"] for line in (text_dir / "test.jsonl").read_text().splitlines()]
    assert run.code == 0
    assert doc["zeroShot"]["tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in texts)
    assert doc["points"][-1]["test"]["loss"] < doc["zeroShot"]["loss"]
    # A uniform guess loses ln(vocabulary) nats on every scored token, over the same bytes.
    zero, vocab = doc["zeroShot"], json.loads((tiny_models["gpt2"] / "config.json").read_text())["vocab_size"]
    assert zero["uniformBitsPerByte"] == pytest.approx(zero["bitsPerByte"] * math.log(vocab) / zero["loss"])


def test_pretrained_model_beats_its_random_init_twin_at_every_size(
    tiny_models, pretrained_gpt2, task_dir, trial_run, spec_template
):
    curves = {}
    for label, folder in (("random", tiny_models["gpt2"]), ("pretrained", pretrained_gpt2)):
        doc = trial_run(spec_template(folder, task_dir, subsetSizes=SIZES, ntk={"enabled": False})).doc
        curves[label] = [doc["zeroShot"]["lossPerExample"]] + [p["test"]["lossPerExample"] for p in doc["points"]]
    assert all(p < r for p, r in zip(curves["pretrained"], curves["random"])), curves


def test_lora_trial_with_gradient_checkpointing_trains_only_the_adapters_and_still_learns(
    tiny_models, task_dir, trial_run, spec_template, lora_training
):
    run = trial_run(
        spec_template(tiny_models["llama"], task_dir, training=lora_training, ntk={"probeSize": 8, "scope": "lora"})
    )
    doc, resources = run.doc, run.doc["resources"]
    assert run.code == 0
    assert 0 < resources["trainableParameters"] < resources["parameters"] / 10
    assert doc["ntk"]["parameters"] == resources["trainableParameters"]
    assert doc["points"][-1]["test"]["loss"] < doc["zeroShot"]["loss"]


def test_bfloat16_weights_train_on_the_cpu_too(tiny_models, task_dir, trial_run, spec_template):
    spec = spec_template(tiny_models["opt"], task_dir, ntk={"probeSize": 4})
    spec["candidate"]["dtype"] = "bfloat16"
    run = trial_run(spec)
    assert (run.code, run.doc["resources"]["dtype"]) == (0, "bfloat16")
    assert run.doc["points"][-1]["test"]["loss"] < run.doc["zeroShot"]["loss"]


def test_termination_message_of_a_real_trial_is_compact_json_that_validates(
    tiny_models, task_dir, trial_run, spec_template
):
    run = trial_run(spec_template(tiny_models["opt"], task_dir, subsetSizes=SIZES, ntk={"probeSize": 32}))
    compact = TrialResult.model_validate_json(run.message)
    full = TrialResult.model_validate(run.doc)
    assert len(run.message.encode()) <= 4096 < len(full.to_json().encode())
    assert [p.size for p in compact.points] == SIZES
    assert [p.test.loss for p in compact.points] == pytest.approx([p.test.loss for p in full.points], rel=1e-5)
    assert compact.ntk.residual_norm_sq == pytest.approx(full.ntk.residual_norm_sq, rel=1e-5)


def test_resume_skips_finished_sizes_and_reproduces_the_uninterrupted_result(
    tiny_models, task_dir, trial_run, spec_template, monkeypatch, tmp_path
):
    spec = spec_template(tiny_models["llama"], task_dir)
    uninterrupted = trial_run(spec).doc

    real_train = TrialRecipe.train

    def train_until_64(recipe, size):
        if size == 64:
            raise MemoryError("simulated")
        return real_train(recipe, size)

    monkeypatch.setattr(TrialRecipe, "train", train_until_64)
    interrupted = trial_run(spec)
    partial = interrupted.doc
    assert (interrupted.code, partial["status"], partial["reason"]) == (3, "Failed", "OutOfMemory")
    assert [p["size"] for p in partial["points"]] == [32]

    monkeypatch.setattr(TrialRecipe, "train", real_train)
    saved = tmp_path / "partial.json"
    saved.write_text(json.dumps(partial))
    resumed = trial_run(spec, "--resume", str(saved))
    assert resumed.code == 0
    assert [(e["event"], e.get("size")) for e in resumed.events] == [
        ("testRowsInTrain", None), ("plan", None), ("resumed", None), ("size", 64), ("size", 128)]
    assert resumed.events[2]["sizes"] == [32]
    assert without_timings(resumed.doc) == without_timings(uninterrupted)


def test_resume_may_add_sizes_but_not_change_the_training(tiny_models, task_dir, trial_run, spec_template, tmp_path):
    spec = spec_template(tiny_models["gpt2"], task_dir, subsetSizes=[32, 64], ntk={"enabled": False})
    first = trial_run(spec).doc
    saved = tmp_path / "first.json"
    saved.write_text(json.dumps(first))
    extended = trial_run({**spec, "subsetSizes": [32, 64, 128]}, "--resume", str(saved))
    assert extended.code == 0 and [(e["event"], e.get("size")) for e in extended.events] == [
        ("testRowsInTrain", None), ("plan", None), ("resumed", None), ("size", 128)]
    assert extended.doc["points"][:2] == first["points"]
    changed = trial_run({**spec, "seed": 1}, "--resume", str(saved))
    assert (changed.code, changed.doc["reason"]) == (2, "InvalidSpec")
    assert "different spec (seed differ" in changed.doc["message"]


def test_subprocess_run_prints_progress_lines_and_writes_both_documents(
    tiny_models, task_dir, spec_template, spec_file, trial_process, tmp_path
):
    out, log = tmp_path / "result.json", tmp_path / "termination-log"
    proc = trial_process(
        "--spec", spec_file(spec_template(tiny_models["gpt2"], task_dir)), "--out", out, "--termination-log", log
    )
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stderr
    assert [e["event"] for e in events] == ["testRowsInTrain", "plan", "zeroShot", "ntk", "size", "size", "size"]
    assert TrialResult.model_validate_json(log.read_text()).status == "Succeeded"
    assert TrialResult.model_validate_json(out.read_text()).points[-1].size == 128


def test_a_trial_on_the_target_size_saves_the_model_it_fine_tuned_there_and_that_model_scores_the_same_loss(
    tiny_models, task_dir, trial_run, spec_template, tmp_path, monkeypatch
):
    """The weights fine-tuned on targetSize (a race's settling round) are the user's fine-tuned model: saved whole,
    with the tokenizer, they load as a candidate whose zero-shot loss is the loss the trial measured there. They are
    written in shards of a bounded size (here shrunk to the tiny model's scale), each shard's tensors the only ones
    a GPU trial copies to host memory at once."""
    monkeypatch.setattr(memory, "SAVE_SHARD_BYTES", 64 * 1024)
    folder = tmp_path / "fine-tuned"
    spec = spec_template(tiny_models["llama"], task_dir, subsetSizes=[32, 64], targetSize=64, ntk={"enabled": False},
                         output={"modelDir": str(folder)})
    run = trial_run(spec)
    assert (run.code, run.doc["modelDir"]) == (0, str(folder))
    assert [e["event"] for e in run.events][-3:] == ["size", "modelSaved", "size"]
    assert not folder.with_name("fine-tuned.partial").exists()
    assert json.loads((folder / "config.json").read_text())["use_cache"] is True
    shards = {name: safetensors.safe_open(folder / name, "pt") for name in
              set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())}
    assert len(shards) > 2
    for name, shard in shards.items():  # a tensor larger than the bound alone is a shard of its own
        assert len(shard.keys()) == 1 or (folder / name).stat().st_size <= 64 * 1024 + 4096, name
    reloaded = trial_run(spec_template(folder, task_dir, subsetSizes=[32], targetSize=64, ntk={"enabled": False}))
    assert reloaded.code == 0 and reloaded.doc["modelDir"] is None
    assert reloaded.doc["zeroShot"]["loss"] == pytest.approx(run.doc["points"][-1]["test"]["loss"], rel=1e-6)
    assert run.doc["zeroShot"]["loss"] > reloaded.doc["zeroShot"]["loss"]

    smaller = trial_run({**spec, "targetSize": 1024})  # the trial never runs the target: nothing to save
    assert smaller.code == 0 and smaller.doc["modelDir"] is None
    assert "modelSaved" not in [e["event"] for e in smaller.events]


def test_a_lora_trial_saves_its_adapter_and_a_folder_that_cannot_be_written_loses_the_weights_not_the_trial(
    tiny_models, task_dir, trial_run, spec_template, lora_training, tmp_path
):
    folder = tmp_path / "adapter"
    spec = spec_template(tiny_models["gpt2"], task_dir, subsetSizes=[32, 64], targetSize=64, ntk={"enabled": False},
                         training=lora_training, output={"modelDir": str(folder)})
    run = trial_run(spec)
    assert (run.code, run.doc["modelDir"]) == (0, str(folder))
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_models["gpt2"]) and adapter["r"] == 4
    assert (folder / "adapter_model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert not (folder / "model.safetensors").exists()  # the adapter alone, not a second copy of the base weights

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    unwritable = trial_run({**spec, "output": {"modelDir": str(blocked / "model")}})
    assert (unwritable.code, unwritable.doc["status"]) == (0, "Succeeded")
    assert unwritable.doc["modelDir"] is None and [p["size"] for p in unwritable.doc["points"]] == [32, 64]
    (event,) = [e for e in unwritable.events if e["event"] == "modelNotSaved"]
    assert event["folder"] == str(blocked / "model") and event["error"]


def test_a_trial_resumed_after_its_target_size_keeps_the_model_it_saved_there(
    tiny_models, task_dir, trial_run, spec_template, tmp_path
):
    folder = tmp_path / "fine-tuned"  # named by the flag a Job passes, as a spec's output.modelDir would
    spec = spec_template(tiny_models["gpt2"], task_dir, subsetSizes=[32, 64], targetSize=64, ntk={"enabled": False})
    saved = tmp_path / "first.json"
    first = trial_run(spec, "--model-dir", str(folder)).doc
    assert first["modelDir"] == str(folder) and (folder / "config.json").exists()
    saved.write_text(json.dumps(first))
    resumed = trial_run(spec, "--model-dir", str(folder), "--resume", str(saved))
    assert resumed.doc["modelDir"] == str(folder)
    assert [e["event"] for e in resumed.events] == ["testRowsInTrain", "plan", "resumed"]
