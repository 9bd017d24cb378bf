"""The real operator process, against the emulated cluster, in what a cluster does every day: Jobs deleted by hand
or by a TTL, pods that cannot start, names of any length, Jobs that are not ours, specs edited while running."""

import kubernetes
import pytest
from cluster import wait_for
from demo_selection import demo_models, selection_manifest
from selections import GROUP, PLURAL, VERSION, create, events_of, selection_status, wait_for_phase

from lensllm.selection.plan import Trial
from lensllm_operator.names import job_name

QUICK_TIMEOUT = 180


def quick(world, name: str, **changes) -> dict:
    """One tiny candidate, three sizes, one epoch: the cheapest real trial (about 10 s)."""
    doc = selection_manifest(world, demo_models(world, "tiny-gpt2"), name=name,
                             budget={"subsetSizes": [16, 32, 64], "targetSize": 1024},
                             training={"learningRate": 0.001, "epochs": 1, "batchSize": 16, "maxSeqLength": 32})
    doc["spec"]["dataset"]["maxTestExamples"] = 16
    doc["spec"].update(changes)
    return doc


@pytest.fixture
def batch(kube):
    return kubernetes.client.BatchV1Api(kube.api)


def jobs_of(batch, namespace: str) -> list:
    return batch.list_namespaced_job(namespace).items


def test_a_job_deleted_before_its_result_was_read_runs_again_and_the_selection_completes(
    demo_world, namespace, kubelet, start_operator, custom, batch
):
    start_operator()
    create(custom, namespace, quick(demo_world, "vanish"))
    first = wait_for(lambda: jobs_of(batch, namespace), "the trial Job")[0].metadata.name
    batch.delete_namespaced_job(first, namespace, propagation_policy="Background")  # by hand, mid-run

    status = wait_for_phase(custom, namespace, "vanish", "Complete", "Failed", timeout=QUICK_TIMEOUT)
    assert status.phase == "Complete", status.conditions
    trials = status.candidates["tiny-gpt2"].trials
    assert [(t.attempt, t.state) for t in trials] == [(0, "Lost"), (1, "Succeeded")]
    assert trials[0].job_name == first and [p.size for p in status.candidates["tiny-gpt2"].points] == [16, 32, 64]


def test_with_a_ttl_of_zero_a_finished_trial_is_read_before_its_job_is_collected(
    demo_world, namespace, kubelet, start_operator, custom, batch
):
    start_operator(LENSLLM_JOB_TTL_SECONDS="0")
    create(custom, namespace, quick(demo_world, "short-lived"))
    status = wait_for_phase(custom, namespace, "short-lived", "Complete", "Failed", timeout=QUICK_TIMEOUT)
    assert status.phase == "Complete", status.conditions
    entry = status.candidates["tiny-gpt2"]
    assert entry.state == "Succeeded" and [p.size for p in entry.points] == [16, 32, 64]
    assert [t.state for t in entry.trials] == ["Succeeded"]  # read at the first try, not lost and re-run
    ttls = lambda: [j.spec.ttl_seconds_after_finished for j in jobs_of(batch, namespace)]  # noqa: E731
    wait_for(lambda: ttls() == [0], "the read Job to be handed to the TTL controller", timeout=30)


def test_a_missing_secret_key_is_shown_on_the_candidate_and_fails_it_after_the_pending_timeout(
    demo_world, kube, namespace, kubelet, start_operator, custom, batch
):
    start_operator()
    create(custom, namespace, quick(demo_world, "no-token", hfTokenSecretRef={"name": "hf-token"}, pendingTimeoutSeconds=6))

    def shown():
        status = selection_status(custom, namespace, "no-token")
        entry = status and status.candidates.get("tiny-gpt2")
        return entry if entry and entry.reason == "CreateContainerConfigError" else None

    entry = wait_for(shown, "the candidate to show why its pod cannot start", timeout=20, interval=0.2)
    assert entry.state == "Queued" and "hf-token" in entry.message

    status = wait_for_phase(custom, namespace, "no-token", "Failed", timeout=60)
    failed = status.candidates["tiny-gpt2"]
    assert (failed.state, failed.reason) == ("Failed", "CreateContainerConfigError")
    assert "not started 6s after" in failed.message and "hf-token" in failed.message
    assert status.reason == "MaxFailedCandidatesReached"
    wait_for(lambda: not jobs_of(batch, namespace), "the stuck Job to be deleted", timeout=20)
    warnings = [e for e in events_of(kube, namespace, "no-token") if e.reason == "CreateContainerConfigError"]
    assert len(warnings) == 2  # once when seen, once when it failed the candidate: not on every resync
    assert kubelet.runs == {}


def test_a_foreign_job_with_a_trials_name_fails_that_candidate_and_nothing_hangs(
    demo_world, namespace, kubelet, start_operator, custom, batch
):
    start_operator()
    create(custom, namespace, quick(demo_world, "squatted", suspend=True))
    uid = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "squatted")["metadata"]["uid"]
    name = job_name("squatted", uid, Trial("tiny-gpt2", 0, ()))
    batch.create_namespaced_job(namespace, {
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "other", "image": "busybox", "command": ["true"]}]}}},
    })
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "squatted", {"spec": {"suspend": False}})

    status = wait_for_phase(custom, namespace, "squatted", "Complete", "Failed", timeout=30)
    entry = status.candidates["tiny-gpt2"]
    assert (status.phase, entry.state, entry.reason) == ("Failed", "Failed", "JobNameTaken")
    assert name in entry.message
    assert [j.metadata.name for j in jobs_of(batch, namespace)] == [name]  # the foreign Job is left alone


