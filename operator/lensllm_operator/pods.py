"""What a trial's pods (and Kueue's Workload) say about it: pure functions over API objects.

Called by the reconciler for every unfinished trial, so a trial that cannot start (an image
that does not pull, a missing Secret key, no node that fits, an unbound claim, a queue Kueue
does not know) shows the reason Kubernetes gives within one resync, and so that the time the
pods really ran is what metrics and the status count, whether or not a result came back.
"""

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from lensllm.selection.spec import gpus_in
from lensllm.selection.status import MAX_POD_RUNS, PodRun, TimeSpent, iso
from lensllm_operator.jobs import CONTAINER

Body = dict[str, Any]
# Container waiting reasons that mean the pod will not start by itself.
STUCK_WAITING = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})


def parse_time(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp) if stamp else None


def _runner(pod: Body) -> Body:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((c for c in statuses if c.get("name") == CONTAINER), {})


def termination_message(pods: list[Body]) -> str | None:
    """The runner container's termination message of the most recently finished pod."""
    finished = []
    for pod in pods:
        terminated = (_runner(pod).get("state") or {}).get("terminated")
        if terminated and terminated.get("message"):
            finished.append((terminated.get("finishedAt") or "", terminated["message"]))
    return max(finished)[1] if finished else None


def started(pods: list[Body]) -> bool:
    """Whether the runner ever started in any of the trial's pods."""
    for pod in pods:
        state = _runner(pod).get("state") or {}
        if "running" in state or "terminated" in state or _runner(pod).get("lastState", {}).get("terminated"):
            return True
    return False


def running(pods: list[Body]) -> bool:
    """Whether the runner is running in any of the pods (a pod that never started measures nothing)."""
    return any("running" in (_runner(pod).get("state") or {}) for pod in pods)


