import json

import kubernetes_validate
import pytest

from lensllm.selection.plan import Trial
from lensllm.selection.spec import LLMSelectionSpec, RESERVED_ENV
from lensllm.trial.spec import TrialSpec
from lensllm_operator.config import OperatorConfig
from lensllm_operator.jobs import (
    CACHE_PATH,
    SELECTION_ANNOTATION,
    SELECTION_LABEL,
    SPEC_ENV,
    build_job,
    saved_model_location,
)
from lensllm_operator.names import job_name, label_value

CONFIG = OperatorConfig(runner_image="registry.example/lensllm-runner:1.0")
UID = "0b6c3f1e-8f5a-4a53-9d0a-2b7e6f5c4d3a"
KUBE_VERSIONS = ("1.31.0", "1.33.0")


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


def job(spec: LLMSelectionSpec | None = None, trial: Trial = TRIAL, config: OperatorConfig = CONFIG, name: str = "xsum") -> dict:
    return build_job(name, UID, spec or selection(), trial, config)


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(job)["env"]}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_the_job_is_valid_kubernetes_as_written(kube_version):
    spec = selection(
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}]}}},
        modelCache={"claimName": "hf-cache"}, workVolume={"claimName": "work"}, priorityClassName="batch-low",
        imagePullSecrets=[{"name": "regcred"}], env=[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        hfTokenSecretRef={"name": "hf-token"}, queue="gpu-queue", activeDeadlineSeconds=3600,
    )
    built = job(spec)
    built["metadata"]["namespace"] = "ml"
    kubernetes_validate.validate(built, kube_version, strict=True)


def test_job_names_fit_63_characters_are_deterministic_and_differ_per_selection_object():
    name = job_name("xsum", UID, TRIAL)
    assert name.startswith("xsum-opt-r0-") and name == job_name("xsum", UID, TRIAL)
    long = job_name("s" * 253, UID, TRIAL)
    assert len(long) <= 63 and long == job_name("s" * 253, UID, TRIAL)
    assert job_name("xsum", "another-uid", TRIAL) != name  # a re-created selection never inherits the old Job
    # `col` + candidate `x-y` and `col-x` + candidate `y` read the same once joined, but never share a Job.
    assert job_name("col", UID, Trial("x-y", 0, (1,))) != job_name("col-x", "uid-2", Trial("y", 0, (1,)))
    assert job_name("xsum", UID, Trial("opt", 0, (1,), attempt=1)) != name


def test_a_long_selection_name_becomes_a_hashed_label_value_with_the_full_name_in_an_annotation():
    name = "a" * 60 + ".team-x." + "b" * 100
    built = job(name=name)
    value = built["metadata"]["labels"][SELECTION_LABEL]
    assert len(value) <= 63 and value == label_value(name) and value != label_value(name[:-1])
    assert built["metadata"]["annotations"][SELECTION_ANNOTATION] == name
    assert built["spec"]["template"]["metadata"]["labels"][SELECTION_LABEL] == value
    assert len(built["metadata"]["name"]) <= 63
    assert label_value("xsum") == "xsum"


def test_the_runner_gets_its_spec_from_an_env_var_that_parses_as_a_trial_spec():
    c = container(job())
    assert c["command"] == ["lensllm", "run-trial"]
    assert c["args"][:2] == ["--spec-env", SPEC_ENV]
    spec = TrialSpec.model_validate(json.loads(env_of(job())[SPEC_ENV]["value"]))
    assert spec.subset_sizes == [1000, 2000, 4000] and spec.candidate.model == "facebook/opt-350m"


