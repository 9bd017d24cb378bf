"""The emulated cluster fails the way a real one does, when a test switches a fault on.

API server faults (tests/support/api_faults.py): refused requests (429, 5xx, 409) by probability or schedule,
writes whose answer is lost, watch-history compaction (410 Expired) and dropped watches, delayed garbage collection
and graceful pod deletion, evictions. Pod faults (tests/support/pod_faults.py) and the Job controller's failure
policy: OOM kills, Unschedulable, image pull errors, missing Secrets and claims, TTL deletion.
"""

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import kopf
import pytest
from cluster import Cluster, wait_for
from harness_tools import error_of, finished, job_body, kopf_operator, pods_of
from kubelet import Kubelet
from kubernetes import client
from kubernetes.client import ApiException

NEVER = ["python", "-c", "import time; time.sleep(60)"]




def watch_events(kube: Cluster, path: str, limit: int, timeout: float = 5.0, until: str | None = None,
                 **params: str) -> list[dict[str, Any]]:
    """Up to `limit` events of one raw watch request, fewer when the server ends the stream or an `until` event came."""
    url = urllib.parse.urlsplit(kube.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    query = urllib.parse.urlencode({"watch": "true", **params})
    connection.request("GET", f"{path}?{query}")
    response = connection.getresponse()
    assert response.status == 200, response.read()
    events = []
    try:
        while len(events) < limit and (line := response.readline()):
            if line.strip():
                events.append(json.loads(line))
                if events[-1]["type"] == until:
                    break
    finally:
        connection.close()
    return events


def config_map(core: client.CoreV1Api, namespace: str, name: str) -> client.V1ConfigMap:
    return core.create_namespaced_config_map(namespace, {"metadata": {"name": name}})


def test_refusals_follow_a_schedule_and_name_what_they_hit(kube: Cluster, core: client.CoreV1Api,
                                                           namespace: str) -> None:
    rule = kube.faults.fail(409, verb="patch", resource="configmaps", calls={1, 3})
    config_map(core, namespace, "c")
    outcomes = []
    for value in "abcd":
        try:
            core.patch_namespaced_config_map("c", namespace, {"data": {"k": value}})
            outcomes.append("ok")
        except ApiException as err:
            outcomes.append(err.status)
    assert outcomes == [409, "ok", 409, "ok"] and rule.failed == 2
    assert core.read_namespaced_config_map("c", namespace).data == {"k": "d"}
    assert kube.faults.counts() == {"409": 2}
    assert [(fault.request.verb, fault.request.name) for fault in kube.faults.injected] == [("patch", "c")] * 2


def test_too_many_requests_carries_retry_after_and_only_hits_the_chosen_client(kube: Cluster, core: client.CoreV1Api,
                                                                               namespace: str) -> None:
    kube.faults.fail(429, verb="list", user_agent="not-this-client")
    assert core.list_namespaced_config_map(namespace).items == []  # the test's client is spared
    kube.faults.fail(429, verb="list", resource="configmaps", times=2)
    url = f"{kube.url}/api/v1/namespaces/{namespace}/configmaps"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 429 and refused.value.headers["Retry-After"] == "1"
    assert json.loads(refused.value.read())["reason"] == "TooManyRequests"
    started = time.monotonic()
    assert core.list_namespaced_config_map(namespace).items == []  # urllib3 waited Retry-After and tried again
    assert time.monotonic() - started >= 1 and kube.faults.counts() == {"429": 2}


def test_seeded_probability_refuses_the_same_calls_every_run(kube: Cluster, core: client.CoreV1Api,
                                                             namespace: str) -> None:
    def run(seed: int) -> list[bool]:
        kube.faults.clear()
        kube.faults.seed(seed)
        kube.faults.fail(503, verb="get", probability=0.5)
        refused = []
        for _ in range(40):
            try:
                core.read_namespace(namespace)
                refused.append(False)
            except ApiException as err:
                assert err.status == 503
                refused.append(True)
        return refused

    first, again, other = run(11), run(11), run(12)
    assert first == again and first != other and 8 < sum(first) < 32


def test_a_write_whose_answer_is_lost_still_happened(kube: Cluster, batch: client.BatchV1Api, namespace: str) -> None:
    kube.faults.fail(504, verb="create", resource="jobs", commit=True, times=1)
    code, reason, _ = error_of(lambda: batch.create_namespaced_job(namespace, job_body("j", ["true"], suspend=True)))
    assert (code, reason) == (504, "Timeout")
    assert batch.read_namespaced_job("j", namespace).metadata.uid  # the retry will meet 409 AlreadyExists
    assert error_of(lambda: batch.create_namespaced_job(namespace, job_body("j", ["true"])))[:2] == (
        409, "AlreadyExists")


def test_compaction_expires_older_resource_versions_with_410(kube: Cluster, core: client.CoreV1Api,
                                                             namespace: str) -> None:
    since = config_map(core, namespace, "a").metadata.resource_version
    config_map(core, namespace, "b")
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    assert [e["object"]["metadata"]["name"] for e in watch_events(kube, path, 1, resourceVersion=since)] == ["b"]

    kube.faults.compact()
    config_map(core, namespace, "c")  # the compaction takes effect at the next request
    (expired,) = watch_events(kube, path, 2, resourceVersion=since)
    assert expired["type"] == "ERROR" and expired["object"]["code"] == 410
    assert expired["object"]["reason"] == "Expired" and "too old resource version" in expired["object"]["message"]
    fresh = core.list_namespaced_config_map(namespace).metadata.resource_version
    config_map(core, namespace, "d")
    assert [e["object"]["metadata"]["name"] for e in watch_events(kube, path, 1, resourceVersion=fresh)] == ["d"]


def test_the_watch_history_keeps_a_bounded_window(kube: Cluster, core: client.CoreV1Api, namespace: str) -> None:
    kube.faults.history_limit = 10
    since = config_map(core, namespace, "first").metadata.resource_version
    for index in range(20):
        config_map(core, namespace, f"m{index}")
    (expired,) = watch_events(kube, f"/api/v1/namespaces/{namespace}/configmaps", 2, resourceVersion=since)
    assert expired["object"]["code"] == 410
    assert len(kube.server.call(lambda: kube.emulator._changes)) <= 11


def test_injected_410_on_a_watch_and_dropped_watches(kube: Cluster, core: client.CoreV1Api, namespace: str) -> None:
    since = config_map(core, namespace, "a").metadata.resource_version
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    kube.faults.fail(410, verb="watch", resource="configmaps", times=1)
    assert [e["type"] for e in watch_events(kube, path, 2, resourceVersion=since)] == ["ERROR"]

    url = urllib.parse.urlsplit(kube.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    connection.request("GET", f"{path}?watch=true&resourceVersion={since}")
    response = connection.getresponse()
    wait_for(lambda: kube.server.call(lambda: len(kube.emulator._requests)) >= 1, "the watch to be open")
    kube.faults.drop_watches(resource="configmaps")
    assert response.read() == b""  # the stream ended; a client resumes from the last resourceVersion it saw
    connection.close()
    assert kube.faults.counts() == {"410": 1, "drop": 1}


def test_kopf_lists_again_after_its_watch_expired(kube: Cluster, core: client.CoreV1Api, namespace: str) -> None:
    registry, seen = kopf.OperatorRegistry(), []

    @kopf.on.event("", "v1", "configmaps", registry=registry)
    def remember(name: str, **_: Any) -> None:
        seen.append(name)

    with kopf_operator(registry, namespace):
        config_map(core, namespace, "before")
        wait_for(lambda: "before" in seen, "kopf to see the first ConfigMap")
        config_map(core, client.CoreV1Api(kube.api).create_namespace({"metadata": {"name": "other"}}).metadata.name,
                   "elsewhere")  # moves the resourceVersion past what kopf's watch has seen
        kube.faults.compact()
        config_map(core, namespace, "after")
        wait_for(lambda: "after" in seen, "kopf to list again and see the new ConfigMap", timeout=15)
    assert kube.faults.counts()["drop"] >= 1


def test_garbage_collection_can_lag_behind_the_owner(kube: Cluster, core: client.CoreV1Api, namespace: str) -> None:
    kube.faults.gc_delay = 1.0
    owner = config_map(core, namespace, "owner")
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "dependent", "ownerReferences": [reference]}})
    core.delete_namespaced_config_map("owner", namespace)
    assert core.read_namespaced_config_map("dependent", namespace)  # still there right after its owner went
    wait_for(lambda: not core.list_namespaced_config_map(namespace).items, "the delayed collection", timeout=5)


