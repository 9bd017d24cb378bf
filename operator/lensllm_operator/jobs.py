"""Build the batch/v1 Job that runs one trial: pure functions, no API calls.

The reconciler creates what `build_job` returns. Names are deterministic (`names.py`), so a
restarted operator finds the Jobs it already created instead of creating duplicates. The Job
must be valid as written (a strict schema check in the tests), retries by cause (podFailurePolicy),
and keeps a trial's finished sizes on a persistent volume when the selection has one, so a
retried or re-created pod resumes after them.
"""

from typing import Any

from lensllm.selection.plan import Trial
from lensllm.selection.spec import LLMSelectionSpec, Resources
from lensllm.trial.failures import FINAL_EXIT_CODES
from lensllm_operator.config import OperatorConfig
from lensllm_operator.names import job_name, label_value

SELECTION_LABEL = "lensllm.io/selection"
CANDIDATE_LABEL = "lensllm.io/candidate"
ROUND_LABEL = "lensllm.io/round"
SELECTION_ANNOTATION = "lensllm.io/selection-name"
SIZES_ANNOTATION = "lensllm.io/sizes"
ATTEMPT_ANNOTATION = "lensllm.io/attempt"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SPEC_ENV = "LENSLLM_TRIAL_SPEC"
CONTAINER = "runner"
TERMINATION_LOG = "/dev/termination-log"
CACHE_PATH = "/cache/huggingface"
WORK_PATH = "/work"
MODEL_FOLDER = "model"  # in the work folder: the model a trial fine-tuned on targetSize
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def job_labels(selection: str, trial: Trial, spec: LLMSelectionSpec) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "lensllm-runner",
        "app.kubernetes.io/managed-by": "lensllm-operator",
        SELECTION_LABEL: label_value(selection),
        CANDIDATE_LABEL: trial.candidate,
        ROUND_LABEL: str(trial.round),
    }
    if spec.queue:
        labels[KUEUE_QUEUE_LABEL] = spec.queue
    return labels


def build_job(selection: str, uid: str, spec: LLMSelectionSpec, trial: Trial, config: OperatorConfig) -> dict[str, Any]:
    """The Job for one trial (namespace and ownerReferences are added by kopf.adopt)."""
    labels = job_labels(selection, trial, spec)
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        # Kueue admits a queued Job by unsuspending it.
        "suspend": bool(spec.queue),
        "podFailurePolicy": {
            "rules": [
                # Preemption, eviction, node loss: retried without counting against backoffLimit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": list(FINAL_EXIT_CODES)}},
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": _pod_spec(selection, uid, spec, trial, config)},
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    # No ttlSecondsAfterFinished here: the operator sets it once it has read the result, so a
    # Job can never be collected with its result unread.
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(selection, uid, trial),
            "labels": labels,
            "annotations": {
                SELECTION_ANNOTATION: selection,
                SIZES_ANNOTATION: ",".join(str(s) for s in trial.sizes),
                ATTEMPT_ANNOTATION: str(trial.attempt),
            },
        },
        "spec": job_spec,
    }


def work_claim(spec: LLMSelectionSpec, config: OperatorConfig) -> str | None:
    """The claim that keeps trial results across pods: spec.workVolume, else a writable model cache."""
    if spec.work_volume:
        return spec.work_volume.claim_name
    if spec.model_cache and not cache_read_only(spec, config):
        return spec.model_cache.claim_name
    return None


def cache_read_only(spec: LLMSelectionSpec, config: OperatorConfig) -> bool:
    return spec.model_cache is None or spec.model_cache.read_only or not config.allow_writable_model_cache


def work_sub_path(uid: str, candidate: str) -> str:
    """One folder per selection (by uid: a re-created selection starts afresh) and candidate."""
    return f"lensllm-work/{uid}/{candidate}"


def saved_model_location(spec: LLMSelectionSpec, config: OperatorConfig, uid: str, candidate: str) -> str:
    """Where the model a candidate's trial saved on its work claim lies, for whoever mounts that claim."""
    return f"pvc://{work_claim(spec, config)}/{work_sub_path(uid, candidate)}/{MODEL_FOLDER}"


def result_file(trial: Trial) -> str:
    return f"{WORK_PATH}/result-r{trial.round}.json"