def test_runner_pods_are_locked_down():
    built = job()
    pod = built["spec"]["template"]["spec"]
    c = container(built)
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_retries_are_by_cause_disruptions_free_and_deterministic_failures_never():
    rules = job(selection(backoffLimit=3))["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert fail["onExitCodes"]["values"] == [2, 3, 4]  # input errors, OutOfMemory, Diverged


def test_without_a_persistent_volume_each_pod_starts_afresh_and_with_one_it_resumes():
    c = container(job())
    assert c["args"][c["args"].index("--resume") + 1] == c["args"][c["args"].index("--out") + 1]
    work = next(v for v in job()["spec"]["template"]["spec"]["volumes"] if v["name"] == "work")
    assert work == {"name": "work", "emptyDir": {}}

    persistent = job(selection(workVolume={"claimName": "lensllm-work"}))
    work = next(v for v in persistent["spec"]["template"]["spec"]["volumes"] if v["name"] == "work")
    assert work["persistentVolumeClaim"] == {"claimName": "lensllm-work"}
    mount = next(m for m in container(persistent)["volumeMounts"] if m["name"] == "work")
    assert mount["subPath"] == f"lensllm-work/{UID}/opt"


def test_a_trial_on_the_target_size_saves_its_model_on_a_persistent_work_volume_only():
    """The weights of a settling round's fine-tune are the user's model: kept on the claim, named in the status; on an
    emptyDir they would go with the pod, so such a trial saves nothing."""
    def model_dir(built: dict) -> str | None:
        args = container(built)["args"]
        return args[args.index("--model-dir") + 1] if "--model-dir" in args else None

    on_target = Trial(candidate="opt", round=3, sizes=(200_000,))
    persistent = selection(workVolume={"claimName": "lensllm-work"})
    assert model_dir(job(persistent, on_target)) == "/work/model"
    assert saved_model_location(persistent, CONFIG, UID, "opt") == f"pvc://lensllm-work/lensllm-work/{UID}/opt/model"
    assert model_dir(job(persistent)) is None  # the ladder's sizes
    assert model_dir(job(selection(), on_target)) is None


def test_a_writable_model_cache_also_keeps_the_results_when_allowed():
    config = OperatorConfig(runner_image=CONFIG.runner_image, allow_writable_model_cache=True)
    built = job(selection(modelCache={"claimName": "hf-cache", "readOnly": False}), config=config)
    mounts = {m["mountPath"]: m for m in container(built)["volumeMounts"]}
    assert mounts["/work"]["name"] == "hf-cache" and mounts["/work"]["subPath"].startswith("lensllm-work/")
    assert mounts[CACHE_PATH]["readOnly"] is False
    assert "HF_HUB_OFFLINE" not in env_of(built)


def test_a_read_only_model_cache_is_mounted_read_only_and_the_runner_works_offline():
    built = job(selection(modelCache={"claimName": "hf-cache"}))
    mount = next(m for m in container(built)["volumeMounts"] if m["mountPath"] == CACHE_PATH)
    assert mount["readOnly"] is True
    claim = next(v for v in built["spec"]["template"]["spec"]["volumes"] if v["name"] == "hf-cache")
    assert claim["persistentVolumeClaim"] == {"claimName": "hf-cache", "readOnly": True}
    env = env_of(built)
    assert all(env[name]["value"] == "1" for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    assert env["HF_HOME"]["value"] == CACHE_PATH


def test_resources_merge_per_candidate_and_pass_extended_resources_through():
    spec = selection(resources={"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": 1, "extended": {"rdma/ib": 1}},
                     nodeSelector={"gpu": "a100"}, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    small = job(spec)
    big = job(spec, Trial("big", 0, (1000,)))
    assert container(small)["resources"] == {
        "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1", "rdma/ib": "1"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "1", "rdma/ib": "1"},
    }
    assert container(big)["resources"]["requests"] == {"cpu": "4", "memory": "64Gi", "nvidia.com/gpu": "2", "rdma/ib": "1"}
    pod = small["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"} and pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]


def test_pod_settings_users_need_on_a_real_cluster():
    built = job(selection(env=[{"name": "HF_ENDPOINT", "value": "https://hf-mirror.internal"}],
                          priorityClassName="research-low", imagePullSecrets=[{"name": "regcred"}]))
    pod = built["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "research-low" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert env_of(built)["HF_ENDPOINT"]["value"] == "https://hf-mirror.internal"
    assert {e["name"] for e in container(built)["env"] if e["name"] != "HF_ENDPOINT"} <= RESERVED_ENV


def test_a_queue_sets_the_kueue_label_and_creates_the_job_suspended():
    built = job(selection(queue="gpu-queue"))
    assert built["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert built["spec"]["suspend"] is True
    assert job()["spec"]["suspend"] is False


def test_the_hugging_face_token_comes_from_the_named_secret():
    env = env_of(job(selection(hfTokenSecretRef={"name": "hf", "key": "tok"})))
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "tok"}}


def test_a_job_gets_no_ttl_until_its_result_is_read():
    config = OperatorConfig(runner_image=CONFIG.runner_image, job_ttl_seconds=0)
    assert "ttlSecondsAfterFinished" not in job(config=config)["spec"]


@pytest.mark.parametrize("image, expected", [(None, CONFIG.runner_image), ("my/runner:2", "my/runner:2")])
def test_the_runner_image_defaults_to_the_operator_setting(image, expected):
    spec = selection(runner={"image": image} if image else {})
    assert container(job(spec))["image"] == expected


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ("Toleration", "V1Toleration"), ("Affinity", "V1Affinity"), ("NodeAffinity", "V1NodeAffinity"),
        ("NodeSelector", "V1NodeSelector"), ("NodeSelectorTerm", "V1NodeSelectorTerm"),
        ("NodeSelectorRequirement", "V1NodeSelectorRequirement"), ("PreferredSchedulingTerm", "V1PreferredSchedulingTerm"),
        ("PodAffinity", "V1PodAffinity"), ("PodAffinity", "V1PodAntiAffinity"), ("PodAffinityTerm", "V1PodAffinityTerm"),
        ("WeightedPodAffinityTerm", "V1WeightedPodAffinityTerm"), ("LabelSelector", "V1LabelSelector"),
        ("LabelSelectorRequirement", "V1LabelSelectorRequirement"),
    ],
)
def test_the_scheduling_models_have_the_fields_of_the_kubernetes_clients_models(ours, theirs):
    import kubernetes.client

    from lensllm.selection import scheduling

    model = getattr(scheduling, ours)
    fields = {info.alias or name for name, info in model.model_fields.items()}
    assert fields == set(getattr(kubernetes.client, theirs).attribute_map.values())
