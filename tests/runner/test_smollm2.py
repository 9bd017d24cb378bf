import json
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.slow
def test_lora_fine_tuning_lowers_the_test_loss_of_real_smollm2(smollm2_gguf, task_dir, trial_run, spec_template):
    """SmolLM2-135M-Instruct (GGUF, de-quantised on load) learns the made-up translation task in a few LoRA steps."""
    spec = spec_template(smollm2_gguf.parent, task_dir, subsetSizes=[8, 32], targetSize=1000)
    spec["candidate"]["ggufFile"] = smollm2_gguf.name
    spec["dataset"]["maxTestExamples"] = 12
    spec["training"] = {"method": "lora", "learningRate": 2e-3, "batchSize": 8, "maxSeqLength": 48, "lora": {"r": 8}}
    spec["ntk"] = {"probeSize": 4, "scope": "lora"}
    start = time.perf_counter()
    run = trial_run(spec)
    doc = run.doc
    assert run.code == 0, run.stderr
    assert (
        doc["resources"]["parameters"] > 130_000_000
        and doc["ntk"]["parameters"] == doc["resources"]["trainableParameters"]
    )
    assert doc["zeroShot"]["loss"] > doc["points"][0]["test"]["loss"] > doc["points"][1]["test"]["loss"]
    assert doc["points"][1]["test"]["bitsPerByte"] < 0.8 * doc["zeroShot"]["bitsPerByte"]
    peak_gib = doc["resources"]["peakMemoryBytes"] / 2**30
    print(f"SmolLM2 trial: {time.perf_counter() - start:.1f} s, peak RSS {peak_gib:.2f} GiB")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_memory_plan_of_smollm2_is_within_25_percent_of_the_measured_peaks(
    smollm2_dir, text_dir, spec_file, method
):
    """Each phase in its own process (bench/memory_plan_check.py): training, evaluation and the NTK.
    One batch of training is one optimizer step, the first, which allocates AdamW's states: later steps peak no
    higher, and each takes tens of seconds on a CPU."""
    path = spec_file(
        {
            "candidate": {"model": str(smollm2_dir)},
            "dataset": {"source": str(text_dir), "textField": "text", "maxTestExamples": 16},
            "subsetSizes": [8],
            "targetSize": 1000,
            "device": "cpu",
            "training": {"method": method, "batchSize": 8, "maxSeqLength": 128},
            "ntk": {"probeSize": 4},
        }
    )
    script = Path(__file__).resolve().parents[2] / "bench" / "memory_plan_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--spec", str(path)], check=True, capture_output=True, text=True, timeout=1800
    )
    print(proc.stdout)
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["phase"] for r in rows] == ["train", "evaluate", "ntk"]
    for row in rows:
        assert row["ratio"] == pytest.approx(1, abs=0.25), row
