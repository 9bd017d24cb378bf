import json
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from lensllm.cli.main import main
from lensllm.cli.plan import plan_table
from lensllm.trial import recipe as recipe_module
from lensllm.trial.memory import MemoryPlan
from lensllm.trial.result import TrialResult

CONFIGS = Path(__file__).resolve().parents[2] / "bench" / "configs"


def selection(tmp_path: Path, method: str) -> Path:
    """A selection over the benchmark's Qwen2.5 configs (config.json only: the plan needs no weights)."""
    names = ("0.5b", "1.5b", "7b")
    for name in names:
        (tmp_path / name).mkdir(exist_ok=True)
        shutil.copy(CONFIGS / f"qwen2.5-{name}.json", tmp_path / name / "config.json")
    manifest = {
        "apiVersion": "lensllm.io/v1alpha1",
        "kind": "LLMSelection",
        "metadata": {"name": "plan-demo"},
        "spec": {
            "candidates": [{"name": f"qwen-{n.replace('.', '-')}", "model": n} for n in names],
            "dataset": {"source": "data", "inputField": "input", "targetField": "target"},
            "budget": {"baseSize": 1000, "doublings": 4, "targetSize": 200000},
            "training": {"method": method, "batchSize": 8, "maxSeqLength": 1024},
            "ntk": {"probeSize": 64, "enabled": True},  # the default method would not measure it
        },
    }
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_plan_shows_every_candidate_and_exits_1_when_one_will_not_fit(tmp_path, capsys):
    code = main(["plan", str(selection(tmp_path, "full")), "--gpu-memory", "80Gi"])
    out = capsys.readouterr().out
    assert code == 1
    assert "Memory plan (GiB of 73.1 usable)" in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ qwen")}
    assert set(rows) == {"qwen-0-5b", "qwen-1-5b", "qwen-7b"}
    assert "yes" in rows["qwen-0-5b"] and "WillNotFit" in rows["qwen-7b"]


def test_plan_with_lora_fits_every_candidate_on_80gb_and_prints_json_plans(tmp_path, capsys):
    code = main(["plan", str(selection(tmp_path, "lora")), "--gpu-memory", "80Gi", "--format", "json"])
    plans = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {name: (p["fits"], p["ntkScope"], p["ntkMethod"]) for name, p in plans.items()} == {
        "qwen-0-5b": (True, "lora", "exact"),
        "qwen-1-5b": (True, "lora", "exact"),
        "qwen-7b": (True, "lora", "exact"),
    }
    assert plans["qwen-7b"]["trainableParameters"] == 20_185_088  # r 8 on every linear layer of 28 blocks
    assert plans["qwen-7b"]["hostBytes"] == 20_185_088 * 4  # the float32 adapters' starting copy, on the host
    wide = Console(width=200, record=True)
    wide.print(plan_table([(name, MemoryPlan.model_validate(plan)) for name, plan in plans.items()]))
    header, *_, last = [line for line in wide.export_text().splitlines() if "┃" in line or "│" in line]
    assert header.split("┃")[-3].strip() == "host" and last.split("│")[-3].strip() == "0.1"  # GiB, for qwen-7b


@pytest.mark.parametrize(("size", "says"), [("lots", "'lots' is not a size"), ("0", "'0' is not a positive size"),
                                           ("0.0001", "'0.0001' is not a positive size"), ("-1Gi", "'-1Gi' is not a size")])
def test_plan_with_a_bad_size_is_a_usage_error_naming_the_flag(size, says, tmp_path, capsys):
    assert main(["plan", str(selection(tmp_path, "lora")), f"--gpu-memory={size}"]) == 2
    err = capsys.readouterr().err
    assert err == f"lensllm plan: error: --gpu-memory: {says}; use e.g. 80Gi, 80G or a number of bytes\n"


