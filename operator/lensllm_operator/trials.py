"""Fold a selection's Jobs and pods into its status, and launch the trials the plan asks for.

Called by `reconcile` under the selection's lock with everything it listed (`Cluster`). Each
step returns the new status and leaves what must happen after the status is written (metrics,
Events, TTLs, deletions) in `Effects`. Every situation ends somewhere: a finished Job is read,
a Job that vanished is run again as a new attempt (resuming what it saved), a trial that
cannot start is named by Kubernetes' reason and fails after the pending timeout, and a Job the
API server refuses fails its candidate with the server's message.
"""

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from lensllm.selection import status as st
from lensllm.selection.plan import Trial, current_round, next_trials
from lensllm.selection.spec import LLMSelectionSpec
from lensllm.trial.result import TrialResult
from lensllm.trial.spec import validation_message
from lensllm_operator import kube
from lensllm_operator.context import Context, Effects
from lensllm_operator.jobs import (
    ATTEMPT_ANNOTATION, CANDIDATE_LABEL, ROUND_LABEL, SIZES_ANNOTATION, build_job, saved_model_location,
)
from lensllm_operator.names import job_name
from lensllm_operator.pods import (
    diagnose, finished_at, gpus_held, may_start, oom_killed, parse_time, run_seconds, running, started, termination_message,
    time_spent, track, workload_holdup,
)

Body = dict[str, Any]
# A full ResourceQuota's wait, which a transient error creating the Job interrupts without ending.
QUOTA_WAIT = ("JobForbidden", "JobCreateFailing")


