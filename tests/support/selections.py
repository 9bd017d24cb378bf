"""Helpers of the operator's end-to-end tests (issue-8 operator side): start the operator, create selections,
wait for their phase, read metrics, and compare a cluster's status with local mode's.

`start_operator` and `custom` are fixtures, registered by tests/operator/conftest.py.
"""

import contextlib
import json
import sys
from collections.abc import Iterator
import urllib.request
from pathlib import Path

import kubernetes
import pytest
import yaml
from cluster import free_port, wait_for

from lensllm.cli.main import main
from lensllm.selection.status import LLMSelectionStatus

GROUP, VERSION, PLURAL = "lensllm.io", "v1alpha1", "llmselections"
SELECTION_TIMEOUT = 240


class Operator:
    """The operator subprocess and what a test reads from it."""

    def __init__(self, process, metrics_port: int) -> None:
        self.process = process
        self.metrics_port = metrics_port

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of one series in the exposition, or None when it is absent."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and found == wanted:
                return float(value)
        return None


# Reconcile every unfinished selection each second: what a lost event costs is then one second.
FAST_RESYNC = {"LENSLLM_RESYNC_SECONDS": "1"}


@pytest.fixture
def start_operator(operator_process, namespace):
    def start(**env: str) -> Operator:
        metrics, liveness = free_port(), free_port()
        command = [sys.executable, "-m", "lensllm.cli.main", "operator", "--namespace", namespace,
                   "--metrics-port", str(metrics), "--liveness-port", str(liveness)]
        process = operator_process(command, ready=f"http://127.0.0.1:{liveness}/healthz", timeout=30,
                                   env={**FAST_RESYNC, **env})
        return Operator(process, metrics)

    return start


@pytest.fixture
def custom(kube):
    return kubernetes.client.CustomObjectsApi(kube.api)


def create(custom, namespace: str, doc: dict) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)


def selection_status(custom, namespace: str, name: str) -> LLMSelectionStatus | None:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    raw = obj.get("status") or {}
    return LLMSelectionStatus.model_validate(raw) if raw.get("phase") else None


def wait_for_phase(custom, namespace: str, name: str, *phases: str, timeout: float = SELECTION_TIMEOUT) -> LLMSelectionStatus:
    def ended():
        status = selection_status(custom, namespace, name)
        return status if status and status.phase in phases else None

    return wait_for(ended, f"selection {name} to reach {phases}", timeout=timeout, interval=0.2)


def events_of(kube, namespace: str, name: str) -> list[dict]:
    events = kubernetes.client.CoreV1Api(kube.api).list_namespaced_event(namespace)
    return [e for e in events.items if e.involved_object and e.involved_object.name == name]


def comparable(status: dict) -> dict:
    """A status without what depends on when and where it ran: clocks, Job names, GPU seconds."""
    doc = json.loads(json.dumps(status))
    for key in ("startTime", "completionTime", "observedGeneration"):
        doc.pop(key, None)
    for condition in doc.get("conditions", []):
        condition.pop("lastTransitionTime", None)
    for key in ("gpuSeconds", "gpuHours", "fullFinetuneGpuSeconds"):
        doc["compute"].pop(key, None)
    for entry in doc["candidates"].values():
        for key in ("trials", "gpuSeconds", "fullFinetuneGpuSeconds"):
            entry.pop(key, None)
        entry.get("ntk", {}).pop("seconds", None)
    return doc


def run_locally(doc: dict, tmp_path: Path) -> dict:
    """`lensllm select --local` on the same manifest; the status it writes."""
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump(doc))
    assert main(["select", str(local), "--local", "--out", str(tmp_path / "out")]) == 0
    return json.loads((tmp_path / "out" / "status.json").read_text())


STAND_IN = Path(__file__).with_name("stand_in_trial.py")


@contextlib.contextmanager
def stand_in_kubelet(kube, directory: Path, size_seconds: float, env: dict[str, str] | None = None) -> Iterator:
    """A kubelet whose `lensllm` is the stand-in trial (tests/support/stand_in_trial.py): the real runner around a
    synthetic curve, `size_seconds` per size, every measured size written to `kubelet.ledger`; `env` sets the stand-in's
    other knobs (e.g. a curves table to read)."""
    from kubelet import Kubelet
    from stand_in_trial import LEDGER, SIZE_SECONDS

    ledger = directory / "ledger.jsonl"
    kubelet = Kubelet(kube.server, directory / "pods", env={LEDGER: str(ledger), SIZE_SECONDS: str(size_seconds), **(env or {})},
                      commands={"lensllm": [sys.executable, str(STAND_IN)]})
    kubelet.ledger = ledger
    try:
        yield kubelet
    finally:
        kubelet.stop()
    if kubelet.errors:
        pytest.fail(f"the emulated kubelet failed: {kubelet.errors!r}")


@pytest.fixture
def stand_in(kube, tmp_path):
    """The stand-in kubelet at 0.3 s per size."""
    with stand_in_kubelet(kube, tmp_path, 0.3) as kubelet:
        yield kubelet


def work_claim(core, namespace: str, name: str = "work") -> dict:
    """Create a claim for spec.workVolume (the emulated kubelet mounts a folder of its own for it); its reference."""
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    return {"claimName": name}


def stand_in_selection(name: str, *models: str, **spec) -> dict:
    """An LLMSelection over stand-in candidates (model paths only name their synthetic curves); a fixed budget,
    one trial per candidate, unless `spec` names another strategy."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMSelection", "metadata": {"name": name},
        "spec": {
            "candidates": [{"name": model, "model": f"/models/{model}"} for model in models or ("model-a",)],
            "dataset": {"source": "/data/task", "inputField": "input", "targetField": "target", "maxTestExamples": 32},
            "budget": {"subsetSizes": [16, 32, 64, 128], "targetSize": 4096},
            "ntk": {"probeSize": 8},
            "strategy": "fixed",
            **spec,
        },
    }