def test_two_selections_whose_joined_names_read_the_same_both_complete(
    demo_world, namespace, kubelet, start_operator, custom
):
    start_operator()
    model = str(demo_world / "models" / "tiny-gpt2")
    first, second = quick(demo_world, "col"), quick(demo_world, "col-x")
    first["spec"]["candidates"] = [{"name": "x-y", "model": model}]  # col + x-y
    second["spec"]["candidates"] = [{"name": "y", "model": model}]  # col-x + y
    create(custom, namespace, first)
    create(custom, namespace, second)
    for name in ("col", "col-x"):
        status = wait_for_phase(custom, namespace, name, "Complete", "Failed", timeout=QUICK_TIMEOUT)
        assert status.phase == "Complete", (name, status.conditions)
    assert len(set(kubelet.jobs_seen)) == 2


def test_a_selection_named_with_253_characters_runs_to_completion(demo_world, namespace, kubelet, start_operator, custom, batch):
    start_operator()
    name = ("a" * 62 + ".") * 4 + "b"
    assert len(name) == 253
    create(custom, namespace, quick(demo_world, name))
    status = wait_for_phase(custom, namespace, name, "Complete", "Failed", timeout=QUICK_TIMEOUT)
    assert status.phase == "Complete", status.conditions
    (job,) = jobs_of(batch, namespace)
    assert len(job.metadata.name) <= 63 and job.metadata.annotations["lensllm.io/selection-name"] == name


def test_an_immutable_field_edited_on_a_server_without_cel_fails_the_selection_with_a_reason(
    demo_world, kube, namespace, kubelet, start_operator, custom
):
    operator = start_operator()
    drop_cel_rules(kube)  # an API server that does not evaluate CEL accepts any edit
    doc = quick(demo_world, "edited", hfTokenSecretRef={"name": "hf-token"})  # the trial waits for its Secret
    create(custom, namespace, doc)
    wait_for(lambda: selection_status(custom, namespace, "edited"), "the selection to start", timeout=20, interval=0.2)
    candidates = doc["spec"]["candidates"] + [{"name": "late", "model": doc["spec"]["candidates"][0]["model"]}]
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "edited", {"spec": {"candidates": candidates}})

    status = wait_for_phase(custom, namespace, "edited", "Failed", timeout=30)
    assert status.reason == "SpecChanged" and "immutable" in status.conditions[-1].message
    assert any(e.reason == "SpecChanged" for e in events_of(kube, namespace, "edited"))
    assert operator.sample("lensllm_reconcile_errors_total", kind="unexpected") == 0


WORKLOAD_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "workloads.kueue.x-k8s.io"},
    "spec": {
        "group": "kueue.x-k8s.io",
        "scope": "Namespaced",
        "names": {"kind": "Workload", "listKind": "WorkloadList", "plural": "workloads", "singular": "workload"},
        "versions": [{"name": "v1beta1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


def test_a_queue_kueue_does_not_know_is_shown_and_fails_the_candidate_after_the_pending_timeout(
    demo_world, kube, namespace, kubelet, start_operator, custom, batch
):
    crds = kubernetes.client.CustomObjectsApi(kube.api)
    crds.create_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", WORKLOAD_CRD)
    start_operator()
    create(custom, namespace, quick(demo_world, "typo-queue", queue="gpu-queu", pendingTimeoutSeconds=6))
    job = wait_for(lambda: jobs_of(batch, namespace), "the suspended trial Job")[0]
    # What Kueue writes for a Job whose LocalQueue does not exist.
    crds.create_namespaced_custom_object("kueue.x-k8s.io", "v1beta1", namespace, "workloads", {
        "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
        "metadata": {"name": f"job-{job.metadata.name}", "labels": {"kueue.x-k8s.io/job-uid": job.metadata.uid}},
        "spec": {"queueName": "gpu-queu"},
        "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Inadmissible",
                                   "message": "LocalQueue gpu-queu doesn't exist", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    })

    def shown():
        status = selection_status(custom, namespace, "typo-queue")
        entry = status and status.candidates["tiny-gpt2"]
        return entry if entry and entry.reason == "KueueInadmissible" else None

    entry = wait_for(shown, "Kueue's reason on the candidate", timeout=20, interval=0.2)
    assert entry.state == "Queued" and "LocalQueue gpu-queu doesn't exist" in entry.message
    status = wait_for_phase(custom, namespace, "typo-queue", "Failed", timeout=60)
    assert status.candidates["tiny-gpt2"].reason == "KueueInadmissible"
    wait_for(lambda: not jobs_of(batch, namespace), "the never-admitted Job to be deleted", timeout=20)
    assert kubelet.runs == {}


def drop_cel_rules(kube) -> None:
    """Replace the LLMSelection CRD by one without x-kubernetes-validations (as a server without CEL sees it)."""
    crds = kubernetes.client.CustomObjectsApi(kube.api)
    name = f"{PLURAL}.{GROUP}"
    crd = crds.get_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", name)
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].pop("x-kubernetes-validations", None)
    crds.replace_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", name, crd)
