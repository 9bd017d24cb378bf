import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_auto_device_and_dtype_train_in_bfloat16_on_the_gpu(tiny_models, task_dir, trial_run, spec_template):
    run = trial_run(spec_template(tiny_models["llama"], task_dir, device="auto"))
    resources = run.doc["resources"]
    assert run.code == 0, run.stderr
    assert resources["device"].startswith("cuda:") and resources["peakMemoryKind"] == "cudaAllocated"
    assert resources["dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
    assert run.doc["points"][-1]["test"]["loss"] < run.doc["zeroShot"]["loss"]


def test_lora_with_gradient_checkpointing_learns_on_the_gpu(
    tiny_models, task_dir, trial_run, spec_template, lora_training
):
    run = trial_run(
        spec_template(
            tiny_models["llama"], task_dir, device="cuda", training=lora_training, ntk={"probeSize": 8, "scope": "lora"}
        )
    )
    assert run.code == 0, run.stderr
    assert run.doc["points"][-1]["test"]["loss"] < run.doc["zeroShot"]["loss"]
