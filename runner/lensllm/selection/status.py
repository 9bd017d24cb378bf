"""`LLMSelection.status`: the models, and the pure updates that move a selection forward.

The operator and `lensllm select --local` both build the status only through these
functions, so a selection run on a laptop and one run on a cluster end in the same
document. Every update takes the current status and returns a new one; nothing here talks
to Kubernetes or runs a model.
"""

from datetime import datetime, timezone
from typing import Literal

import numpy as np
from pydantic import Field

from lensllm.errors import LensLLMError
from lensllm.science.curves import Curves
from lensllm.science.laws import NTKSpectrum
from lensllm.science.selectors import select
from lensllm.selection.spec import LLMSelectionSpec
from lensllm.trial.result import Evaluation, NTKSummary, TrialResult
from lensllm.trial.spec import WireModel

Phase = Literal["Pending", "Running", "Complete", "Failed"]
CandidateState = Literal["Pending", "Queued", "Running", "Succeeded", "Failed"]
TERMINAL: tuple[str, ...] = ("Succeeded", "Failed")


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Condition(WireModel):
    """A Kubernetes-style condition."""

    type: str = Field(description="Condition type: Complete, Failed or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="Spec generation the condition was computed from.")


class CurvePoint(WireModel):
    """A measured point of a candidate's learning curve (size 0: zero-shot)."""

    size: int = Field(description="Training examples (0 for zero-shot).")
    loss: float = Field(description="Mean cross-entropy per scored token (nats).")
    bits_per_byte: float = Field(description="Bits per byte of scored text: what the ranking fits.")
    loss_per_example: float = Field(description="Summed cross-entropy per example (nats).")


class TrialRecord(WireModel):
    """One runner Job of a candidate: which sizes it covered and how it ended."""

    job_name: str = Field(description="The batch/v1 Job.")
    round: int = Field(default=0, description="Selection round the trial belongs to.")
    sizes: list[int] = Field(description="Subset sizes the trial fine-tuned on.")
    state: CandidateState = Field(description="Queued, Running, Succeeded or Failed.")
    seconds: float | None = Field(default=None, description="Wall time of the trial.")


class CandidateStatus(WireModel):
    """Everything known about one candidate."""

    state: CandidateState = Field(default="Pending", description="Pending, Queued, Running, Succeeded or Failed.")
    model: str = Field(description="Model id or path.")
    trials: list[TrialRecord] = Field(default_factory=list, description="Trial Jobs, oldest first.")
    zero_shot: CurvePoint | None = Field(default=None, description="Test loss before fine-tuning.")
    points: list[CurvePoint] = Field(default_factory=list, description="Observed learning-curve points.")
    ntk: NTKSummary | None = Field(default=None, description="Empirical NTK summary at the pre-trained weights.")
    fit: dict[str, float] | None = Field(default=None, description="Fitted parameters of the ranking method.")
    predicted_loss: float | None = Field(default=None, description="Predicted bits per byte at targetSize.")
    rank: int | None = Field(default=None, description="1 = predicted best.")
    flops: float = Field(default=0.0, description="Estimated FLOPs spent on this candidate.")
    gpu_seconds: float = Field(default=0.0, description="GPU seconds spent (wall time x GPUs).")
    full_finetune_flops: float | None = Field(default=None, description="Estimated FLOPs of fine-tuning on targetSize examples.")
    full_finetune_gpu_seconds: float | None = Field(default=None, description="Estimated GPU seconds of fine-tuning on targetSize examples.")
    device: str | None = Field(default=None, description="Device the trial ran on.")
    parameters: int | None = Field(default=None, description="Parameter count of the model.")
    reason: str | None = Field(default=None, description="Failure reason.")
    message: str | None = Field(default=None, description="Failure message.")


class RankEntry(WireModel):
    candidate: str = Field(description="Candidate name.")
    predicted_loss: float = Field(description="Predicted bits per byte at targetSize.")


class Compute(WireModel):
    """What the selection spent against what fully fine-tuning every candidate would cost."""

    flops: float = Field(default=0.0, description="Estimated FLOPs spent by all trials.")
    gpu_seconds: float = Field(default=0.0, description="GPU seconds spent by all trials.")
    full_finetune_flops: float | None = Field(default=None, description="Estimated FLOPs to fine-tune every candidate on targetSize.")
    full_finetune_gpu_seconds: float | None = Field(default=None, description="Estimated GPU seconds for the same.")
    fraction_of_full: float | None = Field(default=None, description="flops / fullFinetuneFlops.")


class LLMSelectionStatus(WireModel):
    observed_generation: int | None = Field(default=None, description="Spec generation last acted on.")
    phase: Phase = Field(default="Pending", description="Pending, Running, Complete or Failed.")
    conditions: list[Condition] = Field(default_factory=list, description="Complete, Failed, Degraded.")
    candidates: dict[str, CandidateStatus] = Field(default_factory=dict, description="Per-candidate status by name.")
    ranking: list[RankEntry] = Field(default_factory=list, description="Succeeded candidates, predicted best first.")
    best: str | None = Field(default=None, description="The predicted best candidate.")
    progress: str = Field(default="0/0", description="Candidates finished / total.")
    method: str | None = Field(default=None, description="Selector used for the ranking.")
    compute: Compute = Field(default_factory=Compute, description="Compute spent and the full fine-tuning estimate.")
    start_time: str | None = Field(default=None, description="When work started.")
    completion_time: str | None = Field(default=None, description="When the selection completed or failed.")

    def dump(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def initial_status(spec: LLMSelectionSpec, generation: int | None, now: str) -> LLMSelectionStatus:
    return LLMSelectionStatus(
        observed_generation=generation,
        phase="Running",
        candidates={c.name: CandidateStatus(model=c.model) for c in spec.candidates},
        progress=f"0/{len(spec.candidates)}",
        method=spec.method,
        start_time=now,
    )


def invalid_status(message: str, generation: int | None, now: str) -> LLMSelectionStatus:
    return LLMSelectionStatus(
        observed_generation=generation,
        phase="Failed",
        conditions=[_condition("Failed", "InvalidSpec", message, generation, now)],
        completion_time=now,
    )


def _condition(kind: str, reason: str, message: str, generation: int | None, now: str) -> Condition:
    return Condition(
        type=kind, status="True", reason=reason, message=message, last_transition_time=now, observed_generation=generation
    )


def _point(size: int, evaluation: Evaluation) -> CurvePoint:
    return CurvePoint(
        size=size, loss=evaluation.loss, bits_per_byte=evaluation.bits_per_byte, loss_per_example=evaluation.loss_per_example
    )


def mark_trial(status: LLMSelectionStatus, candidate: str, record: TrialRecord) -> LLMSelectionStatus:
    """Record that a trial Job exists (queued or running) for a candidate."""
    new = status.model_copy(deep=True)
    entry = new.candidates[candidate]
    entry.trials = [t for t in entry.trials if t.job_name != record.job_name] + [record]
    if entry.state not in TERMINAL:
        entry.state = record.state
    return new


def record_result(
    status: LLMSelectionStatus, spec: LLMSelectionSpec, candidate: str, job_name: str, result: TrialResult, gpus: int
) -> LLMSelectionStatus:
    """Fold a finished trial's result into the candidate's status."""
    new = status.model_copy(deep=True)
    entry = new.candidates[candidate]
    ok = result.status == "Succeeded"
    for trial in entry.trials:
        if trial.job_name == job_name:
            trial.state, trial.seconds = ("Succeeded" if ok else "Failed"), result.seconds
    known = {p.size for p in entry.points}
    entry.points = sorted(entry.points + [_point(p.size, p.test) for p in result.points if p.size not in known], key=lambda p: p.size)
    entry.zero_shot = _point(0, result.zero_shot) if result.zero_shot else entry.zero_shot
    entry.ntk = result.ntk or entry.ntk
    entry.flops += _trial_flops(result)
    entry.gpu_seconds += result.seconds * gpus  # GPUs held for the whole trial; none on CPU
    if result.resources:
        entry.device, entry.parameters = result.resources.device, result.resources.parameters
    entry.full_finetune_flops, entry.full_finetune_gpu_seconds = _full_finetune_estimate(result, spec, gpus)
    entry.state = "Succeeded" if ok else "Failed"
    entry.reason, entry.message = (None, None) if ok else (result.reason or "TrialFailed", result.message)
    return _with_totals(new)


def record_failure(status: LLMSelectionStatus, candidate: str, job_name: str, reason: str, message: str) -> LLMSelectionStatus:
    """A trial ended without a usable result (no or malformed termination message, Job failure)."""
    new = status.model_copy(deep=True)
    entry = new.candidates[candidate]
    for trial in entry.trials:
        if trial.job_name == job_name:
            trial.state = "Failed"
    entry.state, entry.reason, entry.message = "Failed", reason, message
    return _with_totals(new)


def _trial_flops(result: TrialResult) -> float:
    evals = [p.test.flops for p in result.points] + ([result.zero_shot.flops] if result.zero_shot else [])
    return sum(p.train.flops for p in result.points if p.train) + sum(evals)


def _full_finetune_estimate(result: TrialResult, spec: LLMSelectionSpec, gpus: int) -> tuple[float | None, float | None]:
    """Scale the cost per training example of the largest subset to targetSize examples."""
    trained = [p for p in result.points if p.train is not None]
    if not trained:
        return None, None
    largest = trained[-1]
    scale = spec.budget.target_size / largest.size
    return largest.train.flops * scale, largest.train.seconds * scale * gpus


def _with_totals(status: LLMSelectionStatus) -> LLMSelectionStatus:
    entries = status.candidates.values()
    done = sum(1 for e in entries if e.state in TERMINAL)
    status.progress = f"{done}/{len(status.candidates)}"
    full = [e.full_finetune_flops for e in entries]
    full_gpu = [e.full_finetune_gpu_seconds for e in entries]
    flops = sum(e.flops for e in entries)
    status.compute = Compute(
        flops=flops,
        gpu_seconds=sum(e.gpu_seconds for e in entries),
        full_finetune_flops=_mean_scaled_total(full),
        full_finetune_gpu_seconds=_mean_scaled_total(full_gpu),
    )
    if status.compute.full_finetune_flops:
        status.compute.fraction_of_full = flops / status.compute.full_finetune_flops
    return status


def _mean_scaled_total(values: list[float | None]) -> float | None:
    """Total over candidates, estimating the unknown ones by the mean of the known ones."""
    known = [v for v in values if v is not None]
    return None if not known else float(np.mean(known) * len(values))


def all_finished(status: LLMSelectionStatus) -> bool:
    return all(e.state in TERMINAL for e in status.candidates.values())


def finalize(status: LLMSelectionStatus, spec: LLMSelectionSpec, generation: int | None, now: str) -> LLMSelectionStatus:
    """When every candidate has finished or failed: rank, set best and the conditions."""
    new = _with_totals(status.model_copy(deep=True))
    failed = sorted(name for name, e in new.candidates.items() if e.state == "Failed")
    if len(failed) > spec.max_failed_candidates:
        detail = "; ".join(f"{n}: {new.candidates[n].reason}" for n in failed)
        message = f"{len(failed)} candidates failed (maxFailedCandidates {spec.max_failed_candidates}): {detail}"
        return _ended(new, "Failed", _condition("Failed", "MaxFailedCandidatesReached", message, generation, now), now)
    try:
        new = rank(new, spec)
    except LensLLMError as err:
        return _ended(new, "Failed", _condition("Failed", "RankingFailed", str(err), generation, now), now)
    conditions = []
    if failed:
        conditions.append(_condition("Degraded", "CandidatesFailed", f"failed: {', '.join(failed)}", generation, now))
    message = f"best: {new.best} (predicted {new.ranking[0].predicted_loss:.4f} bits/byte at {spec.budget.target_size})"
    new.conditions = conditions
    return _ended(new, "Complete", _condition("Complete", "Ranked", message, generation, now), now)


def _ended(status: LLMSelectionStatus, phase: Phase, condition: Condition, now: str) -> LLMSelectionStatus:
    status.phase = phase
    status.conditions = [c for c in status.conditions if c.type != condition.type] + [condition]
    status.completion_time = now
    return status


def selection_curves(status: LLMSelectionStatus) -> tuple[Curves, list[NTKSpectrum | None]]:
    """The succeeded candidates' curves on their common sizes, with their NTK spectra.

    Laws are fitted to bits per byte: per-token losses of different tokenizers are not
    comparable, bits per byte of the same text are.
    """
    names = [n for n, e in status.candidates.items() if e.state == "Succeeded"]
    if not names:
        raise LensLLMError("no candidate succeeded, nothing to rank")
    common = sorted(set.intersection(*({p.size for p in status.candidates[n].points} for n in names)))
    losses = [[next(p.bits_per_byte for p in status.candidates[n].points if p.size == s) for s in common] for n in names]
    zero = [status.candidates[n].zero_shot for n in names]
    params = [status.candidates[n].parameters for n in names]
    curves = Curves(
        models=tuple(names),
        sizes=np.array(common, dtype=float),
        losses=np.array(losses),
        zero_shot=np.array([z.bits_per_byte for z in zero]) if all(zero) else None,
        params=np.array(params, dtype=float) if None not in params else None,
    )
    return curves, [_spectrum(status.candidates[n].ntk) for n in names]


def _spectrum(ntk: NTKSummary | None) -> NTKSpectrum | None:
    if ntk is None or not ntk.eigenvalues:
        return None
    return NTKSpectrum(eigenvalues=np.array(ntk.eigenvalues), projections_sq=np.array(ntk.projections_sq), eta=ntk.eta)


def rank(status: LLMSelectionStatus, spec: LLMSelectionSpec) -> LLMSelectionStatus:
    """Rank the succeeded candidates with the spec's selector."""
    curves, spectra = selection_curves(status)
    selection = select(spec.method, curves, spec.budget.target_size, ntk=spectra)
    scores = selection.predicted_loss if selection.predicted_loss is not None else selection.scores
    new = status.model_copy(deep=True)
    for i, name in enumerate(curves.models):
        entry = new.candidates[name]
        entry.rank = int(selection.ranks[i])
        entry.predicted_loss = None if selection.predicted_loss is None else float(selection.predicted_loss[i])
        entry.fit = selection.fits[i] if selection.fits else None
    new.ranking = [RankEntry(candidate=curves.models[i], predicted_loss=float(scores[i])) for i in selection.order]
    new.best = new.ranking[0].candidate
    new.method = spec.method
    return new
