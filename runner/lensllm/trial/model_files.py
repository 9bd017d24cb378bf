"""What the memory plan reads about a candidate without loading its weights.

Called by the recipe before it loads the model, and by `lensllm plan` and `run-trial
--plan-only` (which also find the device to plan for here, without torch). A local directory's config.json and safetensors headers are read as plain
files; hub models and GGUF files go through transformers' AutoConfig (no torch needed, and
no weights downloaded).
"""

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

from lensllm.trial.failures import ModelNotFound, first_line
from lensllm.trial.memory import Device, MemoryPlan, PlanError, parse_bytes, plan_trial
from lensllm.trial.spec import CandidateSpec, TrialSpec


def read_config(candidate: CandidateSpec) -> dict:
    """The candidate's config as a dict."""
    path = Path(candidate.model).expanduser()
    if path.is_dir() and candidate.gguf_file is None and (path / "config.json").is_file():
        return _local_config(candidate.model, path / "config.json")
    check_local(candidate)
    from transformers import AutoConfig  # noqa: PLC0415 - only hub ids and GGUF files need it

    where = {k: v for k, v in {"revision": candidate.revision, "gguf_file": candidate.gguf_file}.items() if v}
    try:
        return AutoConfig.from_pretrained(candidate.model, **where).to_dict()
    except (OSError, ValueError) as err:
        raise model_not_found(candidate.model, err) from None


def _local_config(model: str, file: Path) -> dict:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:  # not JSON (a truncated download), or not UTF-8
        raise ModelNotFound(f"candidate.model {model!r}: {file.name} is not a valid JSON file: {first_line(err)}") from None
    if not isinstance(config, dict):
        raise ModelNotFound(f"candidate.model {model!r}: {file.name} is not a JSON object")
    return config


def check_local(candidate: CandidateSpec) -> None:
    """A model that can only be a local path (absolute, from ~, or not shaped as a hub id: ./m, a/b/c) and is not
    there gets that said, instead of the hub's 'Repo id must use alphanumeric chars' or a lookup; so does a GGUF
    file missing from a local folder (the library points to a hub page made of the folder's path)."""
    model = candidate.model
    path = Path(model).expanduser()
    if not path.exists() and (path.is_absolute() or not _hub_shaped(model)):
        raise ModelNotFound(f"candidate.model {model!r}: not found locally (no such directory)")
    if candidate.gguf_file and path.is_dir() and not (path / candidate.gguf_file).is_file():
        raise ModelNotFound(f"candidate.ggufFile {candidate.gguf_file!r}: no such file in {model!r}")


def _hub_shaped(model: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def model_not_found(model: str, err: BaseException) -> ModelNotFound:
    """The failure of loading `model`: where it was looked for when no file was found (an OSError) and it is no local
    folder, else the library's reason (a config it cannot read, say)."""
    if not isinstance(err, OSError) or Path(model).expanduser().exists():
        return ModelNotFound(f"candidate.model {model!r}: {first_line(err)}")
    from huggingface_hub import is_offline_mode

    if is_offline_mode():
        hub = "not in the Hugging Face cache, and the hub is offline (HF_HUB_OFFLINE)"
    else:
        hub = f"from the Hugging Face hub: {first_line(err)}"
    return ModelNotFound(f"candidate.model {model!r}: not found locally (no such directory); {hub}")


def count_parameters(candidate: CandidateSpec) -> int | None:
    """Exact parameter count from a local model's safetensors headers; None when there are none.

    safetensors checks each file whole (its header, and that the file holds every byte the header promises), so a
    truncated or corrupt download is named here, before a trial loads torch.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(candidate.model).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() and candidate.gguf_file is None else []
    total = 0
    for file in files:
        try:
            with safe_open(file, framework="numpy") as tensors:
                total += sum(math.prod(tensors.get_slice(name).get_shape()) for name in tensors.keys())
        except (SafetensorError, OSError) as err:
            raise ModelNotFound(f"candidate.model {candidate.model!r}: {file.name} is not a readable safetensors "
                                f"file: {first_line(err)}") from None
    return total or None


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def host_memory_bytes(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Memory this process may use: the machine's, or less where its cgroup says so (a pod's resources.memory).

    A trial planned for the node's memory in a pod limited to less would pick micro-batches the limit kills.
    """
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min([physical, *cgroup_memory_limits(cgroup_root, proc_cgroup)])


def cgroup_memory_limits(root: Path, proc_cgroup: Path) -> list[int]:
    """The memory limits set on this process's cgroup and on its ancestors (cgroup v2 memory.max, v1
    memory.limit_in_bytes; "max" is none). Inside a container the cgroup's own folder is often the mount's root
    while /proc names its path on the host, so every level from that path up to the root is read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = base / path.lstrip("/")
        for level in (folder, *folder.parents):
            if level != base and base not in level.parents:
                break
            try:
                value = (level / name).read_text().strip()
            except OSError:
                continue
            if value.isdigit():
                limits.append(int(value))
    return limits


def nvidia_smi_gpus() -> list[tuple[str, str, int]]:
    """(index, UUID, total memory in bytes) of every GPU nvidia-smi lists; none without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return []
    command = ["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return []
    rows = [[cell.strip() for cell in line.split(",")] for line in proc.stdout.splitlines()]
    return [(index, uuid, int(mib) * 2**20) for index, uuid, mib in (r for r in rows if len(r) == 3) if mib.isdigit()]


def nvidia_smi_memory_bytes() -> int | None:
    """Total memory of the first GPU nvidia-smi lists, or None without one."""
    gpus = nvidia_smi_gpus()
    return gpus[0][2] if gpus else None


def planning_device(kind: str, gpu_memory: str | None) -> tuple[Device, str | None]:
    """The device to plan for, without torch: --gpu-memory, else the GPU nvidia-smi lists, else this host.

    Also returns a note when the plan falls back to this host's memory.
    """
    if kind == "cpu":
        return Device(kind="cpu", total_bytes=host_memory_bytes()), None
    if gpu_memory is not None:
        try:
            return Device(kind="cuda", total_bytes=parse_bytes(gpu_memory)), None
        except PlanError as err:
            raise PlanError(f"--gpu-memory: {err}") from None
    found = nvidia_smi_memory_bytes()
    if found is not None:
        return Device(kind="cuda", total_bytes=found), None
    if kind == "cuda":
        raise PlanError("no GPU found to plan for: give its memory with --gpu-memory, e.g. --gpu-memory 80Gi")
    return Device(kind="cpu", total_bytes=host_memory_bytes()), "no GPU here: planned for this host's memory"


def plan_spec(spec: TrialSpec, device: Device) -> MemoryPlan:
    """The memory plan of a trial from its spec and the candidate's config alone (training.maxSeqLength)."""
    return plan_trial(spec, read_config(spec.candidate), device, parameters=count_parameters(spec.candidate))
