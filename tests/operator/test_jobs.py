import json

import pytest

from lensllm.selection.plan import Trial
from lensllm.selection.spec import LLMSelectionSpec
from lensllm.trial.spec import TrialSpec
from lensllm_operator.config import OperatorConfig
from lensllm_operator.jobs import SPEC_ENV, build_job, job_name

CONFIG = OperatorConfig(runner_image="registry.example/lensllm-runner:1.0")


def selection(**changes) -> LLMSelectionSpec:
    base = {
        "candidates": [{"name": "opt", "model": "facebook/opt-350m"}, {"name": "big", "model": "Qwen/Qwen2.5-0.5B",
                                                                          "resources": {"nvidia.com/gpu": 2, "memory": "64Gi"}}],
        "dataset": {"source": "EdinburghNLP/xsum", "inputField": "document", "targetField": "summary"},
        "budget": {"baseSize": 1000, "doublings": 2, "targetSize": 200_000},
        "resources": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": 1, "shmSize": "8Gi"},
    }
    base.update(changes)
    return LLMSelectionSpec.model_validate(base)


TRIAL = Trial(candidate="opt", round=0, sizes=(1000, 2000, 4000))


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_job_names_are_deterministic_and_fit_in_a_label():
    assert job_name("xsum", TRIAL) == "xsum-opt-r0"
    long = job_name("s" * 60, TRIAL)
    assert len(long) <= 63 and long == job_name("s" * 60, TRIAL) and long.endswith(long[-8:])
    assert job_name("s" * 60, TRIAL) != job_name("s" * 59 + "t", TRIAL)


def test_the_runner_gets_its_spec_from_an_env_var_that_parses_as_a_trial_spec():
    c = container(build_job("xsum", selection(), TRIAL, CONFIG))
    assert c["command"] == ["lensllm", "run-trial"]
    assert c["args"][:2] == ["--spec-env", SPEC_ENV]
    value = next(e["value"] for e in c["env"] if e["name"] == SPEC_ENV)
    spec = TrialSpec.model_validate(json.loads(value))
    assert spec.subset_sizes == [1000, 2000, 4000] and spec.candidate.model == "facebook/opt-350m"


def test_runner_pods_are_locked_down():
    job = build_job("xsum", selection(), TRIAL, CONFIG)
    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/work", "/tmp", "/dev/shm"} <= mounts
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_disruptions_do_not_count_against_the_backoff_limit_and_invalid_specs_are_not_retried():
    rules = build_job("xsum", selection(backoffLimit=3), TRIAL, CONFIG)["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert any(r["action"] == "FailJob" and r["onExitCodes"]["values"] == [2] for r in rules)


def test_resources_scheduling_and_per_candidate_overrides():
    spec = selection(nodeSelector={"gpu": "a100"}, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    small = build_job("xsum", spec, TRIAL, CONFIG)
    big = build_job("xsum", spec, Trial("big", 0, (1000,)), CONFIG)
    assert container(small)["resources"] == {
        "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
    }
    assert container(big)["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "2"}
    pod = small["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_a_queue_sets_the_kueue_label_and_creates_the_job_suspended():
    job = build_job("xsum", selection(queue="gpu-queue"), TRIAL, CONFIG)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    assert build_job("xsum", selection(), TRIAL, CONFIG)["spec"]["suspend"] is False


def test_the_hugging_face_token_comes_from_the_named_secret_and_the_cache_from_the_claim():
    spec = selection(hfTokenSecretRef={"name": "hf", "key": "tok"}, modelCache={"claimName": "hf-cache"})
    job = build_job("xsum", spec, TRIAL, CONFIG)
    env = {e["name"]: e for e in container(job)["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "tok"}}
    assert env["HF_HOME"]["value"] == "/cache/huggingface"
    cache = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "hf-cache")
    assert cache["persistentVolumeClaim"]["claimName"] == "hf-cache"


@pytest.mark.parametrize("image, expected", [(None, CONFIG.runner_image), ("my/runner:2", "my/runner:2")])
def test_the_runner_image_defaults_to_the_operator_setting(image, expected):
    spec = selection(runner={"image": image} if image else {})
    assert container(build_job("xsum", spec, TRIAL, CONFIG))["image"] == expected
