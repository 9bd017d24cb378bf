"""A Job held back by Kueue (suspended) is a queued trial, not a failed one."""

import sys

import kubernetes
from cluster import free_port, wait_for
from selections import stand_in_selection

GROUP, VERSION, PLURAL = "lensllm.io", "v1alpha1", "llmselections"


def test_a_suspended_job_is_queued_until_admitted_then_runs(kube, namespace, stand_in, operator_process):
    liveness = free_port()
    operator_process(
        [sys.executable, "-m", "lensllm.cli.main", "operator", "--namespace", namespace,
         "--metrics-port", str(free_port()), "--liveness-port", str(liveness)],
        ready=f"http://127.0.0.1:{liveness}/healthz", timeout=30,
    )
    custom = kubernetes.client.CustomObjectsApi(kube.api)
    batch = kubernetes.client.BatchV1Api(kube.api)
    doc = stand_in_selection("queued", "model-a", queue="gpu-queue")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)

    def candidate_state() -> str | None:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "queued").get("status") or {}
        return (status.get("candidates") or {}).get("model-a", {}).get("state")

    job = wait_for(lambda: batch.list_namespaced_job(namespace).items, "the trial Job")[0]
    assert job.spec.suspend is True and job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    wait_for(lambda: candidate_state() == "Queued", "the candidate to be Queued")
    assert stand_in.runs[job.metadata.name] == 0

    batch.patch_namespaced_job(job.metadata.name, namespace, {"spec": {"suspend": False}})  # what Kueue does on admission
    wait_for(lambda: candidate_state() == "Succeeded", "the admitted trial to finish", timeout=120, interval=0.2)
    # The result is written as soon as it is read; the ranking follows in a second write.
    wait_for(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "queued")["status"]["phase"]
             == "Complete", "the selection to be ranked", timeout=30, interval=0.2)
