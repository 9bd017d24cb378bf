"""The real operator process, against the emulated cluster, in what a cluster does every day: Jobs deleted by hand
or by a TTL, pods that cannot start, names of any length, Jobs that are not ours, specs edited while running."""

import time
from collections import Counter

import kubernetes
from cluster import wait_for
from selections import (
    GROUP, PLURAL, VERSION, create, events_of, selection_status, stand_in_kubelet, stand_in_selection, wait_for_phase,
    work_claim,
)

from lensllm.selection.plan import Trial
from lensllm_operator.names import job_name

TIMEOUT = 60
SIZES = [16, 32, 64, 128]


def jobs_of(batch, namespace: str) -> list:
    return batch.list_namespaced_job(namespace).items


def test_a_job_deleted_before_its_result_was_read_runs_again_and_the_selection_completes(
    namespace, stand_in, start_operator, custom, batch
):
    start_operator()
    create(custom, namespace, stand_in_selection("vanish"))
    first = wait_for(lambda: jobs_of(batch, namespace), "the trial Job")[0].metadata.name
    batch.delete_namespaced_job(first, namespace, propagation_policy="Background")  # by hand, mid-run

    status = wait_for_phase(custom, namespace, "vanish", "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete", status.conditions
    trials = status.candidates["model-a"].trials
    assert [(t.attempt, t.state) for t in trials] == [(0, "Lost"), (1, "Succeeded")]
    assert trials[0].job_name == first and [p.size for p in status.candidates["model-a"].points] == SIZES


def test_with_a_ttl_of_zero_a_finished_trial_is_read_before_its_job_is_collected(
    namespace, stand_in, start_operator, custom, batch
):
    start_operator(LENSLLM_JOB_TTL_SECONDS="0")
    create(custom, namespace, stand_in_selection("short-lived"))
    status = wait_for_phase(custom, namespace, "short-lived", "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete", status.conditions
    entry = status.candidates["model-a"]
    assert entry.state == "Succeeded" and [p.size for p in entry.points] == SIZES
    assert [t.state for t in entry.trials] == ["Succeeded"]  # read at the first try, not lost and re-run
    # Handed to the TTL controller only now that its result is in the status; it collects the Job then, and the
    # selection keeps its result (the gone Job's trial is read, not lost and run again).
    wait_for(lambda: not jobs_of(batch, namespace), "the TTL controller to delete the read Job", timeout=30)
    time.sleep(2)  # a resync (1 s in these tests) after the deletion
    after = selection_status(custom, namespace, "short-lived")
    assert after.phase == "Complete" and after.candidates["model-a"] == entry
    assert len(stand_in.jobs_seen) == 1


def test_a_missing_secret_key_is_shown_on_the_candidate_and_fails_it_after_the_pending_timeout(
    kube, namespace, stand_in, start_operator, custom, batch
):
    start_operator()
    create(custom, namespace, stand_in_selection("no-token", hfTokenSecretRef={"name": "hf-token"}, pendingTimeoutSeconds=6))

    def shown():
        status = selection_status(custom, namespace, "no-token")
        entry = status and status.candidates.get("model-a")
        return entry if entry and entry.reason == "CreateContainerConfigError" else None

    entry = wait_for(shown, "the candidate to show why its pod cannot start", timeout=20, interval=0.2)
    assert entry.state == "Queued" and "hf-token" in entry.message

    status = wait_for_phase(custom, namespace, "no-token", "Failed", timeout=60)
    failed = status.candidates["model-a"]
    assert (failed.state, failed.reason) == ("Failed", "CreateContainerConfigError")
    assert "not started 6s after" in failed.message and "hf-token" in failed.message
    assert status.reason == "MaxFailedCandidatesReached"
    wait_for(lambda: not jobs_of(batch, namespace), "the stuck Job to be deleted", timeout=20)
    warnings = [e for e in events_of(kube, namespace, "no-token") if e.reason == "CreateContainerConfigError"]
    assert len(warnings) == 2  # once when seen, once when it failed the candidate: not on every resync
    assert stand_in.runs == {}


def test_a_foreign_job_with_a_trials_name_fails_that_candidate_and_nothing_hangs(
    namespace, stand_in, start_operator, custom, batch
):
    start_operator()
    create(custom, namespace, stand_in_selection("squatted", suspend=True))
    uid = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "squatted")["metadata"]["uid"]
    name = job_name("squatted", uid, Trial("model-a", 0, ()))
    batch.create_namespaced_job(namespace, {
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "other", "image": "busybox", "command": ["true"]}]}}},
    })
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "squatted", {"spec": {"suspend": False}})

    status = wait_for_phase(custom, namespace, "squatted", "Complete", "Failed", timeout=30)
    entry = status.candidates["model-a"]
    assert (status.phase, entry.state, entry.reason) == ("Failed", "Failed", "JobNameTaken")
    assert name in entry.message
    assert [j.metadata.name for j in jobs_of(batch, namespace)] == [name]  # the foreign Job is left alone