def test_graceful_deletion_reports_the_end_before_the_pod_goes(kube: Cluster, core: client.CoreV1Api,
                                                               batch: client.BatchV1Api, kubelet: Kubelet,
                                                               namespace: str) -> None:
    kube.faults.graceful_deletion = True
    batch.create_namespaced_job(namespace, job_body("slow", NEVER, backoffLimit=0))
    wait_for(lambda: kubelet.running == 1, "the pod to run")
    (pod,) = pods_of(core, namespace, "slow")
    # What the delete answers (the pod marked for deletion): a read after it can lose the race with the kubelet.
    marked = core.delete_namespaced_pod(pod.metadata.name, namespace)
    assert marked.metadata.deletion_timestamp and marked.metadata.deletion_grace_period_seconds == 30
    events = watch_events(kube, f"/api/v1/namespaces/{namespace}/pods", 20, timeout=10, until="DELETED",
                          resourceVersion=marked.metadata.resource_version)
    assert events[-1]["type"] == "DELETED"  # removed by the kubelet once stopped, long before the 30 s
    last = events[-1]["object"]["status"]
    terminated = last["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 143 and last["phase"] == "Failed"  # SIGTERM, reported before the removal
    done = wait_for(lambda: finished(batch, namespace, "slow"), "the Job to fail")
    assert done.status.conditions[-1].reason == "BackoffLimitExceeded"


def survivor(tmp_path: Path) -> list[str]:
    """A container that waits to be disrupted the first time (once `attempted` exists) and succeeds the second time."""
    marker = tmp_path / "attempted"
    code = (f"import pathlib, sys, time; m = pathlib.Path({str(marker)!r})\n"
            "if m.exists(): sys.exit(0)\n"
            "m.touch(); time.sleep(60)")
    return ["python", "-c", code]


IGNORE_DISRUPTIONS = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}}]}