def _pod_spec(selection: str, uid: str, spec: LLMSelectionSpec, trial: Trial, config: OperatorConfig) -> dict[str, Any]:
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
        "containers": [_container(uid, spec, trial, resources, config)],
        "volumes": _volumes(spec, resources, config),
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if spec.affinity:
        pod["affinity"] = spec.affinity.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return pod


def _env(spec: LLMSelectionSpec, trial: Trial, config: OperatorConfig) -> list[dict[str, Any]]:
    trial_spec = spec.trial_spec(trial.candidate, list(trial.sizes), round=trial.round)
    env: list[dict[str, Any]] = [
        # The spec travels as JSON in an env var: no quoting issues, no ConfigMap to own.
        {"name": SPEC_ENV, "value": trial_spec.model_dump_json(by_alias=True, exclude_none=True)},
        {"name": "HF_HOME", "value": CACHE_PATH},
        # datasets writes its cache even for local files; keep it off a possibly read-only model cache.
        {"name": "HF_DATASETS_CACHE", "value": "/tmp/datasets-cache"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.model_cache and cache_read_only(spec, config):
        # A read-only cache is a pre-filled one: asking the hub would only fail, slowly.
        env += [{"name": name, "value": "1"} for name in OFFLINE_ENV]
    if spec.hf_token_secret_ref:
        ref = spec.hf_token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    env += [{"name": var.name, "value": var.value} for var in spec.env]
    return env


def _container(uid: str, spec: LLMSelectionSpec, trial: Trial, resources: Resources, config: OperatorConfig) -> dict[str, Any]:
    result = result_file(trial)
    work_mount: dict[str, Any] = {"name": _work_volume_name(spec, config), "mountPath": WORK_PATH}
    if work_claim(spec, config):
        work_mount["subPath"] = work_sub_path(uid, trial.candidate)
    return {
        "name": CONTAINER,
        "image": spec.runner.image or config.runner_image,
        "imagePullPolicy": spec.runner.pull_policy or config.runner_pull_policy,
        "command": ["lensllm", "run-trial"],
        # --resume of the file --out rewrites after every size: a retried pod continues after the
        # sizes an earlier one finished (a missing file is a fresh start).
        "args": ["--spec-env", SPEC_ENV, "--out", result, "--resume", result, "--termination-log", TERMINATION_LOG,
                 *_model_dir_args(spec, trial, config)],
        "env": _env(spec, trial, config),
        "resources": _requirements(resources),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            work_mount,
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "hf-cache", "mountPath": CACHE_PATH, "readOnly": cache_read_only(spec, config)},
        ],
    }


def _model_dir_args(spec: LLMSelectionSpec, trial: Trial, config: OperatorConfig) -> list[str]:
    """A trial on targetSize saves the model it fine-tuned there on the work claim (an emptyDir would lose it)."""
    if trial.ends_on(spec.budget.target_size) and work_claim(spec, config):
        return ["--model-dir", f"{WORK_PATH}/{MODEL_FOLDER}"]
    return []


def _requirements(resources: Resources) -> dict[str, dict[str, Any]]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if resources.cpu:
        requests["cpu"] = resources.cpu
    if resources.memory:
        requests["memory"] = limits["memory"] = resources.memory
    counted = {"nvidia.com/gpu": resources.gpu or 0, **resources.extended}
    for name, count in counted.items():
        if count:
            requests[name] = limits[name] = str(count)  # a quantity is a string
    out: dict[str, dict[str, Any]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _volumes(spec: LLMSelectionSpec, resources: Resources, config: OperatorConfig) -> list[dict[str, Any]]:
    cache: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": spec.model_cache.claim_name, "readOnly": cache_read_only(spec, config)}}
        if spec.model_cache
        else {"emptyDir": {}}
    )
    volumes = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": resources.shm_size or "1Gi"}},
        {"name": "hf-cache", **cache},
    ]
    if _work_volume_name(spec, config) == "work":
        claim = work_claim(spec, config)
        work: dict[str, Any] = {"persistentVolumeClaim": {"claimName": claim}} if claim else {"emptyDir": {}}
        volumes.insert(0, {"name": "work", **work})
    return volumes


def _work_volume_name(spec: LLMSelectionSpec, config: OperatorConfig) -> str:
    """A writable model cache that also keeps results is one volume mounted twice, not two of one claim."""
    shared = spec.model_cache and not spec.work_volume and work_claim(spec, config) == spec.model_cache.claim_name
    return "hf-cache" if shared else "work"
