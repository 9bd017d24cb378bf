"""Pure helpers of the reconciliation: reading a Job's state and a pod's termination message."""

from lensllm_operator.reconcile import job_state, termination_message


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