@pytest.mark.parametrize("graceful", [False, True])
def test_an_evicted_pod_is_retried_without_counting_against_the_backoff_limit(
        kube: Cluster, core: client.CoreV1Api, batch: client.BatchV1Api, kubelet: Kubelet, namespace: str,
        tmp_path: Path, graceful: bool) -> None:
    kube.faults.graceful_deletion = graceful
    batch.create_namespaced_job(namespace, job_body("evicted", survivor(tmp_path), backoffLimit=0,
                                                    podFailurePolicy=IGNORE_DISRUPTIONS))
    wait_for(lambda: (tmp_path / "attempted").exists(), "the first attempt to start")
    (pod,) = pods_of(core, namespace, "evicted")
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod.metadata.name}}
    core.create_namespaced_pod_eviction(pod.metadata.name, namespace, eviction)

    done = wait_for(lambda: finished(batch, namespace, "evicted"), "the Job to finish", timeout=15)
    assert done.status.conditions[-1].type == "Complete" and not done.status.failed
    assert kubelet.runs["evicted"] == 2


def test_without_an_ignore_rule_an_eviction_counts_as_a_failure(core: client.CoreV1Api, batch: client.BatchV1Api,
                                                                kubelet: Kubelet, namespace: str,
                                                                tmp_path: Path) -> None:
    batch.create_namespaced_job(namespace, job_body("counted", survivor(tmp_path), backoffLimit=0))
    wait_for(lambda: (tmp_path / "attempted").exists(), "the first attempt to start")
    (pod,) = pods_of(core, namespace, "counted")
    core.create_namespaced_pod_eviction(pod.metadata.name, namespace, {"metadata": {"name": pod.metadata.name}})
    done = wait_for(lambda: finished(batch, namespace, "counted"), "the Job to fail")
    assert done.status.conditions[-1].reason == "BackoffLimitExceeded" and done.status.failed == 1


