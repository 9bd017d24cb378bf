"""Pure helpers of the reconciliation: a Job's state, what its pods say, the status patch, the operator's policy."""

import asyncio
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from lensllm.selection.spec import LLMSelectionSpec
from lensllm.selection.status import MAX_POD_RUNS, TimeSpent
from lensllm_operator.config import ConfigError, OperatorConfig
from lensllm_operator.context import Effects
from lensllm_operator.pods import (
    diagnose, oom_killed, run_seconds, started, termination_message, time_spent, track, workload_holdup,
)
from lensllm_operator.policy import violation
from lensllm_operator.reconcile import InvalidSpec, merge_patch, parse_spec
from lensllm_operator.trials import job_state


def job(suspend=False, active=0, conditions=()):
    return {"spec": {"suspend": suspend}, "status": {"active": active, "conditions": list(conditions)}}


def pod(name="p", created="2026-01-01T00:00:00Z", state=None, last=None, conditions=(), container="runner"):
    runner = {"name": container, "state": state or {}, **({"lastState": last} if last else {})}
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"containerStatuses": [runner], "conditions": list(conditions)}}


def terminated(message=None, started="2026-01-01T00:00:00Z", finished="2026-01-01T00:01:40Z", **extra):
    return {"terminated": {"startedAt": started, "finishedAt": finished, **({"message": message} if message else {}), **extra}}


def test_job_states_follow_the_job_controllers_conditions_and_the_pods():
    assert job_state(job(suspend=True)) == "Queued"
    assert job_state(job()) == "Queued"  # created, no pod yet
    assert job_state(job(active=1)) == "Running"
    assert job_state(job(active=1), [pod(state={"waiting": {"reason": "ContainerCreating"}})]) == "Queued"
    assert job_state(job(active=1), [pod(state={"running": {"startedAt": "2026-01-01T00:00:00Z"}})]) == "Running"
    assert job_state(job(conditions=[{"type": "Complete", "status": "True"}])) == "Succeeded"
    assert job_state(job(conditions=[{"type": "Failed", "status": "True"}])) == "Failed"
    assert job_state(job(active=1, conditions=[{"type": "FailureTarget", "status": "True"}])) == "Running"
    # Its pod has ended, and the Job controller has not marked the Job finished yet: still Running, not Queued.
    ended = pod(state=terminated(exitCode=0, reason="Completed"))
    assert job_state(job(conditions=[{"type": "SuccessCriteriaMet", "status": "True"}]), [ended]) == "Running"
    assert job_state(job(suspend=True), [ended]) == "Queued"  # Kueue took it back: its pods are going


def test_the_latest_runner_termination_message_wins():
    pods = [pod(state=terminated('{"try": 1}', finished="2026-01-01T00:00:01Z")),
            pod(state=terminated('{"try": 2}', finished="2026-01-01T00:00:09Z")),
            pod(state=terminated("sidecar", finished="2026-01-01T00:00:10Z"), container="other")]
    assert termination_message(pods) == '{"try": 2}'
    assert termination_message([pod(state=terminated())]) is None


def test_pods_run_time_counts_every_attempt_and_the_running_one_up_to_now():
    now = datetime(2026, 1, 1, 0, 10, tzinfo=timezone.utc)
    pods = [pod(state=terminated(exitCode=137, reason="OOMKilled")),
            pod(state={"running": {"startedAt": "2026-01-01T00:05:00Z"}})]
    assert run_seconds(pods, now) == 100 + 300
    assert started(pods) and not started([pod(state={"waiting": {"reason": "ErrImagePull"}})])
    assert "memory limit" in oom_killed(pods)


def test_a_trials_record_of_its_pods_keeps_the_time_of_those_gone_before_it_ended():
    now = datetime(2026, 1, 1, 1, 0, tzinfo=timezone.utc)
    with_gpus = {"containers": [{"name": "runner", "resources": {"limits": {"nvidia.com/gpu": "2", "memory": "8Gi"}}}]}
    evicted = {**pod("a", state={"running": {"startedAt": "2026-01-01T00:00:00Z"}}), "spec": with_gpus}
    failed = {**pod("b", state=terminated(started="2026-01-01T00:00:00Z", finished="2026-01-01T00:00:10Z")),
              "spec": with_gpus}
    runs = track([], [evicted, failed], now)
    assert [(r.name, r.gpus, r.started_at, r.ended_at) for r in runs] == [
        ("a", 2, "2026-01-01T00:00:00Z", None), ("b", 2, "2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z")]

    replacement = {**pod("c", created="2026-01-01T00:20:00Z", state={"running": {"startedAt": "2026-01-01T00:30:00Z"}}),
                   "spec": with_gpus}
    runs = track(runs, [replacement], now)  # a and b are gone: a ended at the latest when c was made
    assert [(r.name, r.ended_at) for r in runs] == [
        ("a", "2026-01-01T00:20:00Z"), ("b", "2026-01-01T00:00:10Z"), ("c", None)]
    assert time_spent(runs, [replacement], now) == TimeSpent(1200 + 10 + 1800, 2 * (1200 + 10 + 1800))
    assert track(runs, [], now)[-1].ended_at == "2026-01-01T01:00:00Z"  # gone with no pod after it: now, at the latest


