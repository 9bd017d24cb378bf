"""Helpers of the reconciliation: a Job's state, a pod's termination message, a result that cannot be read."""

import asyncio

from prometheus_client import CollectorRegistry

from lensllm.selection import status as st
from lensllm.selection.spec import LLMSelectionSpec
from lensllm_operator import kube
from lensllm_operator.config import OperatorConfig
from lensllm_operator.metrics import OperatorMetrics
from lensllm_operator.reconcile import Context, _read_result, job_state, termination_message


def job(suspend=False, active=0, conditions=()):
    return {"spec": {"suspend": suspend}, "status": {"active": active, "conditions": list(conditions)}}


def test_job_states_follow_the_job_controllers_conditions():
    assert job_state(job(suspend=True)) == "Queued"
    assert job_state(job()) == "Queued"  # created, no pod yet
    assert job_state(job(active=1)) == "Running"
    assert job_state(job(conditions=[{"type": "Complete", "status": "True"}])) == "Succeeded"
    assert job_state(job(conditions=[{"type": "Failed", "status": "True"}])) == "Failed"
    assert job_state(job(active=1, conditions=[{"type": "FailureTarget", "status": "True"}])) == "Running"


def pod(message: str | None, finished: str, container: str = "runner"):
    terminated = {"finishedAt": finished, **({"message": message} if message else {})}
    return {"status": {"containerStatuses": [{"name": container, "state": {"terminated": terminated}}]}}


def test_the_latest_runner_termination_message_wins():
    pods = [pod('{"try": 1}', "2026-01-01T00:00:01Z"), pod('{"try": 2}', "2026-01-01T00:00:09Z"),
            pod("sidecar", "2026-01-01T00:00:10Z", container="other")]
    assert termination_message(pods) == '{"try": 2}'
    assert termination_message([pod(None, "2026-01-01T00:00:01Z")]) is None


def test_a_missing_or_malformed_result_fails_the_candidate_with_a_reason(monkeypatch):
    spec = LLMSelectionSpec.model_validate({
        "candidates": [{"name": "a", "model": "m"}],
        "dataset": {"source": "d.jsonl", "textField": "text"},
        "budget": {"subsetSizes": [10, 20, 40], "targetSize": 100},
    })
    ctx = Context(config=OperatorConfig(), metrics=OperatorMetrics(CollectorRegistry()))
    start = st.mark_trial(st.initial_status(spec, 1, "now"), "a", st.TrialRecord(job_name="j", sizes=[10], state="Running"))
    for pods, reason in (([], "ResultMissing"), ([pod("Traceback (most recent call last):\nboom", "t")], "ResultInvalid")):
        async def listed(namespace, selector, pods=pods):
            return pods

        monkeypatch.setattr(kube, "list_pods", listed)
        status = asyncio.run(_read_result(ctx, "ns", spec, start, "a", "j"))
        entry = status.candidates["a"]
        assert (entry.state, entry.reason, entry.trials[-1].state) == ("Failed", reason, "Failed")
    assert "boom" in entry.message