def test_an_oom_kill_ends_the_container_with_137(core: client.CoreV1Api, batch: client.BatchV1Api,
                                                 kubelet: Kubelet, namespace: str) -> None:
    kubelet.faults.add("oom-kill", job="hungry", after=0.3)
    batch.create_namespaced_job(namespace, job_body("hungry", NEVER, backoffLimit=0,
                                                    podFailurePolicy=IGNORE_DISRUPTIONS))
    done = wait_for(lambda: finished(batch, namespace, "hungry"), "the Job to fail")
    assert done.status.conditions[-1].reason == "BackoffLimitExceeded"  # an OOM kill is no disruption: it counts
    (pod,) = pods_of(core, namespace, "hungry")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.reason, terminated.exit_code) == ("Failed", "OOMKilled", 137)
    assert [hit.kind for hit in kubelet.faults.injected] == ["oom-kill"]


def waiting_reason(core: client.CoreV1Api, namespace: str, job: str) -> tuple[str, str] | None:
    pods = pods_of(core, namespace, job)
    statuses = (pods[0].status.container_statuses or []) if pods and pods[0].status else []
    waiting = statuses[0].state.waiting if statuses else None
    return (waiting.reason, waiting.message) if waiting and waiting.message else None


def scheduling(core: client.CoreV1Api, namespace: str, job: str) -> client.V1PodCondition | None:
    pods = pods_of(core, namespace, job)
    conditions = (pods[0].status.conditions or []) if pods and pods[0].status else []
    return next((c for c in conditions if c.type == "PodScheduled" and c.status == "False"), None)


def test_an_unschedulable_pod_waits_with_the_schedulers_message_until_room_appears(
        core: client.CoreV1Api, batch: client.BatchV1Api, kubelet: Kubelet, namespace: str) -> None:
    kubelet.faults.add("unschedulable", job="big")
    batch.create_namespaced_job(namespace, job_body("big", ["true"]))
    condition = wait_for(lambda: scheduling(core, namespace, "big"), "the scheduler's verdict")
    assert condition.reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in condition.message
    (pod,) = pods_of(core, namespace, "big")
    assert pod.status.phase == "Pending" and not pod.spec.node_name and kubelet.runs["big"] == 0

    kubelet.faults.clear("unschedulable")
    done = wait_for(lambda: finished(batch, namespace, "big"), "the Job to run once scheduled")
    assert done.status.succeeded == 1 and pods_of(core, namespace, "big")[0].spec.node_name == "emulated-node"


def test_an_image_that_cannot_be_pulled_shows_errimagepull_then_backoff(
        core: client.CoreV1Api, batch: client.BatchV1Api, kubelet: Kubelet, namespace: str) -> None:
    kubelet.faults.add("image-pull", image="lensllm:*")
    batch.create_namespaced_job(namespace, job_body("pull", ["true"]))
    reasons = set()
    wait_for(lambda: reasons.add(waiting_reason(core, namespace, "pull")) or
             {"ErrImagePull", "ImagePullBackOff"} <= {r[0] for r in reasons if r}, "both pull reasons", timeout=10)
    message = next(m for reason, m in filter(None, reasons) if reason == "ErrImagePull")
    assert 'Failed to pull image "lensllm:test"' in message and kubelet.runs["pull"] == 0


@pytest.mark.parametrize(("missing", "reason"), [
    ("secret", 'secret "hub" not found'),
    ("key", "couldn't find key token in Secret e2e/hub"),
])
def test_a_missing_secret_or_key_is_a_create_container_config_error(
        core: client.CoreV1Api, batch: client.BatchV1Api, kubelet: Kubelet, namespace: str,
        missing: str, reason: str) -> None:
    if missing == "key":
        core.create_namespaced_secret(namespace, {"metadata": {"name": "hub"}, "stringData": {"other": "x"}})
    job = job_body("config", ["true"])
    job["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}]
    batch.create_namespaced_job(namespace, job)
    assert wait_for(lambda: waiting_reason(core, namespace, "config"), "the waiting reason") == (
        "CreateContainerConfigError", reason)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "hub2"}, "stringData": {"token": "t"}})
    assert kubelet.runs["config"] == 0


