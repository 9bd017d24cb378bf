import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "runner_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("runner_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(bench, capsys, args: str) -> dict:
    assert bench.main(args.split()) == 0
    return json.loads(capsys.readouterr().out)


def test_throughput_benchmark_reports_tokens_per_second_and_mfu_on_a_tiny_model(bench, capsys):
    report = run_bench(
        bench, capsys, "--tiny --device cpu --batch-size 2 --seq-len 16 --steps 2 --warmup 1 --peak-tflops 1"
    )
    assert report["trainTokensPerSecond"] == pytest.approx(2 * 16 / report["trainStepSeconds"])
    assert report["trainMfu"] == pytest.approx(report["trainTflops"] / 1.0)
    assert report["trainTflops"] == pytest.approx(6 * report["parameters"] * 32 / report["trainStepSeconds"] / 1e12)


def test_throughput_benchmark_runs_lora_with_gradient_checkpointing(bench, capsys):
    args = "--tiny --device cpu --batch-size 2 --seq-len 16 --steps 1 --warmup 0 --method lora --gradient-checkpointing"
    report = run_bench(bench, capsys, args)
    assert 0 < report["trainableParameters"] < report["parameters"] and report["trainMfu"] is None