def test_two_selections_whose_joined_names_read_the_same_both_complete(
    namespace, stand_in, start_operator, custom
):
    start_operator()
    first, second = stand_in_selection("col", "x-y"), stand_in_selection("col-x", "y")  # col + x-y, col-x + y
    create(custom, namespace, first)
    create(custom, namespace, second)
    for name in ("col", "col-x"):
        status = wait_for_phase(custom, namespace, name, "Complete", "Failed", timeout=TIMEOUT)
        assert status.phase == "Complete", (name, status.conditions)
    assert len(set(stand_in.jobs_seen)) == 2


def test_a_selection_named_with_253_characters_runs_to_completion(namespace, stand_in, start_operator, custom, batch):
    start_operator()
    name = ("a" * 62 + ".") * 4 + "b"
    assert len(name) == 253
    create(custom, namespace, stand_in_selection(name))
    status = wait_for_phase(custom, namespace, name, "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete", status.conditions
    (job,) = jobs_of(batch, namespace)
    assert len(job.metadata.name) <= 63 and job.metadata.annotations["lensllm.io/selection-name"] == name


def test_an_immutable_field_edited_on_a_server_without_cel_fails_the_selection_with_a_reason(
    kube, namespace, stand_in, start_operator, custom
):
    operator = start_operator()
    drop_cel_rules(kube)  # an API server that does not evaluate CEL accepts any edit
    doc = stand_in_selection("edited", hfTokenSecretRef={"name": "hf-token"})  # the trial waits for its Secret
    create(custom, namespace, doc)
    wait_for(lambda: selection_status(custom, namespace, "edited"), "the selection to start", timeout=20, interval=0.2)
    candidates = doc["spec"]["candidates"] + [{"name": "late", "model": "/models/late"}]
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
    kube, namespace, stand_in, start_operator, custom, batch
):
    crds = kubernetes.client.CustomObjectsApi(kube.api)
    crds.create_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", WORKLOAD_CRD)
    start_operator()
    create(custom, namespace, stand_in_selection("typo-queue", queue="gpu-queu", pendingTimeoutSeconds=6))
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
        entry = status and status.candidates["model-a"]
        return entry if entry and entry.reason == "KueueInadmissible" else None

    entry = wait_for(shown, "Kueue's reason on the candidate", timeout=20, interval=0.2)
    assert entry.state == "Queued" and "LocalQueue gpu-queu doesn't exist" in entry.message
    status = wait_for_phase(custom, namespace, "typo-queue", "Failed", timeout=60)
    assert status.candidates["model-a"].reason == "KueueInadmissible"
    wait_for(lambda: not jobs_of(batch, namespace), "the never-admitted Job to be deleted", timeout=20)
    assert stand_in.runs == {}


def drop_cel_rules(kube) -> None:
    """Replace the LLMSelection CRD by one without x-kubernetes-validations (as a server without CEL sees it)."""
    crds = kubernetes.client.CustomObjectsApi(kube.api)
    name = f"{PLURAL}.{GROUP}"
    crd = crds.get_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", name)
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].pop("x-kubernetes-validations", None)
    crds.replace_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", name, crd)