def test_plan_says_a_missing_model_was_not_found_locally_and_exits_2(tmp_path, capsys):
    path = selection(tmp_path, "lora")
    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["candidates"][1:] = [{"name": "dot", "model": "./nope"}, {"name": "hub", "model": "models/nope"}]
    path.write_text(yaml.safe_dump(manifest))
    assert main(["plan", str(path), "--gpu-memory", "80Gi"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[0] == "lensllm plan: error: candidate dot: candidate.model './nope': not found locally (no such directory)"
    assert lines[1].startswith("lensllm plan: error: candidate hub: candidate.model 'models/nope': not found locally")
    assert len(lines) == 2 and "qwen-0-5b" in captured.out  # the candidate that can be planned still is


def test_run_trial_plan_only_prints_the_plan_and_its_parts(tiny_models, task_dir, spec_template, spec_file, capsys):
    code = main(["run-trial", "--spec", str(spec_file(spec_template(tiny_models["llama"], task_dir))), "--plan-only"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Peak by part (GiB)" in out and "masterWeights" not in out  # float32 on the CPU: no masters


def test_run_trial_plan_only_exits_2_with_the_numbers_when_nothing_fits(
    tiny_models, task_dir, spec_template, spec_file, capsys
):
    spec = spec_template(tiny_models["llama"], task_dir, device="cuda")
    code = main(["run-trial", "--spec", str(spec_file(spec)), "--plan-only", "--gpu-memory", "600Mi"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lensllm run-trial: WillNotFit: the ") and "GiB usable" in err


def test_a_trial_that_will_not_fit_fails_before_loading_any_weights(
    tiny_models, task_dir, spec_template, trial_run, monkeypatch
):
    def must_not_load(*args, **kwargs):
        raise AssertionError("weights loaded for a trial that cannot fit")

    monkeypatch.setattr(recipe_module, "load_model", must_not_load)
    run = trial_run(spec_template(tiny_models["llama"], task_dir), "--gpu-memory", "1Mi")
    assert (run.code, run.doc["status"], run.doc["reason"]) == (2, "Failed", "WillNotFit")
    assert run.doc["zeroShot"] is None and "phase needs" in run.doc["message"]
    assert run.stderr.startswith("lensllm run-trial: WillNotFit: ")


def test_a_trial_records_its_plan_and_the_compact_result_drops_it_first(tiny_models, task_dir, spec_template, trial_run):
    run = trial_run(spec_template(tiny_models["llama"], task_dir))
    plan = run.doc["plan"]
    assert plan["microBatchSize"] == 16 and plan["fits"]
    assert [p["name"] for p in plan["phases"]] == ["train", "evaluate", "ntk"]
    assert all(0 <= p["train"]["paddingFraction"] < 0.5 for p in run.doc["points"])
    result = TrialResult.model_validate(run.doc)
    without_plan = len(result.model_copy(update={"plan": None}).to_termination_message(limit=10**6).encode())
    compact = json.loads(result.to_termination_message(limit=without_plan))
    assert "plan" not in compact and "spec" in compact  # the plan goes first, the spec echo stays


def test_plan_names_a_broken_config_or_weights_file_and_exits_2(tmp_path, capsys):
    path = selection(tmp_path, "lora")
    (tmp_path / "1.5b" / "config.json").write_text('{"model_type": "qwen2",')  # a download cut short
    (tmp_path / "7b" / "model.safetensors").write_bytes((120).to_bytes(8, "little") + b'{"w": ')
    assert main(["plan", str(path), "--gpu-memory", "80Gi"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("lensllm plan: error: candidate qwen-1-5b: candidate.model '")
    assert lines[0].endswith("1.5b': config.json is not a valid JSON file: Expecting property name enclosed in double "
                             "quotes: line 1 column 24 (char 23)")
    assert lines[1].startswith("lensllm plan: error: candidate qwen-7b: candidate.model '")
    assert "7b': model.safetensors is not a readable safetensors file: " in lines[1] and len(lines) == 2
