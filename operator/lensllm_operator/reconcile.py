"""Drive one LLMSelection forward: collect finished trials, launch the next, rank at the end.

`reconcile` is level-triggered and idempotent: every event of the selection or of its Jobs,
and a periodic resync, call it; it re-derives the status from the selection, its Jobs and
their pods, so a lost event, a failed write or a vanished Job heals on the next call. One
lock per selection makes it the only writer of that status, refusals included. A race's
decision after a round is a pure function of the status (`plan.advance`), so a pass whose
write failed makes the same decision again.

Failures are classified: a transient API error (throttling, 5xx, a broken connection) raises
`kopf.TemporaryError` with a growing delay; a spec the operator cannot run ends the selection
as Failed with the reason; an unexpected error that repeats ends it as Failed too, instead
of retrying forever.
"""

from collections.abc import Callable
from datetime import datetime, timezone
from time import monotonic
from typing import Any

import kopf
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from lensllm.errors import LensLLMError
from lensllm.selection import status as st
from lensllm.selection.plan import advance, round_ended
from lensllm.selection.spec import EARLIER_DEFAULTS, IMMUTABLE_FIELDS, LLMSelectionSpec, with_defaults
from lensllm.trial.spec import validation_message
from lensllm_operator import kube, policy
from lensllm_operator.context import Context, Effects
from lensllm_operator.jobs import CANDIDATE_LABEL, SELECTION_LABEL
from lensllm_operator.names import label_value
from lensllm_operator.pods import time_spent
from lensllm_operator.trials import Cluster, collect, find_lost, job_state, launch, owned_by

# A status write refused with 409 is re-read and retried at once, this many times.
CONFLICT_RETRIES = 3
# Unexpected errors in a row before a selection is failed rather than retried again.
MAX_UNEXPECTED_ERRORS = 5
MAX_BACKOFF_SECONDS = 300.0

Body = dict[str, Any]


class InvalidSpec(Exception):
    """The selection's spec fails validation or the operator's policy; the message names the field."""


class SelectionGone(Exception):
    """The selection was deleted while a pass worked on it: what the pass decided has no one to go to."""


def parse_spec(raw: Any, started: bool = False) -> LLMSelectionSpec:
    """The spec, validated strictly: what the CRD's types accept, nothing coerced (local mode does the same)."""
    if not isinstance(raw, dict):
        raise InvalidSpec(f"spec: expected an object, got {type(raw).__name__}")
    try:
        return LLMSelectionSpec.from_wire(raw, started=started)
    except ValidationError as err:
        raise InvalidSpec(f"spec.{validation_message(err)}") from None


def started_spec(raw: Any, status: Body) -> LLMSelectionSpec:
    """The spec the selection's work started from: a field it leaves out keeps the default of the release
    that started it (EARLIER_DEFAULTS), the one whose digest the status holds; today's when none matches,
    which the caller then refuses as a changed spec."""
    started = bool(status.get("candidates"))
    spec = parse_spec(raw, started)
    digest = status.get("specDigest")
    if not started or spec.digest() == digest:
        return spec
    # A status without a digest was written by a release older than every change of default.
    eras = reversed(EARLIER_DEFAULTS) if digest else EARLIER_DEFAULTS[:1]
    for defaults in eras:
        earlier = _started_or_none(with_defaults(raw, defaults))
        if earlier is not None and (digest is None or earlier.digest() == digest):
            return earlier
    return spec


def _started_or_none(raw: Body) -> LLMSelectionSpec | None:
    try:
        return parse_spec(raw, started=True)
    except InvalidSpec:  # a value today's defaults allow and that release's did not
        return None


async def reconcile(ctx: Context, namespace: str, name: str) -> None:
    """Bring the selection's status up to date with what exists; the only writer of that status.

    Calls coalesce: while one call waits for the selection's lock, others return at once, since
    the waiting one reads everything afresh once it runs (ten Jobs finishing at once cost one pass).
    """
    key = (namespace, name)
    if key in ctx.waiting:
        return
    lock = ctx.lock(namespace, name)
    ctx.waiting.add(key)
    try:
        await lock.acquire()
    finally:
        ctx.waiting.discard(key)  # also when cancelled while waiting: later calls must not return thinking one waits
    try:
        await _reconcile_locked(ctx, namespace, name)
    finally:
        lock.release()