def test_scheduling_and_pod_settings_reach_the_runner_pod(namespace, core, stand_in, start_operator, custom):
    start_operator()
    settings = {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100"]}]}]}}},
        "nodeSelector": {"pool": "gpu"},
        "priorityClassName": "research-low",
        "env": [{"name": "HF_ENDPOINT", "value": "https://hf-mirror.internal"}],
    }
    create(custom, namespace, stand_in_selection("placed", **settings))
    status = wait_for_phase(custom, namespace, "placed", "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete", status.conditions
    (pod,) = core.list_namespaced_pod(namespace).items
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    term = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms[0]
    assert term.match_expressions[0].values == ["A100"]
    assert pod.spec.node_selector == {"pool": "gpu"} and pod.spec.priority_class_name == "research-low"
    assert {e.name: e.value for e in pod.spec.containers[0].env}["HF_ENDPOINT"] == "https://hf-mirror.internal"


def test_a_selection_recreated_under_its_name_never_adopts_the_old_ones_job(
    kube, namespace, stand_in, start_operator, custom, batch
):
    kube.faults.gc_delay = 60.0  # the old selection's Job outlives it for a while, as on a busy cluster
    start_operator()
    create(custom, namespace, stand_in_selection("again"))
    old = wait_for(lambda: jobs_of(batch, namespace), "the first selection's Job")[0]
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "again")
    names = lambda: [s["metadata"]["name"] for s in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]]  # noqa: E731
    wait_for(lambda: "again" not in names(), "the old selection to be gone (finalizers run)")
    assert [j.metadata.name for j in jobs_of(batch, namespace)] == [old.metadata.name]  # not collected yet
    create(custom, namespace, stand_in_selection("again"))
    status = wait_for_phase(custom, namespace, "again", "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete", status.conditions
    (trial,) = status.candidates["model-a"].trials
    assert trial.job_name != old.metadata.name and trial.state == "Succeeded"


def test_a_finished_trial_whose_job_was_deleted_while_the_operator_was_down_is_read_from_its_pod(
    namespace, stand_in, start_operator, custom, batch
):
    operator = start_operator()
    create(custom, namespace, stand_in_selection("salvage"))
    job = wait_for(lambda: jobs_of(batch, namespace), "the trial Job")[0].metadata.name
    operator.process.kill()
    # A Job the Job controller has not reported on yet has no status at all.
    wait_for(lambda: any(c.type == "Complete" for c in (batch.read_namespaced_job(job, namespace).status
                                                         or kubernetes.client.V1JobStatus()).conditions or []),
             "the trial to finish while the operator is down", timeout=TIMEOUT)
    batch.delete_namespaced_job(job, namespace, propagation_policy="Orphan")  # its pod (and result) stays
    operator.process.start()
    status = wait_for_phase(custom, namespace, "salvage", "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete", status.conditions
    assert [(t.job_name, t.state) for t in status.candidates["model-a"].trials] == [(job, "Succeeded")]
    assert stand_in.jobs_seen == [job]  # read, not run again


def test_a_new_attempt_waits_for_the_deleted_jobs_pod_to_stop_so_no_size_is_measured_twice(
    kube, namespace, core, stand_in, start_operator, custom, batch
):
    from collections import Counter

    from stand_in_trial import read_ledger

    kube.faults.gc_delay = 10.0  # the deleted Job's pod keeps measuring for a while
    start_operator()
    claim = work_claim(core, namespace)
    slow = [{"name": "LENSLLM_STANDIN_SIZE_SECONDS", "value": "1.5"}]  # sizes long enough to overlap
    create(custom, namespace, stand_in_selection("overlap", workVolume=claim, env=slow))
    wait_for(lambda: read_ledger(stand_in.ledger), "a first size measured", timeout=TIMEOUT)
    batch.delete_namespaced_job(jobs_of(batch, namespace)[0].metadata.name, namespace, propagation_policy="Background")
    status = wait_for_phase(custom, namespace, "overlap", "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete", status.conditions
    measured = Counter(entry["size"] for entry in read_ledger(stand_in.ledger))
    assert set(measured) == set(SIZES) and max(measured.values()) == 1, measured


def test_the_resync_reads_each_running_selection_once_a_second_however_many_there_are_and_sigterm_stops_at_once(
    kube, namespace, start_operator, custom, tmp_path
):
    """One resync loop for the operator: kopf gives each selection's handlers a copy of the memo, and a loop started
    per copy multiplied the reconciles by the number of selections and outlived the shutdown by kopf's 5 s grace."""
    running = [f"busy-{index}" for index in range(6)]
    with stand_in_kubelet(kube, tmp_path, size_seconds=60):
        operator = start_operator()  # resync every second
        for name in running:
            create(custom, namespace, stand_in_selection(name, "model-a"))
        wait_for(lambda: all(getattr(selection_status(custom, namespace, n), "phase", None) == "Running" for n in running),
                 "every selection to be Running")
        time.sleep(2)
        since, window = len(kube.api_calls), 4.0
        time.sleep(window)
        reads = Counter(c.resource for c in kube.operator_calls(since) if c.verb == "get")["llmselections"]
        assert reads <= len(running) * (window + 1), reads
        started = time.monotonic()
        assert operator.process.terminate(timeout=10) == 0
        assert time.monotonic() - started < 2.0