def test_a_missing_or_unbound_claim_keeps_the_pod_pending(core: client.CoreV1Api, batch: client.BatchV1Api,
                                                          kubelet: Kubelet, namespace: str) -> None:
    job = job_body("cached", ["true"])
    job["spec"]["template"]["spec"]["volumes"] = [{"name": "cache", "persistentVolumeClaim": {"claimName": "hf"}}]
    batch.create_namespaced_job(namespace, job)
    condition = wait_for(lambda: scheduling(core, namespace, "cached"), "the missing claim")
    assert condition.message == 'persistentvolumeclaim "hf" not found'

    kubelet.faults.add("unbound-claim", claim="hf")
    claim = {"metadata": {"name": "hf"}, "spec": {"accessModes": ["ReadWriteMany"],
                                                  "resources": {"requests": {"storage": "1Gi"}}}}
    core.create_namespaced_persistent_volume_claim(namespace, claim)
    wait_for(lambda: "unbound immediate PersistentVolumeClaims" in scheduling(core, namespace, "cached").message,
             "the unbound claim")
    kubelet.faults.clear("unbound-claim")
    assert wait_for(lambda: finished(batch, namespace, "cached"), "the Job to run").status.succeeded == 1
    assert core.read_namespaced_persistent_volume_claim("hf", namespace).status.phase == "Bound"


@pytest.mark.parametrize("ttl", [0, 1])
def test_the_ttl_controller_deletes_finished_jobs_and_their_pods(core: client.CoreV1Api, batch: client.BatchV1Api,
                                                                 kubelet: Kubelet, namespace: str, ttl: int) -> None:
    batch.create_namespaced_job(namespace, job_body("brief", ["true"], ttlSecondsAfterFinished=ttl))
    wait_for(lambda: kubelet.runs["brief"] == 1, "the Job to run")
    wait_for(lambda: not batch.list_namespaced_job(namespace).items, "the TTL controller", timeout=5)
    assert not core.list_namespaced_pod(namespace).items


def test_the_ttl_controller_also_collects_a_job_whose_ttl_is_set_after_it_finished(
        core: client.CoreV1Api, batch: client.BatchV1Api, kubelet: Kubelet, namespace: str) -> None:
    batch.create_namespaced_job(namespace, job_body("late", ["true"]))
    wait_for(lambda: finished(batch, namespace, "late"), "the Job to finish")
    time.sleep(0.5)
    assert [job.metadata.name for job in batch.list_namespaced_job(namespace).items] == ["late"]  # no TTL: kept
    batch.patch_namespaced_job("late", namespace, {"spec": {"ttlSecondsAfterFinished": 0}})
    wait_for(lambda: not batch.list_namespaced_job(namespace).items, "the TTL controller", timeout=5)
    assert not core.list_namespaced_pod(namespace).items


def test_count_rules_and_the_backoff_limit(batch: client.BatchV1Api, kubelet: Kubelet, namespace: str) -> None:
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                        {"action": "Count", "onExitCodes": {"operator": "In", "values": [3]}},
                        {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0, 3]}}]}
    batch.create_namespaced_job(namespace, job_body("counting", ["python", "-c", "raise SystemExit(3)"],
                                                    backoffLimit=2, podFailurePolicy=policy))
    done = wait_for(lambda: finished(batch, namespace, "counting"), "the Job to fail")
    assert done.status.conditions[-1].reason == "BackoffLimitExceeded" and done.status.failed == 3
    assert kubelet.runs["counting"] == 3


def test_long_runs_keep_no_request_history_in_kmock(kube: Cluster, core: client.CoreV1Api, namespace: str) -> None:
    for index in range(50):
        config_map(core, namespace, f"m{index}")
        core.read_namespaced_config_map(f"m{index}", namespace)

    def kept() -> tuple[int, int]:
        emulator = kube.emulator
        return len(emulator._requests), sum(len(payload._requests) for payload in emulator._payloads)

    assert kube.server.call(kept) == (0, 0)
    assert sum(call.resource == "configmaps" for call in kube.api_calls) == 100  # what tests assert on stays


def test_a_kubelet_keeps_running_jobs_through_compactions_and_dropped_watches(
        kube: Cluster, batch: client.BatchV1Api, kubelet: Kubelet, namespace: str) -> None:
    for index in range(3):
        batch.create_namespaced_job(namespace, job_body(f"j{index}", ["true"]))
        kube.faults.compact()
    kube.faults.drop_watches()
    for index in range(3):
        assert wait_for(lambda i=index: finished(batch, namespace, f"j{i}"), "the Jobs to finish").status.succeeded
