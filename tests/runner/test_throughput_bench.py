import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "runner_throughput.py"
SMALL = "--tiny --device cpu --examples 48 --warmup 8 --test-examples 16 --median-len 40 --max-len 96 --peak-tflops 1"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("runner_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(bench, capsys, args: str) -> dict:
    assert bench.main(args.split()) == 0
    return json.loads(capsys.readouterr().out)


def test_benchmark_times_the_recipes_own_training_and_reports_real_tokens_padding_and_mfu(bench, capsys):
    report = run_bench(bench, capsys, SMALL + " --ntk-probe 4")
    seconds, tokens = report["trainSeconds"], report["trainTokens"]
    assert report["trainTokensPerSecond"] == pytest.approx(tokens / seconds)
    assert report["trainTflops"] == pytest.approx(6 * report["parameters"] * tokens / seconds / 1e12)  # 6N
    assert report["trainMfu"] == pytest.approx(report["trainTflops"])  # over the given 1 TFLOP/s peak
    assert 0 <= report["trainPadding"] < 0.3 and 0 <= report["evalPadding"] < 0.1
    assert report["plannedPeakBytes"]["train"] > 0 and report["ntkMethod"] == "exact"
    assert report["ntkShareOfTrial"] == pytest.approx(report["ntkSeconds"] / (seconds / 48 * 31_000))


def test_benchmark_saves_the_fine_tuned_model_as_a_settling_trial_does_and_reports_its_host_memory(bench, capsys):
    report = run_bench(bench, capsys, SMALL + " --save")
    assert report["saveShards"] == 1 and report["saveBytes"] >= 4 * report["parameters"]  # float32, one shard
    assert report["saveSeconds"] > 0 and report["saveHostRiseBytes"] >= 0
    assert report["saveShardBoundBytes"] == 2**30 and report["hostRssBytes"] > 0
    assert report["plannedHostBytes"] == 0  # on the CPU the plan's phases hold the starting weights' copy


def test_benchmark_counts_lora_flops_as_4n_plus_2t(bench, capsys):
    report = run_bench(bench, capsys, SMALL + " --method lora")
    n, t = report["parameters"], report["trainableParameters"]
    assert 0 < t < n / 10 and report["flopsFormula"] == "4N+2T"
    assert report["trainTflops"] == pytest.approx((4 * n + 2 * t) * report["trainTokens"] / report["trainSeconds"] / 1e12)


def test_gpu_script_runs_every_case_and_prints_one_table_in_its_cpu_smoke_mode(tmp_path):
    """bench/gpu.sh has its own CPU path so that its logic is exercised here; it has not run on a GPU."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--cpu-smoke"], capture_output=True, text=True, env=env, timeout=600
    )
    rows = [json.loads(line) for line in (tmp_path / "runner-throughput.jsonl").read_text().splitlines()]
    assert proc.returncode == 0, proc.stderr
    assert [r["name"] for r in rows] == ["tiny-full", "tiny-lora", "tiny-ntk-all-sketch", "tiny-will-not-fit"]
    assert all("error" not in r for r in rows[:3]) and rows[3]["error"].startswith("WillNotFit: ")
    assert rows[2]["ntkMethod"].startswith("sketch:") and rows[2]["ntkScope"] == "all"
    assert rows[0]["saveShards"] == 1 and "saveSeconds" not in rows[1]
    assert "Runner throughput" in proc.stdout and "tiny-will-not-fit: WillNotFit" in proc.stdout


def test_the_offline_gpu_script_refuses_in_one_line_when_its_wheels_are_missing(tmp_path):
    """bench/gpu_offline.sh is the owed GPU rerun in one command; without bench/gpu_wheels.sh's wheels it stops."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_offline.sh"), str(tmp_path / "no-wheels"), "--cpu-smoke"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and not (tmp_path / "runner-throughput.jsonl").exists()
    assert proc.stderr.startswith(f"gpu_offline: cannot install the wheels in {tmp_path / 'no-wheels'} for Python 3.")
    assert proc.stderr.count("\n") == 1 and "run bench/gpu_wheels.sh where there is an index" in proc.stderr
