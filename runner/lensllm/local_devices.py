"""How `lensllm select --local` shares this machine among its workers, as a cluster shares nodes among pods.

Each worker slot gets one GPU (`CUDA_VISIBLE_DEVICES`), or with more workers than GPUs an equal part of one; on a
machine without a GPU, an equal part of the host's memory. A trial plans for its part (`run-trial --gpu-memory`,
the device memory its plan may use), as a pod plans for its own GPU and memory limit. Without this every trial
planned for the whole device, and on one GPU the trials running at once asked together for several times its
memory. No torch here: GPUs are found with nvidia-smi, as `lensllm plan` finds them.
"""

import os
from dataclasses import dataclass

from lensllm.trial.model_files import host_memory_bytes, nvidia_smi_gpus

# CUDA_VISIBLE_DEVICES values that hide every GPU.
NO_GPU = {"", "-1", "none", "NoDevFiles"}


@dataclass(frozen=True)
class Gpu:
    id: str  # as CUDA_VISIBLE_DEVICES names it: an index or a UUID
    total_bytes: int | None  # None where nvidia-smi does not list it (e.g. a MIG instance)


@dataclass(frozen=True)
class Slot:
    """What one worker's trials may use: the environment and run-trial arguments that say so."""

    env: dict[str, str]
    args: tuple[str, ...]


def visible_gpus() -> list[Gpu]:
    """The GPUs this process may use: those CUDA_VISIBLE_DEVICES names, else every GPU nvidia-smi lists."""
    listed = nvidia_smi_gpus()
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is None:
        return [Gpu(index, total) for index, _, total in listed]
    if chosen.strip() in NO_GPU:
        return []
    memory = {key: total for index, uuid, total in listed for key in (index, uuid)}
    return [Gpu(name, memory.get(name)) for name in (part.strip() for part in chosen.split(",")) if name]


def worker_slots(workers: int, gpus: list[Gpu]) -> list[Slot]:
    """One slot per worker: GPUs dealt out in turn, each shared by the workers dealt it; without GPUs, the host's
    memory shared out. A worker alone on its device plans for all of it, as before."""
    if not gpus:
        share = () if workers == 1 else ("--gpu-memory", str(host_memory_bytes() // workers))
        return [Slot({}, share) for _ in range(workers)]
    slots = []
    for worker in range(workers):
        gpu = gpus[worker % len(gpus)]
        sharers = len(range(worker % len(gpus), workers, len(gpus)))
        share = () if sharers == 1 or gpu.total_bytes is None else ("--gpu-memory", str(gpu.total_bytes // sharers))
        slots.append(Slot({"CUDA_VISIBLE_DEVICES": gpu.id}, share))
    return slots
