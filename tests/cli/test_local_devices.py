"""How `lensllm select --local` shares the machine among its workers: GPUs dealt out, memory shared out."""

import os
from pathlib import Path

import pytest

from lensllm.local_devices import Gpu, Slot, visible_gpus, worker_slots
from lensllm.trial.memory import GIB
from lensllm.trial.model_files import host_memory_bytes

H100 = 80 * GIB


def test_each_worker_gets_a_gpu_of_its_own_while_there_are_enough():
    gpus = [Gpu("0", H100), Gpu("1", H100)]
    assert worker_slots(2, gpus) == [Slot({"CUDA_VISIBLE_DEVICES": "0"}, ()), Slot({"CUDA_VISIBLE_DEVICES": "1"}, ())]
    assert worker_slots(1, gpus) == [Slot({"CUDA_VISIBLE_DEVICES": "0"}, ())]


def test_workers_beyond_the_gpus_share_one_and_each_plans_for_its_part_of_it():
    slots = worker_slots(5, [Gpu("0", H100), Gpu("1", 40 * GIB)])
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1", "0", "1", "0"]
    assert [s.args for s in slots] == [("--gpu-memory", str(H100 // 3)), ("--gpu-memory", str(20 * GIB)),
                                       ("--gpu-memory", str(H100 // 3)), ("--gpu-memory", str(20 * GIB)),
                                       ("--gpu-memory", str(H100 // 3))]


def test_a_gpu_of_unknown_memory_is_shared_unplanned_and_without_gpus_the_host_memory_is_shared_out():
    assert worker_slots(2, [Gpu("MIG-1", None)]) == [Slot({"CUDA_VISIBLE_DEVICES": "MIG-1"}, ())] * 2
    assert worker_slots(3, []) == [Slot({}, ("--gpu-memory", str(host_memory_bytes() // 3)))] * 3
    assert worker_slots(1, []) == [Slot({}, ())]


@pytest.fixture
def nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An nvidia-smi on PATH that lists two GPUs, in the format the query asks for."""
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nprintf '0, GPU-aaa, 81559\\n1, GPU-bbb, 40960\\n'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")


def test_visible_gpus_are_those_nvidia_smi_lists_or_those_cuda_visible_devices_names(nvidia_smi, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == [Gpu("0", 81559 * 2**20), Gpu("1", 40960 * 2**20)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb")
    assert visible_gpus() == [Gpu("GPU-bbb", 40960 * 2**20)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,MIG-7")
    assert visible_gpus() == [Gpu("1", 40960 * 2**20), Gpu("MIG-7", None)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