def test_a_trial_evicted_over_and_over_keeps_a_bounded_record_that_still_holds_all_its_time():
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    one_gpu = {"containers": [{"name": "runner", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    runs = []
    for hour in range(20):  # each pod runs 10 minutes, is evicted, and is gone before its replacement runs
        begin = f"2026-01-01T{hour:02d}:00:00Z"
        evicted = {**pod(f"p{hour}", created=begin, state=terminated(started=begin, finished=f"2026-01-01T{hour:02d}:10:00Z")),
                   "spec": one_gpu}
        runs = track(runs, [evicted], now)
        assert len(runs) <= MAX_POD_RUNS
    running = {**pod("last", created="2026-01-01T20:00:00Z", state={"running": {"startedAt": "2026-01-01T20:00:00Z"}}),
               "spec": one_gpu}
    runs = track(runs, [running], now)
    assert len(runs) <= MAX_POD_RUNS and runs[-1].name == "last"
    assert time_spent(runs, [running], now) == TimeSpent(20 * 600 + 4 * 3600, 20 * 600 + 4 * 3600)


@pytest.mark.parametrize(
    "the_pod, reason, says",
    [
        (pod(state={"waiting": {"reason": "CreateContainerConfigError",
                                "message": 'couldn\'t find key token in Secret ml/hf-token'}}),
         "CreateContainerConfigError", "couldn't find key token"),
        (pod(state={"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "runner:typo"'}}),
         "ImagePullBackOff", "runner:typo"),
        (pod(state={"waiting": {"reason": "ErrImagePull", "message": 'failed to pull "runner:typo": not found'}}),
         "ImagePullBackOff", "not found"),
        (pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]),
         "Unschedulable", "Insufficient nvidia.com/gpu"),
        (pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "message": 'pod has unbound immediate PersistentVolumeClaims'}]),
         "Unschedulable", "unbound immediate PersistentVolumeClaims"),
    ],
)
def test_what_holds_a_pod_back_is_named_in_kubernetes_words(the_pod, reason, says):
    found = diagnose([the_pod])
    assert found[0] == reason and says in found[1]


def test_the_newest_pod_decides_and_a_running_one_holds_nothing_back():
    stuck = pod("old", "2026-01-01T00:00:00Z", state={"waiting": {"reason": "ErrImagePull", "message": "x"}})
    fine = pod("new", "2026-01-01T00:01:00Z", state={"running": {"startedAt": "2026-01-01T00:01:05Z"}})
    assert diagnose([stuck, fine]) is None and diagnose([]) is None


def test_kueue_says_why_a_workload_waits():
    workload = {"status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Inadmissible",
                                           "message": "LocalQueue gpu-queu doesn't exist"}]}}
    assert workload_holdup([workload]) == ("KueueInadmissible", "LocalQueue gpu-queu doesn't exist")
    admitted = {"status": {"conditions": [{"type": "Admitted", "status": "True"}]}}
    assert workload_holdup([admitted]) is None


def test_the_status_patch_removes_what_the_new_status_no_longer_has():
    old = {"phase": "Running", "candidates": {"a": {"state": "Queued", "reason": "Unschedulable", "message": "no GPU"}}}
    new = {"phase": "Running", "candidates": {"a": {"state": "Running"}}}
    assert merge_patch(old, new) == {"candidates": {"a": {"state": "Running", "reason": None, "message": None}}}


SPEC = {
    "candidates": [{"name": "a", "model": "m"}],
    "dataset": {"source": "d.jsonl", "textField": "text"},
    "budget": {"subsetSizes": [10, 20, 40], "targetSize": 100},
}


@pytest.mark.parametrize("raw, says", [(None, "spec: expected an object"), ({**SPEC, "seed": "1"}, "spec.seed")])
def test_a_spec_the_operator_cannot_read_is_invalid_not_an_exception(raw, says):
    with pytest.raises(InvalidSpec, match=says):
        parse_spec(raw)


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"runner": {"image": "docker.io/attacker/miner:latest"}}, "spec.runner.image 'docker.io/attacker/miner:latest'"),
        ({"modelCache": {"claimName": "shared", "readOnly": False}}, "runner.allowWritableModelCache"),
        ({"hfTokenSecretRef": {"name": "database-password", "key": "password"}}, "'database-password' is not an allowed"),
        ({"tolerations": [{"operator": "Exists"}]}, "tolerating 'every taint'"),
        ({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}, "control-plane"),
    ],
)
def test_a_selection_may_not_ask_for_more_than_the_operator_allows(changes, says):
    spec = LLMSelectionSpec.model_validate({**SPEC, **changes})
    assert says in violation(spec, OperatorConfig())


