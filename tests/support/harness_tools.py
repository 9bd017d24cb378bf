"""Small helpers the harness's own tests share (tests/operator/test_harness*.py): API fixtures, throw-away CRDs,
bodies to create, what a call that must fail answered, a Job's end, a Job's pods, a kopf operator in a thread."""

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from cluster import Cluster
from kubernetes import client
from kubernetes.client import ApiException


@pytest.fixture
def core(kube: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api)


@pytest.fixture
def batch(kube: Cluster) -> client.BatchV1Api:
    return client.BatchV1Api(kube.api)


def crd_file(folder: Path, group: str, kind: str, spec: dict[str, Any], **names: Any) -> Path:
    """A throw-away namespaced CRD (version v1, status subresource, required `spec` with schema `spec`) as a file."""
    plural = f"{kind.lower()}s"
    schema = {"type": "object", "required": ["spec"], "properties": {
        "spec": spec, "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": f"{plural}.{group}"},
           "spec": {"group": group, "scope": "Namespaced",
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower(), **names},
                    "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                                  "schema": {"openAPIV3Schema": schema}}]}}
    path = folder / f"{plural}.yaml"
    path.write_text(yaml.safe_dump(crd))
    return path


def job_body(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "lensllm:test", "command": command}
    pod_spec = {"restartPolicy": "Never", "containers": [container]}
    return {"metadata": {"name": name}, "spec": {**spec, "template": {"spec": pod_spec}}}


def error_of(call: Callable[[], Any]) -> tuple[int, str, str]:
    """The HTTP status, Status reason and message of a call that must fail."""
    with pytest.raises(ApiException) as caught:
        call()
    body = json.loads(caught.value.body)
    return caught.value.status, body["reason"], body["message"]


def finished(batch: client.BatchV1Api, namespace: str, name: str) -> client.V1Job | None:
    job = batch.read_namespaced_job(name, namespace)
    conditions = {c.type for c in (job.status.conditions or [])} if job.status else set()
    return job if conditions & {"Complete", "Failed"} else None


def pods_of(core: client.CoreV1Api, namespace: str, job: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items


@contextlib.contextmanager
def kopf_operator(registry: kopf.OperatorRegistry, namespace: str) -> Iterator[None]:
    """Run a kopf operator in its own thread and loop (docs/TESTING.md), logging in through KUBECONFIG."""
    stop, ready = threading.Event(), threading.Event()
    kopf.on.login(registry=registry)(kopf.login_via_client)  # a fresh registry has no login handlers

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.scanning.disabled = True

    thread = threading.Thread(target=kopf.run, kwargs={
        "registry": registry, "namespaces": [namespace], "standalone": True, "stop_flag": stop, "ready_flag": ready})
    thread.start()
    try:
        assert ready.wait(10), "the kopf operator did not start"
        yield
    finally:
        stop.set()
        thread.join(10)
