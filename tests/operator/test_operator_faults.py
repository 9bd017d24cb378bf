"""The real operator process under the faults of a real cluster (tests/support: kube.faults, kubelet.faults), with
stand-in trials: evicted and OOM-killed pods, pods that never start, lost watch events, failing API calls."""

from collections import Counter

import pytest
from cluster import wait_for
from kubernetes.client.rest import ApiException
from selections import (
    GROUP,
    PLURAL,
    VERSION,
    create,
    events_of,
    selection_status,
    stand_in_selection,
    wait_for_phase,
    work_claim,
)
from stand_in_trial import read_ledger

TIMEOUT = 60


def reason_shown(custom, namespace: str, name: str, candidate: str, reason: str):
    def shown():
        status = selection_status(custom, namespace, name)
        entry = status and status.candidates.get(candidate)
        return entry if entry and entry.reason == reason else None

    return wait_for(shown, f"{candidate} to show {reason}", timeout=20, interval=0.1)


def seen_running(custom, namespace: str, name: str, candidate: str) -> bool:
    """Whether the selection's status shows the candidate's latest trial running."""
    status = selection_status(custom, namespace, name)
    entry = status and status.candidates.get(candidate)
    return bool(entry and entry.trials and entry.trials[-1].state == "Running")


def test_an_evicted_trial_resumes_after_the_sizes_it_finished(namespace, core, stand_in, start_operator, custom):
    start_operator()
    create(custom, namespace, stand_in_selection("evicted", workVolume=work_claim(core, namespace)))
    first = wait_for(lambda: read_ledger(stand_in.ledger)[1:], "two sizes measured", timeout=TIMEOUT)[0]["pod"]
    core.create_namespaced_pod_eviction(first, namespace, {"metadata": {"name": first, "namespace": namespace}})
    status = wait_for_phase(custom, namespace, "evicted", "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete", status.conditions
    assert [p.size for p in status.candidates["model-a"].points] == [16, 32, 64, 128]
    measured = Counter(entry["size"] for entry in read_ledger(stand_in.ledger))
    assert measured == {16: 1, 32: 1, 64: 1, 128: 1}, measured  # the second pod measured only what was left
    assert len({entry["pod"] for entry in read_ledger(stand_in.ledger)}) == 2


def test_an_oom_killed_trial_fails_with_its_reason_its_real_duration_and_gpu_time(
    namespace, stand_in, start_operator, custom
):
    operator = start_operator()
    # Pod times have whole-second resolution: a pod killed 0.5 s in could start and end within one second and
    # count 0 s. Killed 1.1 s in, each pod counts at least 1 s, and still dies before its four sizes (0.3 s each).
    stand_in.faults.add("oom-kill", after=1.1)
    create(custom, namespace, stand_in_selection("hungry", backoffLimit=1, resources={"nvidia.com/gpu": 2}))
    status = wait_for_phase(custom, namespace, "hungry", "Complete", "Failed", timeout=TIMEOUT)
    entry = status.candidates["model-a"]
    assert (status.phase, entry.state, entry.reason) == ("Failed", "Failed", "OOMKilled")
    assert "memory limit" in entry.message and stand_in.faults.counts() == {"oom-kill": 2}  # retried once
    assert entry.trials[0].seconds >= 1 and entry.gpu_seconds == 2 * entry.trials[0].seconds
    labels = {"namespace": namespace, "outcome": "failed", "reason": "OOMKilled"}
    assert operator.sample("lensllm_trials_total", **labels) == 1
    assert operator.sample("lensllm_trial_gpu_seconds_total", **labels) == pytest.approx(entry.gpu_seconds)
    assert operator.sample("lensllm_trial_duration_seconds_sum", outcome="failed") == pytest.approx(entry.trials[0].seconds)


def test_an_unschedulable_pod_shows_the_schedulers_message_until_a_node_fits(
    kube, namespace, stand_in, start_operator, custom
):
    start_operator()
    stand_in.faults.add("unschedulable", message="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    create(custom, namespace, stand_in_selection("waiting"))
    entry = reason_shown(custom, namespace, "waiting", "model-a", "Unschedulable")
    assert entry.state == "Queued" and "Insufficient nvidia.com/gpu" in entry.message
    stand_in.faults.clear("unschedulable")  # a GPU node joined
    status = wait_for_phase(custom, namespace, "waiting", "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete"
    assert status.candidates["model-a"].reason is None  # no stale reason once it ran
    assert [e.reason for e in events_of(kube, namespace, "waiting") if e.type == "Warning"] == ["Unschedulable"]


def test_an_image_that_never_pulls_fails_its_candidate_after_the_pending_timeout(
    kube, namespace, stand_in, start_operator, custom, batch
):
    start_operator()
    stand_in.faults.add("image-pull")
    create(custom, namespace, stand_in_selection("typo", pendingTimeoutSeconds=4))
    reason_shown(custom, namespace, "typo", "model-a", "ImagePullBackOff")
    status = wait_for_phase(custom, namespace, "typo", "Failed", timeout=TIMEOUT)
    assert status.candidates["model-a"].reason == "ImagePullBackOff"
    wait_for(lambda: not batch.list_namespaced_job(namespace).items, "the stuck Job to be deleted", timeout=20)
    warnings = [e.reason for e in events_of(kube, namespace, "typo") if e.type == "Warning"]
    assert warnings.count("ImagePullBackOff") == 2  # when first seen, when it failed: not every second it flapped


def test_with_every_job_watch_event_lost_the_resync_still_finishes_the_selection(
    kube, namespace, stand_in, start_operator, custom
):
    kube.faults.fail(503, verb="watch", resource="jobs", user_agent="kopf/")  # the operator never hears of a Job
    start_operator()
    create(custom, namespace, stand_in_selection("deaf", "model-a", "model-b"))
    status = wait_for_phase(custom, namespace, "deaf", "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete" and len(status.ranking) == 2
    # The resync is the operator's own loop, not a kopf timer: no finalizer holds a deletion for the operator.
    assert not custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "deaf")["metadata"].get("finalizers")


def test_failing_api_calls_are_retried_and_count_every_trial_once(kube, namespace, stand_in, start_operator, custom):
    operator = start_operator()
    agent = "lensllm-operator"
    kube.faults.seed(3)
    kube.faults.fail(500, verb="patch", resource="llmselections", subresource="status", user_agent=agent, probability=0.3)
    kube.faults.fail(503, verb="list", resource="jobs", user_agent=agent, probability=0.2)
    kube.faults.fail(504, verb="create", resource="jobs", user_agent=agent, probability=0.5, commit=True)
    create(custom, namespace, stand_in_selection("flaky", "model-a", "model-b", "model-c"))
    status = wait_for_phase(custom, namespace, "flaky", "Complete", "Failed", timeout=TIMEOUT)
    assert status.phase == "Complete", status.conditions
    assert kube.faults.counts()["500"] > 0
    assert operator.sample("lensllm_trials_total", namespace=namespace, outcome="succeeded", reason="Succeeded") == 3
    assert all(len(e.trials) == 1 for e in status.candidates.values())  # a create answered 504 was adopted, not redone


def test_an_edit_of_an_immutable_field_is_refused_and_parallelism_stays_editable(namespace, stand_in, custom):
    create(custom, namespace, stand_in_selection("fixed", suspend=True))
    with pytest.raises(ApiException) as refused:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fixed",
                                              {"spec": {"budget": {"subsetSizes": [16, 32, 64], "targetSize": 4096}}})
    assert refused.value.status == 422 and "spec.budget is immutable" in refused.value.body
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fixed", {"spec": {"parallelism": 1}})


def test_a_work_volume_that_never_binds_is_shown_and_fails_the_candidate(namespace, core, stand_in, start_operator, custom):
    start_operator()
    stand_in.faults.add("unbound-claim", claim="work")  # no storage class can provision it
    create(custom, namespace, stand_in_selection("unbound", workVolume=work_claim(core, namespace), pendingTimeoutSeconds=4))
    entry = reason_shown(custom, namespace, "unbound", "model-a", "Unschedulable")
    assert "unbound immediate PersistentVolumeClaims" in entry.message
    status = wait_for_phase(custom, namespace, "unbound", "Failed", timeout=TIMEOUT)
    assert status.candidates["model-a"].reason == "Unschedulable" and stand_in.runs == {}


def test_an_evicted_trial_whose_replacement_pod_a_quota_refuses_fails_after_the_pending_timeout(
    kube, namespace, core, stand_in, start_operator, custom
):
    """The Job stays active with no pod (its pod creates refused: FailedCreate in Kubernetes) after the eviction."""
    start_operator()
    slow = [{"name": "LENSLLM_STANDIN_SIZE_SECONDS", "value": "1.5"}]  # still running when the operator sees it
    create(custom, namespace, stand_in_selection("quota", workVolume=work_claim(core, namespace), pendingTimeoutSeconds=4,
                                                 env=slow))
    first = wait_for(lambda: read_ledger(stand_in.ledger), "a size measured", timeout=TIMEOUT)[0]["pod"]
    # Evicted before the operator saw it run, the pod would leave no trace in the Job: the trial would fail as one
    # whose pod never started (a slow pass on a loaded machine did that).
    wait_for(lambda: seen_running(custom, namespace, "quota", "model-a"), "the operator to see the trial run",
             timeout=TIMEOUT, interval=0.1)
    refused = kube.faults.fail(403, verb="create", resource="pods", subresource="", namespace=namespace)
    core.create_namespaced_pod_eviction(first, namespace, {"metadata": {"name": first, "namespace": namespace}})
    status = wait_for_phase(custom, namespace, "quota", "Complete", "Failed", timeout=TIMEOUT)
    entry = status.candidates["model-a"]
    assert (status.phase, entry.state, entry.reason) == ("Failed", "Failed", "PendingTimeout"), entry
    assert entry.message.startswith("no pod for 4s: no pod replaced its last one") and "kubectl describe job" in entry.message
    assert refused.failed >= 2 and len({e["pod"] for e in read_ledger(stand_in.ledger)}) == 1