async def _reconcile_locked(ctx: Context, namespace: str, name: str) -> None:
    key = (namespace, name)
    try:
        for _ in range(CONFLICT_RETRIES):
            body = await kube.get_selection(namespace, name)
            if body is None or await _reconcile(ctx, body):
                break
    except SelectionGone:
        return  # deleted during the pass: its DELETED event dropped its series, nothing may bring them back
    except Exception as err:
        kind = "transient" if kube.transient(err) else "unexpected"
        ctx.metrics.reconcile_errors.labels(kind=kind).inc()
        if kind == "transient":
            delay = _retry_delay(ctx, key)
            raise kopf.TemporaryError(f"{kube.error_message(err)}; retrying in {delay:g}s", delay=delay) from err
        streak = ctx.failures[(*key, kind)] = ctx.failures.get((*key, kind), 0) + 1
        if streak >= MAX_UNEXPECTED_ERRORS:
            await _give_up(ctx, namespace, name, err)
        raise
    ctx.forget_errors(namespace, name)


def _retry_delay(ctx: Context, key: tuple[str, str]) -> float:
    """Seconds until the selection's next try after a transient error: 2, 4, 8, ... up to MAX_BACKOFF_SECONDS.

    Only a failed first try or a failed retry doubles the delay. Job events call too, and a burst of them in one
    outage would otherwise double it once per event: three failures within milliseconds took a race from a 2 s to
    an 8 s wait, and the next two retries to 32 s, with no trial running meanwhile (the chaos suite's seed 10).
    """
    now = monotonic()
    due = ctx.retry_due.get(key, 0.0)
    if now < due:
        return due - now
    streak = ctx.failures[(*key, "transient")] = ctx.failures.get((*key, "transient"), 0) + 1
    delay = min(2.0**streak, MAX_BACKOFF_SECONDS)
    ctx.retry_due[key] = now + delay
    return delay


async def _reconcile(ctx: Context, body: Body) -> bool:
    """One pass; False when the status write met a conflict (409) and the pass should be redone."""
    raw = body.get("status") or {}
    if raw.get("phase") in st.TERMINAL_PHASES:
        await _stop_leftover_jobs(ctx, body)
        _export(ctx, body, st.LLMSelectionStatus.model_validate(raw), 0.0)  # after a restart, keep their series
        return True
    generation = body["metadata"].get("generation")
    effects = Effects()
    try:
        spec = started_spec(body.get("spec"), raw)
        violation = policy.violation(spec, ctx.config)
        if violation:
            raise InvalidSpec(violation)
    except InvalidSpec as err:
        return await _end(ctx, body, raw, "InvalidSpec", str(err), effects)
    status = _current_status(raw, spec, generation)
    if status.spec_digest != spec.digest():
        message = (f"an immutable field ({', '.join(IMMUTABLE_FIELDS)}) changed after the selection started; "
                   "results would not be comparable: create a new LLMSelection instead")
        return await _end(ctx, body, raw, "SpecChanged", message, effects)
    cluster = await _observe(body, spec, status)
    try:
        status = await collect(ctx, cluster, status, effects)
        status = find_lost(ctx, cluster, status, effects)
        deciding_round = round_ended(spec, status)
        if deciding_round or st.all_finished(status):
            # A decision is due: a race's round (decided before the next is launched) or the ranking. Its fits
            # and bootstrap take up to a second or more (ten candidates, five sizes: 0.65 s on one core), on
            # the science thread, off the event loop, which keeps serving watches, the liveness probe and
            # other selections. There it waits behind other selections' decisions (a hundred races ending
            # round 0 together queue for a minute), so the results it decides on are written first, and what
            # reading them entails (metrics, Events) happens now: the passes after this one will not read them again.
            if not await _write(body, raw, status):
                return False
            raw = status.dump()
            await effects.run()
            effects = Effects()
        if deciding_round:
            status = await _decide(ctx, "round", advance, spec, status)
        status = await launch(ctx, cluster, status, effects)
    except LensLLMError as err:  # a status and spec that no longer fit together
        return await _end(ctx, body, raw, "InvalidSpec", str(err), effects)
    if st.all_finished(status):
        status = await _decide(ctx, "rank", st.finalize, status, spec, generation, st.now_iso())
        effects.later(announce, body, status)
    status.observed_generation = generation
    if not await _write(body, raw, status):
        return False
    _stop_abandoned(cluster, status, effects)
    _expire_read_jobs(ctx, cluster, status, effects)
    await effects.run()
    _export(ctx, body, status, _running_gpu_seconds(cluster, status))
    return True