def test_what_the_operator_allows_by_default_and_by_setting():
    allowed = {"runner": {"image": "ghcr.io/lensllm/runner:0.2.0@sha256:" + "0" * 64},
               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
               "hfTokenSecretRef": {"name": "hf-token"}, "modelCache": {"claimName": "cache"}}
    assert violation(LLMSelectionSpec.model_validate({**SPEC, **allowed}), OperatorConfig()) is None
    config = OperatorConfig.from_env({"LENSLLM_ALLOWED_RUNNER_IMAGES": "registry.internal/ml/",
                                      "LENSLLM_ALLOW_WRITABLE_MODEL_CACHE": "true"})
    ours = {"runner": {"image": "registry.internal/ml/runner:1"}, "modelCache": {"claimName": "c", "readOnly": False}}
    assert violation(LLMSelectionSpec.model_validate({**SPEC, **ours}), config) is None


@pytest.mark.parametrize("env, says", [
    ({"LENSLLM_RESYNC_SECONDS": "soon"}, "LENSLLM_RESYNC_SECONDS='soon': expected a float"),
    ({"LENSLLM_RESYNC_SECONDS": "nan"}, "LENSLLM_RESYNC_SECONDS='nan': expected a finite number"),
    ({"LENSLLM_RESYNC_SECONDS": "0"}, "resync seconds 0.0: expected a positive number"),
    ({"LENSLLM_METRICS_PORT": "99999"}, "metrics port 99999: expected 1 to 65535"),
    ({"LENSLLM_LIVENESS_PORT": "8000"}, "metrics port and liveness port are both 8000"),
    ({"LENSLLM_NAMESPACES": "ml-team,ML_Team"}, "namespace 'ML_Team': expected a namespace name (an RFC 1123 label"),
    ({"LENSLLM_NAMESPACES": "team-*"}, "namespace 'team-*': expected"),  # kopf would take it for a glob
    ({"LENSLLM_NAMESPACES": "a" * 64}, "namespace 'aaaa"),
])
def test_a_bad_operator_setting_is_a_clear_error(env, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        OperatorConfig.from_env(env)


def test_a_bad_operator_flag_is_checked_as_its_variable_is():
    from lensllm_operator.run import with_overrides

    with pytest.raises(ConfigError, match="liveness port 0: expected 1 to 65535"):
        with_overrides(OperatorConfig(), liveness_port=0)
    with pytest.raises(ConfigError, match="namespace '': expected a namespace name"):
        with_overrides(OperatorConfig(), namespaces=("",))  # `--namespace ''`: a pattern that matches none
    assert with_overrides(OperatorConfig(), namespaces=("ml-team", "a" * 63)).namespaces == ("ml-team", "a" * 63)


@pytest.mark.parametrize("kubeconfig, says", [
    (None, "no usable kubeconfig (Invalid kube-config file. No configuration found.)"),
    ("garbage: [\n", "no usable kubeconfig (while parsing a flow node expected the node content"),
    ("apiVersion: v1\nkind: Config\ncurrent-context: gone\n", "Expected object with name gone"),
])
def test_the_operator_without_a_cluster_to_talk_to_exits_2_at_once_saying_why(tmp_path, kubeconfig, says):
    """kopf would retry the login every minute, forever; no retry mends a missing or broken kubeconfig. (A process
    of its own: the Kubernetes client reads KUBECONFIG when it is imported.)"""
    path = tmp_path / "kubeconfig"
    if kubeconfig is not None:
        path.write_text(kubeconfig)
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"} | {"HOME": str(tmp_path), "KUBECONFIG": str(path)}
    ran = subprocess.run([sys.executable, "-m", "lensllm.cli.main", "operator", "--namespace", "ml-team"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 2 and ran.stdout == ""
    assert ran.stderr.startswith("lensllm operator: error: no cluster to connect to: not in a pod (") and says in ran.stderr
    assert ran.stderr.count("\n") == 1


def test_the_resync_takes_unfinished_selections_and_waits_out_a_requested_delay():
    from lensllm_operator.resync import Unfinished

    selections = Unfinished()
    selections.track("ns", "running", "Running", deleted=False)
    selections.track("ns", "new", None, deleted=False)
    selections.track("ns", "done", "Complete", deleted=False)
    selections.track("ns", "gone", "Running", deleted=False)
    selections.track("ns", "gone", None, deleted=True)
    assert sorted(selections.due(now=0.0, retry_due={})) == [("ns", "new"), ("ns", "running")]
    retry_due = {("ns", "running"): 30.0}
    assert selections.due(now=29.0, retry_due=retry_due) == [("ns", "new")]
    assert ("ns", "running") in selections.due(now=30.0, retry_due=retry_due)


def test_an_effect_that_fails_does_not_cost_the_ones_after_it_and_its_error_is_raised():
    done = []

    async def delete_job():
        raise ConnectionError("API server unreachable")

    effects = Effects()
    effects.later(done.append, "metrics")
    effects.later(delete_job)
    effects.later(done.append, "event")
    with pytest.raises(ConnectionError):
        asyncio.run(effects.run())
    assert done == ["metrics", "event"]
