"""Drive one LLMSelection forward: collect finished trials, launch the next, rank at the end.

`reconcile` is idempotent and is called for every change of the selection or of one of
its Jobs; one lock per selection makes it the only writer of that selection's status.
Results are written to the status as soon as they are read, so an operator restart loses
nothing (and could re-read them from the pods anyway).
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from lensllm.selection import status as st
from lensllm.selection.plan import next_trials
from lensllm.selection.spec import LLMSelectionSpec
from lensllm.trial.result import TrialResult
from lensllm.trial.spec import validation_message
from lensllm_operator import kube
from lensllm_operator.config import OperatorConfig
from lensllm_operator.jobs import CANDIDATE_LABEL, CONTAINER, SELECTION_LABEL, build_job, gpus_of, job_name
from lensllm_operator.metrics import OperatorMetrics


@dataclass
class Context:
    """What every reconciliation shares: settings, metrics and one lock per selection."""

    config: OperatorConfig
    metrics: OperatorMetrics
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())


class InvalidSpec(Exception):
    """The selection's spec fails validation; the message names the field."""


def parse_spec(raw: dict[str, Any]) -> LLMSelectionSpec:
    try:
        return LLMSelectionSpec.model_validate(raw)
    except ValidationError as err:
        raise InvalidSpec(f"spec.{validation_message(err)}") from None


async def reconcile(ctx: Context, namespace: str, name: str) -> None:
    async with ctx.lock(namespace, name):
        body = await kube.get_selection(namespace, name)
        if body is None:
            return
        await _reconcile(ctx, body)


async def _reconcile(ctx: Context, body: dict[str, Any]) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    generation = body["metadata"].get("generation")
    spec = parse_spec(body.get("spec") or {})
    status = _current_status(body, spec, generation)
    if status.phase in ("Complete", "Failed"):
        _export(ctx, namespace, name, status)  # after a restart, finished selections keep their series
        return
    jobs = await kube.list_jobs(namespace, f"{SELECTION_LABEL}={name}")
    status = await _collect(ctx, namespace, spec, status, jobs)
    status = await _launch(ctx, body, spec, status)
    if st.all_finished(status):
        status = st.finalize(status, spec, generation, st.now_iso())
        _announce(ctx, body, status)
    if await kube.patch_selection_status(namespace, name, status.dump()):
        _export(ctx, namespace, name, status)


def _current_status(body: dict[str, Any], spec: LLMSelectionSpec, generation: int | None) -> st.LLMSelectionStatus:
    raw = body.get("status") or {}
    if raw.get("candidates"):
        return st.LLMSelectionStatus.model_validate(raw)
    return st.initial_status(spec, generation, st.now_iso())


async def _collect(
    ctx: Context, namespace: str, spec: LLMSelectionSpec, status: st.LLMSelectionStatus, jobs: list[dict[str, Any]]
) -> st.LLMSelectionStatus:
    """Fold every Job's state into the status; read the result of each newly finished one."""
    for job in jobs:
        candidate = job["metadata"]["labels"].get(CANDIDATE_LABEL)
        if candidate not in status.candidates:
            continue
        name = job["metadata"]["name"]
        known = next((t for t in status.candidates[candidate].trials if t.job_name == name), None)
        if known is not None and known.state in st.TERMINAL:
            continue
        state = job_state(job)
        sizes = [int(s) for s in job["metadata"].get("annotations", {}).get("lensllm.io/sizes", "").split(",") if s]
        record = st.TrialRecord(job_name=name, sizes=sizes, state=state if state not in st.TERMINAL else "Running")
        status = st.mark_trial(status, candidate, record)
        if state in st.TERMINAL:
            status = await _read_result(ctx, namespace, spec, status, candidate, name)
    return status


def job_state(job: dict[str, Any]) -> str:
    """Queued (suspended or not yet started), Running, Succeeded or Failed."""
    job_status = job.get("status") or {}
    for condition in job_status.get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return "Succeeded" if condition["type"] == "Complete" else "Failed"
    if (job.get("spec") or {}).get("suspend") or not job_status.get("active"):
        return "Queued"
    return "Running"


async def _read_result(
    ctx: Context, namespace: str, spec: LLMSelectionSpec, status: st.LLMSelectionStatus, candidate: str, job: str
) -> st.LLMSelectionStatus:
    pods = await kube.list_pods(namespace, f"job-name={job}")
    message = termination_message(pods)
    if message is None:
        ctx.metrics.record_trial("failed", 0.0, 0.0)
        return st.record_failure(status, candidate, job, "ResultMissing", f"Job {job} ended without a termination message")
    try:
        result = TrialResult.model_validate_json(message)
    except ValidationError:
        ctx.metrics.record_trial("failed", 0.0, 0.0)
        return st.record_failure(status, candidate, job, "ResultInvalid", f"Job {job}: {_last_line(message)}")
    gpus = gpus_of(spec, candidate)
    outcome = "succeeded" if result.status == "Succeeded" else "failed"
    ctx.metrics.record_trial(outcome, result.seconds, result.seconds * gpus)
    return st.record_result(status, spec, candidate, job, result, gpus)


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The runner container's termination message of the most recently finished pod."""
    finished = []
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if container.get("name") == CONTAINER and terminated and terminated.get("message"):
                finished.append((terminated.get("finishedAt") or "", terminated["message"]))
    return max(finished)[1] if finished else None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:300]


async def _launch(ctx: Context, body: dict[str, Any], spec: LLMSelectionSpec, status: st.LLMSelectionStatus) -> st.LLMSelectionStatus:
    """Create the next trials' Jobs, keeping at most spec.parallelism unfinished at once."""
    if spec.suspend:
        return status
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    busy = sum(1 for e in status.candidates.values() for t in e.trials if t.state not in st.TERMINAL)
    for trial in next_trials(spec, status)[: max(spec.parallelism - busy, 0)]:
        job = build_job(name, spec, trial, ctx.config)
        kopf.adopt(job, owner=body)
        await kube.create_job(namespace, job)
        record = st.TrialRecord(job_name=job_name(name, trial), round=trial.round, sizes=list(trial.sizes), state="Queued")
        status = st.mark_trial(status, trial.candidate, record)
    return status


def _announce(ctx: Context, body: dict[str, Any], status: st.LLMSelectionStatus) -> None:
    condition = status.conditions[-1]
    if status.phase == "Complete":
        kopf.info(body, reason="Complete", message=condition.message)
    else:
        kopf.warn(body, reason=condition.reason, message=condition.message)


def _export(ctx: Context, namespace: str, name: str, status: st.LLMSelectionStatus) -> None:
    ctx.metrics.set_phase(namespace, name, status.phase)
    running = sum(1 for e in status.candidates.values() for t in e.trials if t.state not in st.TERMINAL)
    ctx.metrics.set_running(namespace, name, running)
    ctx.metrics.set_costs(namespace, name, status.compute.gpu_seconds, status.compute.full_finetune_gpu_seconds)
    ctx.metrics.set_predictions(
        namespace, name, {c: e.predicted_loss for c, e in status.candidates.items() if e.predicted_loss is not None}
    )


async def reject(ctx: Context, body: dict[str, Any], message: str) -> None:
    """Mark a selection Failed/InvalidSpec and say why in an Event."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    status = st.invalid_status(message, body["metadata"].get("generation"), st.now_iso())
    await kube.patch_selection_status(namespace, name, status.dump())
    kopf.warn(body, reason="InvalidSpec", message=message)
    ctx.metrics.set_phase(namespace, name, "Failed")
