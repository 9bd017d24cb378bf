"""Build the batch/v1 Job that runs one trial: pure functions, no API calls.

The handler adopts and creates what `build_job` returns. Names are deterministic, so a
restarted operator finds the Jobs it already created instead of creating duplicates.
"""

import hashlib
from typing import Any

from lensllm.selection.plan import Trial
from lensllm.selection.spec import LLMSelectionSpec, Resources
from lensllm_operator.config import OperatorConfig

SELECTION_LABEL = "lensllm.io/selection"
CANDIDATE_LABEL = "lensllm.io/candidate"
ROUND_LABEL = "lensllm.io/round"
SIZES_ANNOTATION = "lensllm.io/sizes"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SPEC_ENV = "LENSLLM_TRIAL_SPEC"
CONTAINER = "runner"
TERMINATION_LOG = "/dev/termination-log"
# Exit code of the runner when the input is wrong (spec, model, dataset, budget): retrying cannot help.
EXIT_INVALID = 2


def job_name(selection: str, trial: Trial) -> str:
    """`<selection>-<candidate>-r<round>`, shortened with a hash when over 63 characters."""
    name = f"{selection}-{trial.candidate}-r{trial.round}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    suffix = f"-{trial.candidate}-r{trial.round}-{digest}"
    return f"{selection[: 63 - len(suffix)].rstrip('-')}{suffix}"


def job_labels(selection: str, trial: Trial, spec: LLMSelectionSpec) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "lensllm-runner",
        "app.kubernetes.io/managed-by": "lensllm-operator",
        SELECTION_LABEL: selection,
        CANDIDATE_LABEL: trial.candidate,
        ROUND_LABEL: str(trial.round),
    }
    if spec.queue:
        labels[KUEUE_QUEUE_LABEL] = spec.queue
    return labels


def build_job(selection: str, spec: LLMSelectionSpec, trial: Trial, config: OperatorConfig) -> dict[str, Any]:
    """The Job for one trial (namespace and ownerReferences are added by kopf.adopt)."""
    labels = job_labels(selection, trial, spec)
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        # Kueue admits a queued Job by unsuspending it; without a queue, spec.suspend holds Jobs back.
        "suspend": bool(spec.queue),
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INVALID]}},
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": _pod_spec(spec, trial, config)},
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if config.job_ttl_seconds is not None:
        job_spec["ttlSecondsAfterFinished"] = config.job_ttl_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(selection, trial),
            "labels": labels,
            "annotations": {SIZES_ANNOTATION: ",".join(str(s) for s in trial.sizes)},
        },
        "spec": job_spec,
    }


def _pod_spec(spec: LLMSelectionSpec, trial: Trial, config: OperatorConfig) -> dict[str, Any]:
    resources = spec.resources_for(trial.candidate)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # retries are the Job's (podFailurePolicy needs Never)
        "automountServiceAccountToken": False,  # runners never talk to the API server
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec, trial, resources, config)],
        "volumes": _volumes(spec, resources),
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = list(spec.tolerations)
    if spec.affinity:
        pod["affinity"] = dict(spec.affinity)
    return pod


def _container(spec: LLMSelectionSpec, trial: Trial, resources: Resources, config: OperatorConfig) -> dict[str, Any]:
    trial_spec = spec.trial_spec(trial.candidate, list(trial.sizes))
    env = [
        # The spec travels as JSON in an env var: no quoting issues, no ConfigMap to own.
        {"name": SPEC_ENV, "value": trial_spec.model_dump_json(by_alias=True, exclude_none=True)},
        {"name": "HF_HOME", "value": spec.model_cache.mount_path if spec.model_cache else "/cache/huggingface"},
        # datasets writes its cache even for local files; keep it off a possibly read-only model cache.
        {"name": "HF_DATASETS_CACHE", "value": "/work/datasets-cache"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.hf_token_secret_ref:
        ref = spec.hf_token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return {
        "name": CONTAINER,
        "image": spec.runner.image or config.runner_image,
        "imagePullPolicy": spec.runner.pull_policy or config.runner_pull_policy,
        "command": ["lensllm", "run-trial"],
        "args": ["--spec-env", SPEC_ENV, "--out", "/work/result.json", "--termination-log", TERMINATION_LOG],
        "env": env,
        "resources": _requirements(resources),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "work", "mountPath": "/work"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "hf-cache", "mountPath": spec.model_cache.mount_path if spec.model_cache else "/cache/huggingface",
             **({"readOnly": True} if spec.model_cache and spec.model_cache.read_only else {})},
        ],
    }


def _requirements(resources: Resources) -> dict[str, dict[str, Any]]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if resources.cpu:
        requests["cpu"] = resources.cpu
    if resources.memory:
        requests["memory"] = limits["memory"] = resources.memory
    if resources.gpu:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(resources.gpu)  # a quantity is a string
    out: dict[str, dict[str, Any]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _volumes(spec: LLMSelectionSpec, resources: Resources) -> list[dict[str, Any]]:
    cache: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": spec.model_cache.claim_name, "readOnly": spec.model_cache.read_only}}
        if spec.model_cache
        else {"emptyDir": {}}
    )
    return [
        {"name": "work", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": resources.shm_size}},
        {"name": "hf-cache", **cache},
    ]


def gpus_of(spec: LLMSelectionSpec, candidate: str) -> int:
    return spec.resources_for(candidate).gpu