async def _decide(ctx: Context, task: str, fn: Callable[..., st.LLMSelectionStatus], *args: Any) -> st.LLMSelectionStatus:
    """`fn(*args)` on the science thread, timed for lensllm_decision_seconds (waiting for the thread included)."""
    started = monotonic()
    status = await ctx.compute(fn, *args)
    ctx.metrics.decision_seconds.labels(task=task).observe(monotonic() - started)
    return status


def _current_status(raw: Body, spec: LLMSelectionSpec, generation: int | None) -> st.LLMSelectionStatus:
    if raw.get("candidates"):
        status = st.LLMSelectionStatus.model_validate(raw)
        # Written by an operator that kept no digest: the spec it worked from is the one here now.
        return status if status.spec_digest else status.model_copy(update={"spec_digest": spec.digest()})
    return st.initial_status(spec, generation, st.now_iso())


async def _observe(body: Body, spec: LLMSelectionSpec, status: st.LLMSelectionStatus) -> Cluster:
    """List the selection's Jobs (those it owns, not being deleted), their pods, and Kueue's Workloads."""
    namespace, uid = body["metadata"]["namespace"], body["metadata"]["uid"]
    selector = f"{SELECTION_LABEL}={label_value(body['metadata']['name'])}"
    jobs = {
        job["metadata"]["name"]: job
        for job in await kube.list_jobs(namespace, selector)
        if owned_by(job, uid) and not job["metadata"].get("deletionTimestamp")
    }
    read = {t.job_name for e in status.candidates.values() for t in e.trials if t.state in (*st.TERMINAL, "Lost")}
    recorded = {t.job_name for e in status.candidates.values() for t in e.trials}
    pods: dict[str, list[Body]] = {}
    if any(name not in read for name in set(jobs) | recorded):  # an idle selection, all read, lists no pods
        for pod in await kube.list_pods(namespace, selector):
            pods.setdefault(pod["metadata"].get("labels", {}).get("job-name", ""), []).append(pod)
    workloads: dict[str, list[Body]] | None = {}
    queued = [j["metadata"]["uid"] for j in jobs.values() if (j.get("spec") or {}).get("suspend") and job_state(j) not in st.TERMINAL]
    if spec.queue and queued:
        found = await kube.list_workloads(namespace, f"kueue.x-k8s.io/job-uid in ({','.join(queued)})")
        workloads = None if found is None else _by_job_uid(found)
    return Cluster(body=body, spec=spec, jobs=jobs, pods=pods, workloads=workloads, now=datetime.now(timezone.utc))


def _by_job_uid(workloads: list[Body]) -> dict[str, list[Body]]:
    grouped: dict[str, list[Body]] = {}
    for workload in workloads:
        grouped.setdefault(workload["metadata"].get("labels", {}).get("kueue.x-k8s.io/job-uid", ""), []).append(workload)
    return grouped