@dataclass
class Cluster:
    """One selection and what exists for it, as this reconciliation listed it."""

    body: Body
    spec: LLMSelectionSpec
    jobs: dict[str, Body]  # live Jobs the selection owns, by name
    pods: dict[str, list[Body]]  # their pods, by Job name
    workloads: dict[str, list[Body]] | None  # Kueue Workloads, by Job uid; None where the operator may not read them
    now: datetime

    @property
    def namespace(self) -> str:
        return self.body["metadata"]["namespace"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def uid(self) -> str:
        return self.body["metadata"]["uid"]


def job_state(job: Body, pods: list[Body] | None = None) -> str:
    """Queued (suspended, or no runner started yet), Running, Succeeded or Failed.

    A Job with no active pod whose runner has started is Running: its pod ended and the Job controller has yet to
    mark it finished (it first counts the pod and removes its finalizer) or to replace the pod.
    """
    job_status = job.get("status") or {}
    for condition in job_status.get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return "Succeeded" if condition["type"] == "Complete" else "Failed"
    if (job.get("spec") or {}).get("suspend"):
        return "Queued"
    if pods is None:
        return "Running" if job_status.get("active") else "Queued"
    return "Running" if started(pods) else "Queued"


def _failed_condition(job: Body) -> tuple[str, str] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return condition.get("reason") or "JobFailed", condition.get("message") or "the Job failed"
    return None


def _record_of(status: st.LLMSelectionStatus, candidate: str, job: Body) -> st.TrialRecord:
    """The status's record of this Job, or one made from the Job itself (created, but not yet recorded)."""
    name = job["metadata"]["name"]
    known = next((t for t in status.candidates[candidate].trials if t.job_name == name), None)
    if known is not None:
        return known
    annotations = job["metadata"].get("annotations") or {}
    return st.TrialRecord(
        job_name=name,
        round=int(job["metadata"]["labels"].get(ROUND_LABEL, "0")),
        attempt=int(annotations.get(ATTEMPT_ANNOTATION, "0")),
        sizes=[int(s) for s in annotations.get(SIZES_ANNOTATION, "").split(",") if s],
        state="Queued",
    )


async def collect(ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, effects: Effects) -> st.LLMSelectionStatus:
    """Fold every Job's state into the status; read the result of each newly finished one."""
    round_ = current_round(status)
    for name, job in cluster.jobs.items():
        candidate = job["metadata"]["labels"].get(CANDIDATE_LABEL)
        if candidate not in status.candidates:
            continue
        record = _record_of(status, candidate, job)
        pods = cluster.pods.get(name, [])
        _accrue(ctx, cluster, candidate, pods, effects)
        if record.round > round_:
            # Launched by a pass whose status write was then refused or cut short by a restart: the round before it
            # is undecided here. Read now, its points would decide that round (as if already measured, it would
            # plan nothing more). The round is decided again first, the same way (same points, same seed), and
            # its launch adopts this Job.
            continue
        if record.state in (*st.TERMINAL, "Lost"):
            continue
        state = job_state(job, pods)
        runs = track(record.pods or [], pods, cluster.now) or None
        if record.state == "Running" and state == "Queued" and not pods and not (job.get("spec") or {}).get("suspend"):
            # Between an evicted pod and the Job controller's replacement: still running, unless none comes.
            status = st.mark_trial(status, candidate, record.model_copy(update={"pods": runs}))
            status = _watch_podless(ctx, cluster, status, candidate, job, effects)
            continue
        shown = state if state not in st.TERMINAL else "Running"  # until its result is read
        status = st.mark_trial(status, candidate, record.model_copy(update={"state": shown, "pods": runs}))
        if state in st.TERMINAL:
            status = _read_result(ctx, cluster, status, candidate, job, pods, effects)
        else:
            status = _watch_unfinished(ctx, cluster, status, candidate, job, pods, effects)
    return status


def _accrue(ctx: Context, cluster: Cluster, candidate: str, pods: list[Body], effects: Effects) -> None:
    """GPU time, pod by pod: an evicted pod is deleted, and what it ran must neither vanish with it nor swallow the
    first as many seconds of its replacement (a total per Job drops when a pod goes)."""
    started = ctx.started_at.replace(microsecond=0)  # the API server's timestamps have whole seconds
    for pod in pods:
        created = parse_time(pod["metadata"].get("creationTimestamp"))
        before = created is not None and created < started
        effects.later(_accrue_unless_deleted, ctx, cluster, pod["metadata"]["name"],
                      run_seconds([pod], cluster.now) * gpus_held(pod), before)


def _accrue_unless_deleted(ctx: Context, cluster: Cluster, pod: str, gpu_seconds: float, seen_before_start: bool) -> None:
    """Nothing for a selection deleted while the pass worked: what the metrics would keep of its pods would outlive
    the deletion for good, and its last seconds go uncounted as they do when no pass runs between them and it."""
    if not ctx.was_deleted(cluster.body):
        ctx.metrics.accrue_gpu_time(cluster.namespace, cluster.name, pod, gpu_seconds, seen_before_start=seen_before_start)


def _read_result(
    ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, candidate: str, job: Body, pods: list[Body], effects: Effects
) -> st.LLMSelectionStatus:
    name = job["metadata"]["name"]
    message = termination_message(pods)
    failed = _failed_condition(job)
    if message is None and not pods and failed is None:
        # Complete, but its pod went before the result was read (an eviction as the runner exited,
        # pod garbage collection). Delete the Job: once it is gone the trial is lost and its next
        # attempt resumes from the saved result, never while two Jobs of the trial exist.
        effects.later(kube.delete_job, cluster.namespace, name)
        return status
    result = _parsed(ctx, cluster, candidate, message)
    spent = _spent(cluster, status, candidate, name)
    if result is not None:
        status = st.record_result(status, cluster.spec, candidate, name, result, gpus_held(pods[0]), _measured(spent))
    else:
        status = st.record_failure(status, candidate, name, *_why_no_result(name, pods, failed), spent)
    entry = status.candidates[candidate]
    outcome = "succeeded" if entry.state == "Succeeded" else "failed"
    effects.later(ctx.metrics.record_trial, cluster.namespace, outcome, entry.reason or "Succeeded", spent.seconds,
                  spent.gpu_seconds)
    return status


def _measured(spent: st.TimeSpent) -> st.TimeSpent | None:
    """None where the pods' whole-second timestamps measured nothing: the result's own wall time is finer."""
    return spent if spent.seconds else None


def _spent(cluster: Cluster, status: st.LLMSelectionStatus, candidate: str, job: str) -> st.TimeSpent:
    """What a trial's pods ran, those gone before it ended included."""
    record = next(t for t in status.candidates[candidate].trials if t.job_name == job)
    pods = cluster.pods.get(job, [])
    return time_spent(track(record.pods or [], pods, cluster.now), pods, cluster.now)


def _parsed(ctx: Context, cluster: Cluster, candidate: str, message: str | None) -> TrialResult | None:
    """The trial's result, where it saved a model naming that model's folder on the claim (not the pod's mount)."""
    try:
        result = None if message is None else TrialResult.model_validate_json(message)
    except ValidationError:
        return None  # a log tail (FallbackToLogsOnError): the runner died before writing its result
    if result is None or result.model_dir is None:
        return result
    return result.model_copy(update={"model_dir": saved_model_location(cluster.spec, ctx.config, cluster.uid, candidate)})


def _why_no_result(job: str, pods: list[Body], failed: tuple[str, str] | None) -> tuple[str, str]:
    """The reason a trial left no result, most telling first: the kernel's OOM kill, then the Job's own
    reason (DeadlineExceeded, BackoffLimitExceeded), then the last line the runner printed."""
    message = termination_message(pods)
    tail = f"; last output: {_last_line(message)}" if message else ""
    oom = oom_killed(pods)
    if oom:
        return "OOMKilled", oom + tail
    if failed:
        return failed[0], failed[1] + tail
    if message is None:
        return "ResultMissing", f"Job {job} ended without a result"
    return "ResultInvalid", f"Job {job}: {_invalid_result(message) or _last_line(message)}"


def _invalid_result(message: str) -> str | None:
    """What is wrong with a result document (a JSON object with a status) that does not validate; None for anything
    else: a log tail, even one of JSON log lines."""
    try:
        document = json.loads(message)
    except ValueError:
        return None
    if not isinstance(document, dict) or "status" not in document:
        return None
    try:
        TrialResult.model_validate(document)
    except ValidationError as err:
        return f"its result is not valid: {validation_message(err)}"
    return None


def _watch_unfinished(
    ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, candidate: str, job: Body, pods: list[Body], effects: Effects
) -> st.LLMSelectionStatus:
    """Name what holds an unfinished trial back, once per reason; fail it when it never starts."""
    suspended = bool((job.get("spec") or {}).get("suspend"))
    holdup = diagnose(pods)
    workloads = None if cluster.workloads is None else cluster.workloads.get(job["metadata"]["uid"], [])
    if holdup is None and suspended and cluster.spec.queue:
        holdup = workload_holdup(workloads or [])
    before = status.candidates[candidate].reason
    status = st.mark_waiting(status, candidate, *(holdup or (None, None)))
    if holdup and holdup[0] != before:
        effects.later(kopf.warn, cluster.body, reason=holdup[0], message=f"candidate {candidate}: {holdup[1]}")
    since, what, idle = _pending_since(job, pods, suspended, holdup, has_workload=workloads is None or bool(workloads))
    timeout = _pending_timeout(ctx, cluster)
    if since is None or running(pods) or (cluster.now - since).total_seconds() <= timeout:
        return status
    reason, why = holdup or ("PendingTimeout", idle)
    return _fail_unstarted(ctx, cluster, status, candidate, job, reason, f"not started {timeout}s after {what}", why, effects)


def _watch_podless(
    ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, candidate: str, job: Body, effects: Effects
) -> st.LLMSelectionStatus:
    """Fail a running trial whose Job has had no pod for the pending timeout: its pod went (evicted, deleted) and
    the Job controller's replacement was refused (a ResourceQuota, a webhook). The wait counts from when the
    operator first saw the Job without a pod, kept in the status: an operator that restarts more often than the
    timeout still ends it."""
    name = job["metadata"]["name"]
    since = _waiting_since(status, candidate, "NoPod") or cluster.now
    why = f"no pod replaced its last one {_refused_pods_hint(name)}"
    status = st.mark_waiting(status, candidate, "NoPod", f"Job {name} has no pod: {why}", since=st.iso(since))
    timeout = _pending_timeout(ctx, cluster)
    if (cluster.now - since).total_seconds() <= timeout:
        return status
    return _fail_unstarted(ctx, cluster, status, candidate, job, "PendingTimeout", f"no pod for {timeout}s", why, effects)


def _waiting_since(status: st.LLMSelectionStatus, candidate: str, *reasons: str) -> datetime | None:
    """Since when the candidate has waited for one of `reasons`, as the status keeps it; None when that wait starts
    now."""
    entry = status.candidates[candidate]
    return parse_time(entry.waiting_since) if entry.reason in reasons else None


def _refused_pods_hint(job: str) -> str:
    return f"(a ResourceQuota or an admission webhook refusing pods shows in `kubectl describe job {job}`)"


def _pending_timeout(ctx: Context, cluster: Cluster) -> int:
    return cluster.spec.pending_timeout_seconds or ctx.config.pending_timeout_seconds


def _fail_unstarted(
    ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, candidate: str, job: Body, reason: str, what: str,
    why: str, effects: Effects,
) -> st.LLMSelectionStatus:
    spent = _spent(cluster, status, candidate, job["metadata"]["name"])
    status = st.record_failure(status, candidate, job["metadata"]["name"], reason, f"{what}: {why}", spent)
    effects.later(ctx.metrics.record_trial, cluster.namespace, "failed", reason, spent.seconds, spent.gpu_seconds)
    effects.later(kopf.warn, cluster.body, reason=reason, message=f"candidate {candidate} failed: {what}: {why}")
    return status


def _pending_since(
    job: Body, pods: list[Body], suspended: bool, holdup: tuple[str, str] | None, *, has_workload: bool
) -> tuple[datetime | None, str, str]:
    """Since when the trial should be running, what happened then, and what has not happened since.

    Its newest pod: from its creation while it has not ended (a replacement for an evicted pod waits from its own
    creation, not the Job's); from its end once it ended with no pod after it, since the Job controller then owes
    a replacement, which a ResourceQuota or an admission webhook may refuse for good (only the Job's FailedCreate
    events say so). Without pods, the Job. A queued Job waits as long as Kueue needs, unless Kueue refuses it or
    never takes it up (no Workload: Kueue is not installed, or does not manage Jobs in this namespace).
    """
    name = job["metadata"]["name"]
    not_started = "no pod of it has started"
    if suspended:
        inadmissible = holdup is not None and holdup[0] == "KueueInadmissible"
        since = parse_time(job["metadata"].get("creationTimestamp")) if inadmissible or not has_workload else None
        idle = not_started if has_workload else (
            "Kueue made no Workload for it (is Kueue installed, with its batch/job integration, and does it manage "
            "this namespace?), so nothing will unsuspend it")
        return since, f"Job {name} was created", idle
    if pods:
        newest = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
        pod = f"pod {newest['metadata']['name']} of Job {name}"
        if (ended := finished_at(newest)) is not None:
            return ended, f"{pod} ended", f"no pod replaced it {_refused_pods_hint(name)}"
        return parse_time(newest["metadata"].get("creationTimestamp")), f"{pod} was created", not_started
    since = parse_time((job.get("status") or {}).get("startTime") or job["metadata"].get("creationTimestamp"))
    return since, f"Job {name} was created", not_started


def find_lost(ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, effects: Effects) -> st.LLMSelectionStatus:
    """Unfinished trials whose Job is gone (deleted by hand or by a TTL, while the operator was down).

    While the runner of the gone Job still runs in a pod (graceful deletion, delayed garbage
    collection, an orphaning delete), its trial waits: a new attempt now could measure the same sizes
    as the dying pod. So it does while a pod left behind by an orphaning delete has not started yet
    (up to the pending timeout: the operator may not delete pods). Once none runs, a pod that finished
    with a result is read (salvaged); otherwise the trial is lost and the plan runs it again, resuming
    from what its attempts saved. The GPU time of its pods counts either way.
    """
    for candidate, entry in status.candidates.items():
        for trial in entry.trials:
            if trial.state not in ("Queued", "Running") or trial.job_name in cluster.jobs:
                continue
            pods = cluster.pods.get(trial.job_name, [])
            left = may_start(pods)
            if running(pods) or (left is not None and not _waited_out(ctx, cluster, left)):
                continue
            spent = _spent(cluster, status, candidate, trial.job_name)
            result = _parsed(ctx, cluster, candidate, termination_message(pods))
            if result is not None and result.status == "Succeeded":
                status = _salvaged(ctx, cluster, status, candidate, trial.job_name, result, pods[0], spent, effects)
            else:
                why = f"Job {trial.job_name} was deleted before its result was read"
                if left is not None:
                    why += (f"; its pod {left['metadata']['name']} was left behind, not started after "
                            f"{_pending_timeout(ctx, cluster)}s: delete it, or it may run alongside the next attempt")
                    effects.later(kopf.warn, cluster.body, reason="PodLeftBehind", message=f"candidate {candidate}: {why}")
                status = st.record_lost(status, candidate, trial.job_name, why, spent)
                effects.later(ctx.metrics.record_trial, cluster.namespace, "failed", "JobLost", spent.seconds,
                              spent.gpu_seconds)
    return status


def _waited_out(ctx: Context, cluster: Cluster, pod: Body) -> bool:
    created = parse_time(pod["metadata"].get("creationTimestamp"))
    return created is None or (cluster.now - created).total_seconds() > _pending_timeout(ctx, cluster)


def _salvaged(
    ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, candidate: str, job: str, result: TrialResult,
    pod: Body, spent: st.TimeSpent, effects: Effects,
) -> st.LLMSelectionStatus:
    effects.later(ctx.metrics.record_trial, cluster.namespace, "succeeded", "Succeeded", spent.seconds, spent.gpu_seconds)
    return st.record_result(status, cluster.spec, candidate, job, result, gpus_held(pod), _measured(spent))


async def launch(ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, effects: Effects) -> st.LLMSelectionStatus:
    """Create the next trials' Jobs, at once, keeping at most spec.parallelism unfinished."""
    spec = cluster.spec
    if spec.suspend:
        return status
    busy = sum(1 for e in status.candidates.values() for t in e.trials if t.state in ("Queued", "Running"))
    trials = next_trials(spec, status)[: max(spec.parallelism - busy, 0)]
    answers = await asyncio.gather(*(_submit(ctx, cluster, trial) for trial in trials), return_exceptions=True)
    for answer in answers:
        if isinstance(answer, BaseException) and not kube.transient(answer):
            raise answer  # a bug, not the cluster: nothing is written (repeated, it fails the selection)
    for trial, answer in zip(trials, answers):
        if isinstance(answer, BaseException):
            status = _create_failing(cluster, status, trial.candidate, answer, effects)
        else:
            status = _record_submission(ctx, cluster, status, trial, answer, effects)
    return status


def _create_failing(
    cluster: Cluster, status: st.LLMSelectionStatus, candidate: str, err: BaseException, effects: Effects
) -> st.LLMSelectionStatus:
    """A transient error creating a trial's Job (5xx, throttling, a broken connection): the status still records what
    this pass read, says why the candidate waits, and the error is raised once it is written, so the selection is
    retried with a growing delay. A Job created although its answer was lost is adopted by the next pass."""
    message = kube.error_message(err)
    if status.candidates[candidate].reason != "JobCreateFailing":
        effects.later(kopf.warn, cluster.body, reason="JobCreateFailing", message=f"candidate {candidate}: {message}")
    effects.later(_raise, err)
    # Were a quota wait's start dropped here, an API server failing now and then between the quota's refusals would
    # restart their pending timeout each time, and the wait would never end.
    entry = status.candidates[candidate]
    since = entry.waiting_since if entry.reason in QUOTA_WAIT else None
    return st.mark_waiting(status, candidate, "JobCreateFailing", message, since=since)


def _raise(err: BaseException) -> None:
    raise err


@dataclass(frozen=True)
class Refused:
    """The API server (or the client) refused a Job: the error, answered, not raised."""

    error: Exception


async def _submit(ctx: Context, cluster: Cluster, trial: Trial) -> str | Refused:
    """Create a trial's Job: "created", "ours" (it existed and is ours), "gone", "taken", or the refusal."""
    job = build_job(cluster.name, cluster.uid, cluster.spec, trial, ctx.config)
    kopf.adopt(job, owner=cluster.body)
    try:
        if await kube.create_job(cluster.namespace, job):
            return "created"
    except (ApiException, ValueError, TypeError) as err:
        if kube.transient(err):
            raise
        return Refused(err)
    existing = await kube.get_job(cluster.namespace, job["metadata"]["name"])
    if existing is None:
        return "gone"  # deleted between our create and read: the next reconciliation creates it
    return "ours" if owned_by(existing, cluster.uid) else "taken"


def _record_submission(
    ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, trial: Trial, answer: str | Refused,
    effects: Effects,
) -> st.LLMSelectionStatus:
    name = job_name(cluster.name, cluster.uid, trial)
    record = st.TrialRecord(job_name=name, round=trial.round, attempt=trial.attempt, sizes=list(trial.sizes), state="Queued")
    if isinstance(answer, Refused):
        return _refused(ctx, cluster, status, trial.candidate, record, answer.error, effects)
    if answer == "gone":
        return status
    status = st.mark_trial(status, trial.candidate, record)
    if answer == "taken":
        why = f"Job {name} already exists and does not belong to this selection; delete it or rename the selection"
        status = st.record_failure(status, trial.candidate, name, "JobNameTaken", why)
        effects.later(ctx.metrics.record_trial, cluster.namespace, "failed", "JobNameTaken", 0.0, 0.0)
        effects.later(kopf.warn, cluster.body, reason="JobNameTaken", message=why)
    return status


def _refused(
    ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, candidate: str, record: st.TrialRecord,
    err: Exception, effects: Effects,
) -> st.LLMSelectionStatus:
    """The API server (or the client, before sending) refused the Job: a quota waits, anything else fails."""
    message = kube.error_message(err)
    if isinstance(err, ApiException) and err.status == 403 and "exceeded quota" in message:
        # A ResourceQuota that is full now and may not be later, so it waits, as a pod waits for a node: for the
        # pending timeout at most. Any other 403 (RBAC, a LimitRange) stays.
        return _wait_for_quota(ctx, cluster, status, candidate, record, message, effects)
    return _fail_refused(ctx, cluster, status, candidate, record, "JobRejected", f"the Job was refused: {message}",
                         effects)


def _wait_for_quota(
    ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, candidate: str, record: st.TrialRecord,
    message: str, effects: Effects,
) -> st.LLMSelectionStatus:
    since = _waiting_since(status, candidate, *QUOTA_WAIT)
    if since is None:
        since = cluster.now
        effects.later(kopf.warn, cluster.body, reason="JobForbidden", message=f"candidate {candidate}: {message}")
    timeout = _pending_timeout(ctx, cluster)
    if (cluster.now - since).total_seconds() <= timeout:
        return st.mark_waiting(status, candidate, "JobForbidden", message, since=st.iso(since))
    return _fail_refused(ctx, cluster, status, candidate, record, "JobForbidden",
                         f"no Job for {timeout}s (pendingTimeoutSeconds), a ResourceQuota refused it: {message}", effects)


def _fail_refused(
    ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, candidate: str, record: st.TrialRecord,
    reason: str, message: str, effects: Effects,
) -> st.LLMSelectionStatus:
    status = st.mark_trial(status, candidate, record)
    status = st.record_failure(status, candidate, record.job_name, reason, message)
    effects.later(ctx.metrics.record_trial, cluster.namespace, "failed", reason, 0.0, 0.0)
    effects.later(kopf.warn, cluster.body, reason=reason, message=f"candidate {candidate}: {message}")
    return status


def owned_by(obj: Body, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:300]