def may_start(pods: list[Body]) -> Body | None:
    """The oldest pod that has not started yet and that nothing is deleting: it may start at any time."""
    waiting = [p for p in pods if (p.get("status") or {}).get("phase") == "Pending" and not started([p])
               and not p["metadata"].get("deletionTimestamp")]
    return min(waiting, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def finished_at(pod: Body) -> datetime | None:
    """When the runner of `pod` ended; None while it has not."""
    terminated = (_runner(pod).get("state") or {}).get("terminated")
    return parse_time(terminated.get("finishedAt")) if terminated else None


def run_seconds(pods: list[Body], now: datetime) -> float:
    """Seconds the runner container ran, over all the trial's pods (retries and evicted ones too)."""
    return sum((end - begin).total_seconds() for begin, end in filter(None, (_span(pod, now) for pod in pods)))


def _span(pod: Body, now: datetime) -> tuple[datetime, datetime] | None:
    """When the runner of `pod` started, and when it ended (now while it runs); None before it started."""
    state = _runner(pod).get("state") or {}
    if "terminated" in state:
        begin, end = parse_time(state["terminated"].get("startedAt")), parse_time(state["terminated"].get("finishedAt"))
    elif "running" in state:
        begin, end = parse_time(state["running"].get("startedAt")), now
    else:
        return None
    return (begin, max(end, begin)) if begin and end else None


def gpus_held(pod: Body) -> int:
    """GPUs the runner container of `pod` holds: its limits (requested alike), whatever the spec says now."""
    container = next((c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == CONTAINER), {})
    limits = (container.get("resources") or {}).get("limits") or {}
    return gpus_in({name: int(count) for name, count in limits.items() if name.endswith("/gpu")})


def track(runs: list[PodRun], pods: list[Body], now: datetime) -> list[PodRun]:
    """A trial's record of the pods that ran, brought up to date with its pods now.

    A pod is added once its runner has started, and gets its end once seen ended. A pod that went before it was
    seen ended (evicted, preempted, its node lost) ended at the latest when the next pod of the trial was created:
    the Job controller replaces a pod once it terminates. With no next pod, now.
    """
    present = {pod["metadata"]["name"]: pod for pod in pods}
    updated = []
    for run in runs:
        pod = present.get(run.name)
        if run.ended_at is None:
            end = _replaced_at(run, pods, now) if pod is None else finished_at(pod)
            run = run if end is None else run.model_copy(update={"ended_at": iso(end)})
        updated.append(run)
    known = {run.name for run in runs}
    for name, pod in present.items():
        span = _span(pod, now)
        if name not in known and span is not None:
            ended = finished_at(pod)
            updated.append(PodRun(name=name, gpus=gpus_held(pod), started_at=iso(span[0]),
                                  ended_at=iso(ended) if ended else None))
    return _folded(updated, present) if len(updated) > MAX_POD_RUNS else updated


def _folded(runs: list[PodRun], present: dict[str, Body]) -> list[PodRun]:
    """The record with its gone, ended pods folded into one entry per GPU count: it holds their time, and no name a
    pod can have (pod names are lowercase DNS names)."""
    kept, gone = [], defaultdict(list)
    for run in runs:
        (gone[run.gpus] if run.ended_at is not None and run.name not in present else kept).append(run)
    return [_fold(gpus, group) for gpus, group in sorted(gone.items())] + kept


def _fold(gpus: int, runs: list[PodRun]) -> PodRun:
    begin = min(parse_time(run.started_at) for run in runs)
    seconds = sum((parse_time(run.ended_at) - parse_time(run.started_at)).total_seconds() for run in runs)
    return PodRun(name=f"(earlier pods, {gpus} GPUs each)", gpus=gpus, started_at=iso(begin),
                  ended_at=iso(begin + timedelta(seconds=seconds)))


def _replaced_at(run: PodRun, pods: list[Body], now: datetime) -> datetime:
    started = parse_time(run.started_at)
    created = [parse_time(p["metadata"].get("creationTimestamp")) for p in pods]
    return min([c for c in created if c is not None and c >= started], default=now)


def time_spent(runs: list[PodRun], pods: list[Body], now: datetime) -> TimeSpent:
    """What a trial's pods ran: the pods there now, as they say, and the gone ones, as `runs` recorded them."""
    present = {pod["metadata"]["name"] for pod in pods}
    spans = [(span, gpus_held(pod)) for pod in pods if (span := _span(pod, now)) is not None]
    spans += [((parse_time(run.started_at), parse_time(run.ended_at) if run.ended_at else now), run.gpus)
              for run in runs if run.name not in present]
    seconds = [((end - begin).total_seconds(), gpus) for (begin, end), gpus in spans]
    return TimeSpent(sum(s for s, _ in seconds), sum(s * gpus for s, gpus in seconds))


def diagnose(pods: list[Body]) -> tuple[str, str] | None:
    """Why the trial's newest pod is not running, in Kubernetes' words; None when nothing holds it."""
    if not pods:
        return None
    pod = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    status = pod.get("status") or {}
    waiting = (_runner(pod).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in STUCK_WAITING:
        # The kubelet alternates ErrImagePull and ImagePullBackOff: one reason, so one Warning, for both.
        reason = "ImagePullBackOff" if waiting["reason"] == "ErrImagePull" else waiting["reason"]
        return reason, waiting.get("message") or waiting["reason"]
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            # Unschedulable: no node fits (resources, taints, selectors), or a claim is unbound.
            return condition.get("reason") or "Unschedulable", condition.get("message") or "the pod cannot be scheduled"
    return None


def oom_killed(pods: list[Body]) -> str | None:
    """A message when the runner of some pod was killed for exceeding its memory limit."""
    for pod in pods:
        runner = _runner(pod)
        for state in (runner.get("state") or {}, runner.get("lastState") or {}):
            terminated = state.get("terminated") or {}
            if terminated.get("reason") == "OOMKilled":
                return (f"the runner of pod {pod['metadata']['name']} was killed for exceeding its memory limit "
                        f"(exit code {terminated.get('exitCode', 137)}); raise resources.memory or lower "
                        "training.batchSize / maxSeqLength")
    return None


def workload_holdup(workloads: list[Body]) -> tuple[str, str] | None:
    """Why Kueue has not admitted the trial's Workload yet (no quota, an unknown LocalQueue), if it says."""
    for workload in workloads:
        conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
        if conditions.get("Admitted", {}).get("status") == "True":
            return None
        reserved = conditions.get("QuotaReserved")
        if reserved and reserved.get("status") == "False":
            reason = "KueueInadmissible" if reserved.get("reason") == "Inadmissible" else "KueuePending"
            return reason, reserved.get("message") or reason
    return None