async def _write(body: Body, raw: Body, status: st.LLMSelectionStatus) -> bool:
    """Write the status (a merge patch that also removes what the new status no longer has)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    patch = merge_patch(raw, status.dump())
    if not patch:
        return True  # nothing changed: an idle selection costs no write
    try:
        written = await kube.patch_selection_status(namespace, name, body["metadata"]["uid"], patch)
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    if not written:
        raise SelectionGone(f"{namespace}/{name}")
    return True


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: keys `new` lacks become null."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old or old[key] != value:
            patch[key] = merge_patch(old.get(key), value)
    return patch


async def _end(ctx: Context, body: Body, raw: Body, reason: str, message: str, effects: Effects) -> bool:
    """Fail the whole selection: the status says why, an Event too, and its unfinished Jobs stop."""
    current = st.LLMSelectionStatus.model_validate(raw) if raw.get("phase") else st.LLMSelectionStatus()
    status = st.fail(current, reason, message, body["metadata"].get("generation"), st.now_iso())
    if not await _write(body, raw, status):
        return False
    kopf.warn(body, reason=reason, message=message)
    await _delete_unfinished_jobs(body)
    await effects.run()
    _export(ctx, body, status, 0.0)
    return True


async def _stop_leftover_jobs(ctx: Context, body: Body) -> None:
    """Delete the unfinished Jobs of an ended selection, once per operator process.

    The pass that ended it deletes them after writing the terminal status; if it died there, or a delete failed,
    no later pass would (ended selections are not reconciled further), and a queued Job could start hours
    later. The first pass over an ended selection since start-up (the resume of every selection) looks again.
    """
    key, uid = (body["metadata"]["namespace"], body["metadata"]["name"]), body["metadata"]["uid"]
    if ctx.ended_and_swept.get(key) != uid:
        await _delete_unfinished_jobs(body)
        ctx.ended_and_swept[key] = uid


async def _delete_unfinished_jobs(body: Body) -> None:
    namespace, name, uid = body["metadata"]["namespace"], body["metadata"]["name"], body["metadata"]["uid"]
    for job in await kube.list_jobs(namespace, f"{SELECTION_LABEL}={label_value(name)}"):
        if owned_by(job, uid) and job_state(job) not in st.TERMINAL and not job["metadata"].get("deletionTimestamp"):
            await kube.delete_job(namespace, job["metadata"]["name"])


async def _give_up(ctx: Context, namespace: str, name: str, err: Exception) -> None:
    """After repeated unexpected errors, end the selection with the error rather than retry forever."""
    body = await kube.get_selection(namespace, name)
    if body is not None:
        message = f"reconciliation failed {MAX_UNEXPECTED_ERRORS} times in a row: {type(err).__name__}: {err}"
        try:
            await _end(ctx, body, body.get("status") or {}, "ReconcileFailed", message[:1000], Effects())
        except SelectionGone:
            return
        ctx.failures.pop((namespace, name, "unexpected"), None)


def _stop_abandoned(cluster: Cluster, status: st.LLMSelectionStatus, effects: Effects) -> None:
    """Delete unfinished Jobs whose candidate has already failed (it never started in time, or the selection ended)."""
    for name, job in cluster.jobs.items():
        if job_state(job) in st.TERMINAL:
            continue
        candidate = (job["metadata"].get("labels") or {}).get(CANDIDATE_LABEL)
        entry = status.candidates.get(candidate)
        if status.phase == "Failed" or (entry is not None and entry.state == "Failed"):
            effects.later(kube.delete_job, cluster.namespace, name)


def _expire_read_jobs(ctx: Context, cluster: Cluster, status: st.LLMSelectionStatus, effects: Effects) -> None:
    """Hand finished Jobs whose result is recorded to the TTL controller (never before: see jobs.py)."""
    ttl = ctx.config.job_ttl_seconds
    if ttl is None:
        return
    recorded = {t.job_name for e in status.candidates.values() for t in e.trials if t.state in st.TERMINAL}
    for name, job in cluster.jobs.items():
        if name in recorded and job_state(job) in st.TERMINAL and job["spec"].get("ttlSecondsAfterFinished") != ttl:
            effects.later(kube.set_job_ttl, cluster.namespace, name, ttl)


def _running_gpu_seconds(cluster: Cluster, status: st.LLMSelectionStatus) -> float:
    """GPU time of the unfinished trials so far, their evicted pods' included."""
    unfinished = [t for e in status.candidates.values() for t in e.trials if t.state in ("Queued", "Running")]
    return sum(time_spent(t.pods or [], cluster.pods.get(t.job_name, []), cluster.now).gpu_seconds for t in unfinished)


def announce(body: Body, status: st.LLMSelectionStatus) -> None:
    """An Event for the terminal condition, and a warning for each caveat before it (failed candidates, laws
    that disagree on the best)."""
    *caveats, condition = status.conditions
    for caveat in caveats:
        kopf.warn(body, reason=caveat.reason, message=caveat.message)
    if status.phase == "Complete":
        kopf.info(body, reason="Complete", message=condition.message)
    else:
        kopf.warn(body, reason=condition.reason, message=condition.message)


def _export(ctx: Context, body: Body, status: st.LLMSelectionStatus, running_gpu_seconds: float) -> None:
    """The selection's metric series; none for one deleted while this pass awaited (its series are gone for good)."""
    if ctx.was_deleted(body):
        return
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    ctx.metrics.set_phase(namespace, name, status.phase)
    trials = [t for e in status.candidates.values() for t in e.trials]
    ctx.metrics.set_trials(namespace, name, sum(t.state == "Queued" for t in trials), sum(t.state == "Running" for t in trials))
    spent = status.compute.gpu_seconds + running_gpu_seconds
    ctx.metrics.set_costs(namespace, name, spent, status.compute.full_finetune_gpu_seconds)
    ctx.metrics.set_predictions(
        namespace, name, {c: e.predicted_loss for c, e in status.candidates.items() if e.predicted_loss is not None}
    )
    target = ((body.get("spec") or {}).get("budget") or {}).get("targetSize")
    if isinstance(target, int) and target > 0:  # absent only from a spec refused as invalid
        ctx.metrics.set_progress(namespace, name, st.compute_fraction(status, target), st.rounds_started(status))
    ctx.metrics.set_laws_agree(namespace, name, st.laws_agree(status))

