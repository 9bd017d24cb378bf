"""`LLMSelection.status`: the models, and the pure updates that move a selection forward.

The operator and `lensllm select --local` both build the status only through these
functions, so a selection run on a laptop and one run on a cluster end in the same
document. Every update takes the current status and returns a new one; nothing here talks
to Kubernetes or runs a model. A race (spec.strategy race) adds `race`, one record per
decided round, and each candidate's P(best), interval and elimination.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, FiniteFloat

from lensllm.errors import LensLLMError
from lensllm.science import racing
from lensllm.science.curves import FROM_SCRATCH_RATIO, Curves
from lensllm.science.laws import NTKSpectrum
from lensllm.science.selectors import select
from lensllm.selection.spec import LLMSelectionSpec
from lensllm.trial.failures import DATASET_FAILURES
from lensllm.trial.result import Evaluation, NTKSummary, TrialResult
from lensllm.trial.spec import WireModel

Phase = Literal["Pending", "Running", "Complete", "Failed"]
CandidateState = Literal["Pending", "Queued", "Running", "Succeeded", "Failed"]
# A trial is Lost when its Job vanished before its result was read; the plan runs it again.
TrialState = Literal["Queued", "Running", "Succeeded", "Failed", "Lost"]
TERMINAL: tuple[str, ...] = ("Succeeded", "Failed")
TERMINAL_PHASES: tuple[str, ...] = ("Complete", "Failed")
# Jobs per trial: the first and the re-runs of Jobs that vanished (each attempt resumes what was saved).
MAX_ATTEMPTS = 3
# A race's rounds are bounded (RaceSettings.max_rounds and a settling round), so is its record in the status.
MAX_ROUNDS = racing.most_rounds(racing.RaceSettings())


class StatusModel(WireModel):
    """A part of the status. Unlike a spec, it ignores keys it does not know: after a rollback, the status a newer
    operator wrote must load here, or every running selection would fail (this version's next write drops them)."""

    model_config = ConfigDict(extra="ignore")


def now_iso() -> str:
    return iso(datetime.now(timezone.utc).replace(microsecond=0))


def iso(moment: datetime) -> str:
    """A UTC time as the API server writes it."""
    return moment.isoformat().replace("+00:00", "Z")


class Condition(StatusModel):
    """A Kubernetes-style condition."""

    type: str = Field(description="Condition type: Complete, Failed, Degraded or LawsAgree (races).")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="Spec generation the condition was computed from.")


class CurvePoint(StatusModel):
    """A measured point of a candidate's learning curve (size 0: zero-shot)."""

    size: int = Field(description="Training examples (0 for zero-shot).")
    loss: FiniteFloat = Field(description="Mean cross-entropy per scored token (nats).")
    bits_per_byte: FiniteFloat = Field(description="Bits per byte of scored text: what the ranking fits.")
    loss_per_example: FiniteFloat = Field(description="Summed cross-entropy per example (nats).")
    uniform_bits_per_byte: FiniteFloat | None = Field(
        default=None,
        description="Zero-shot point: what a uniform guess over the model's vocabulary scores on the same text. A "
        "zero-shot loss this high means the model has nothing of the task's language to transfer.",
    )


# Entries a trial's record of its pods keeps before the gone ones are folded: evictions do not count against a Job's
# backoffLimit, so a trial preempted over and over would otherwise grow its selection's status without bound.
MAX_POD_RUNS = 8


class PodRun(StatusModel):
    """A pod of an unfinished trial whose runner started: kept so that its GPU time counts once the pod is gone."""

    name: str = Field(description="The pod.")
    gpus: int = Field(ge=0, description="GPUs it held.")
    started_at: str = Field(description="When its runner started.")
    ended_at: str | None = Field(
        default=None, description="When its runner ended; for a pod deleted first, when its replacement was created."
    )


@dataclass(frozen=True)
class TimeSpent:
    """What a trial's pods ran: seconds summed over pods, and the same weighted by each pod's GPUs."""

    seconds: float = 0.0
    gpu_seconds: float = 0.0


NO_TIME = TimeSpent()


class TrialRecord(StatusModel):
    """One runner Job of a candidate: which sizes it covered and how it ended."""

    job_name: str = Field(description="The batch/v1 Job.")
    round: int = Field(default=0, description="Selection round the trial belongs to.")
    attempt: int = Field(default=0, description="0 for the trial's first Job; +1 for each Job that replaced a lost one.")
    sizes: list[int] = Field(description="Subset sizes the trial fine-tuned on.")
    state: TrialState = Field(description="Queued, Running, Succeeded, Failed, or Lost (its Job vanished).")
    failure: str | None = Field(
        default=None,
        description="Why the trial failed, for a trial of the round that settles a race's disagreeing laws: its "
        "candidate does not fail with it (its earlier sizes still rank it).",
    )
    seconds: float | None = Field(default=None, description="Wall time of the trial (its pods', summed).")
    pods: list[PodRun] | None = Field(
        default=None, description="While the trial is unfinished: its pods that ran (an evicted pod's time still counts); "
        f"past {MAX_POD_RUNS}, the gone ones are folded into one entry per GPU count that holds their summed time."
    )


class CandidateStatus(StatusModel):
    """Everything known about one candidate."""

    state: CandidateState = Field(default="Pending", description="Pending, Queued, Running, Succeeded or Failed.")
    model: str = Field(description="Model id or path.")
    trials: list[TrialRecord] = Field(default_factory=list, description="Trial Jobs, oldest first.")
    zero_shot: CurvePoint | None = Field(default=None, description="Test loss before fine-tuning.")
    points: list[CurvePoint] = Field(default_factory=list, description="Observed learning-curve points.")
    ntk: NTKSummary | None = Field(default=None, description="Empirical NTK summary at the pre-trained weights.")
    train_examples: int | None = Field(
        default=None, description="Rows of the training split, as the candidate's trial counted them."
    )
    test_rows_in_train: int | None = Field(
        default=None,
        description="Rows of the test split that are rows of the training split too; left out of the test sample.",
    )
    fine_tuned_model: str | None = Field(
        default=None,
        description="Where the model its trial fine-tuned on targetSize (a race's settling round) was saved: "
        "pvc://<claim>/<path> on the work volume, a folder in local mode. The weights, or a LoRA adapter, and the "
        "tokenizer, as save_pretrained writes them.",
    )
    fit: dict[str, float] | None = Field(default=None, description="Fitted parameters of the ranking method.")
    predicted_loss: FiniteFloat | None = Field(default=None, description="Predicted bits per byte at targetSize.")
    rank: int | None = Field(default=None, description="1 = predicted best.")
    flops: float = Field(default=0.0, description="Estimated FLOPs spent on this candidate.")
    gpu_seconds: float = Field(default=0.0, description="GPU seconds spent (wall time x GPUs).")
    full_finetune_flops: float | None = Field(default=None, description="Estimated FLOPs of fine-tuning on targetSize examples.")
    full_finetune_gpu_seconds: float | None = Field(default=None, description="Estimated GPU seconds of fine-tuning on targetSize examples.")
    device: str | None = Field(default=None, description="Device the trial ran on.")
    parameters: int | None = Field(default=None, description="Parameter count of the model.")
    reason: str | None = Field(
        default=None, description="Why it failed, or why its trial is not running yet (e.g. Unschedulable)."
    )
    message: str | None = Field(default=None, description="The detail of that reason.")
    waiting_since: str | None = Field(
        default=None,
        description="When the operator first found the candidate held back for that reason, where nothing in the "
        "cluster records it (a Job a ResourceQuota refuses, kept through transient errors creating it; a Job whose "
        "pod went with no replacement): its pendingTimeoutSeconds count from then.",
    )
    p_best: FiniteFloat | None = Field(
        default=None, ge=0.0, le=1.0, description="Strategy race: probability of being best at targetSize, after its last round."
    )
    interval: list[FiniteFloat] | None = Field(
        default=None, min_length=2, max_length=2,
        description="Strategy race: prediction interval, nominally 90%, of the bits per byte at targetSize: the "
        "bootstrap's over measurement noise, widened by a backtest of the law's error far from the data, and at "
        "least as wide as the law's errors at the same reach on the benchmark's tables (docs/benchmarks.md). "
        "P(best) and every decision come from the bootstrap alone.",
    )
    eliminated_in: int | None = Field(default=None, description="Strategy race: the round after which it was eliminated.")
    elimination_reason: str | None = Field(default=None, description="Strategy race: why it was eliminated.")
    lower_confidence: bool | None = Field(
        default=None, description="Strategy race: ranked on fewer, smaller sizes than the survivors (it was eliminated)."
    )


class RankEntry(StatusModel):
    candidate: str = Field(description="Candidate name.")
    predicted_loss: FiniteFloat = Field(description="Predicted bits per byte at targetSize.")
    lower_confidence: bool | None = Field(
        default=None, description="Strategy race: an eliminated candidate, ranked after the survivors."
    )


class Elimination(StatusModel):
    candidate: str = Field(description="Candidate name.")
    reason: str = Field(description="Why it left the race.")


class RoundRecord(StatusModel):
    """One round of a race: who ran which sizes, the law the assessment used, who left, and what it cost."""

    round: int = Field(description="0 for the first round.")
    sizes: dict[str, list[int]] = Field(description="Subset sizes each candidate ran in this round.")
    law: str = Field(description="The law the candidates' predictions were drawn from (the one that fitted best).")
    noise: dict[str, float] = Field(description="Pooled log-normal noise of each law's fits.")
    law_leaders: dict[str, str] = Field(
        default_factory=dict,
        description="The candidate each law's own fit predicts best at the target; the race eliminates none of them.",
    )
    from_scratch: list[str] = Field(
        default_factory=list,
        description=f"Candidates assessed this round whose zero-shot loss is at least {FROM_SCRATCH_RATIO:.0%} of a uniform "
        "guess's: they learn the task from scratch, and each is predicted by whichever law predicts it worst.",
    )
    eliminated: list[Elimination] = Field(default_factory=list, description="Candidates eliminated after this round.")
    next_sizes: dict[str, list[int]] = Field(default_factory=dict, description="Sizes each survivor runs in the next round.")
    compute_fraction: float = Field(
        description="Compute spent after this round, as a fraction of fully fine-tuning every candidate."
    )
    stop: str | None = Field(
        default=None, description="Why the race stopped after this round: confident, exhausted, computeCap or settled."
    )
    settles_instead_of: str | None = Field(
        default=None,
        description="The race would have stopped here for this reason, but its laws disagreed: next round the "
        "candidates in nextSizes fine-tune on targetSize, and the loss measured there ranks them.",
    )


class RaceStatus(StatusModel):
    """Strategy race: every round decided so far and what the race spent."""

    rounds: list[RoundRecord] = Field(default_factory=list, max_length=MAX_ROUNDS, description="Decided rounds, oldest first.")
    stop: str | None = Field(
        default=None,
        description="Why the race stopped: confident, exhausted, computeCap, settled (its laws disagreed, and the "
        "loss each law's leader measured on targetSize ranked them), noCandidateLeft or failed.",
    )
    message: str | None = Field(default=None, description="Why the race could not be decided (stop: failed).")
    compute_fraction: float = Field(
        default=0.0,
        description="Compute spent (subset size x parameters over measured points) over fully fine-tuning every candidate.",
    )
    fixed_budget_fraction: float = Field(description="What a fixed budget over the same subset sizes spends, on the same scale.")


class Compute(StatusModel):
    """What the selection spent against what fully fine-tuning every candidate would cost."""

    flops: float = Field(default=0.0, description="Estimated FLOPs spent by all trials.")
    gpu_seconds: float = Field(default=0.0, description="GPU seconds spent by all trials, failed ones included.")
    gpu_hours: float = Field(default=0.0, description="The same in hours (kubectl get shows it).")
    full_finetune_flops: float | None = Field(default=None, description="Estimated FLOPs to fine-tune every candidate on targetSize.")
    full_finetune_gpu_seconds: float | None = Field(default=None, description="Estimated GPU seconds for the same.")
    fraction_of_full: float | None = Field(default=None, description="flops / fullFinetuneFlops.")


class LLMSelectionStatus(StatusModel):
    observed_generation: int | None = Field(default=None, description="Spec generation last acted on.")
    phase: Phase = Field(default="Pending", description="Pending, Running, Complete or Failed.")
    conditions: list[Condition] = Field(default_factory=list, description="Complete, Failed, Degraded.")
    reason: str | None = Field(default=None, description="Reason of the Failed or Degraded condition.")
    spec_digest: str | None = Field(default=None, description="Fingerprint of the immutable spec fields the work started with.")
    candidates: dict[str, CandidateStatus] = Field(default_factory=dict, description="Per-candidate status by name.")
    ranking: list[RankEntry] = Field(default_factory=list, description="Succeeded candidates, predicted best first.")
    best: str | None = Field(default=None, description="The predicted best candidate.")
    progress: str = Field(default="0/0", description="Candidates finished / total; while a race runs, then its round "
                          "(e.g. '9/16 round 1': survivors start again in each round).")
    method: str | None = Field(default=None, description="Selector used for the ranking.")
    compute: Compute = Field(default_factory=Compute, description="Compute spent and the full fine-tuning estimate.")
    race: RaceStatus | None = Field(default=None, description="Strategy race: its rounds and the compute it spent.")
    start_time: str | None = Field(default=None, description="When work started.")
    completion_time: str | None = Field(default=None, description="When the selection completed or failed.")

    def dump(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def initial_status(spec: LLMSelectionSpec, generation: int | None, now: str) -> LLMSelectionStatus:
    race = None
    if spec.strategy == "race":
        race = RaceStatus(fixed_budget_fraction=sum(spec.budget.sizes) / spec.budget.target_size)
    return LLMSelectionStatus(
        observed_generation=generation,
        phase="Running",
        candidates={c.name: CandidateStatus(model=c.model) for c in spec.candidates},
        progress=f"0/{len(spec.candidates)}",
        method="race" if race else spec.method,
        spec_digest=spec.digest(),
        start_time=now,
        race=race,
    )


def invalid_status(message: str, generation: int | None, now: str) -> LLMSelectionStatus:
    return fail(LLMSelectionStatus(), "InvalidSpec", message, generation, now)


def fail(status: LLMSelectionStatus, reason: str, message: str, generation: int | None, now: str) -> LLMSelectionStatus:
    """End the selection as Failed for a reason that concerns it as a whole (its spec, its Jobs)."""
    new = status.model_copy(deep=True)
    new.observed_generation = generation
    return _ended(new, "Failed", _condition("Failed", reason, message, generation, now), now)


def _condition(
    kind: str, reason: str, message: str, generation: int | None, now: str, holds: Literal["True", "False"] = "True"
) -> Condition:
    return Condition(
        type=kind, status=holds, reason=reason, message=message, last_transition_time=now, observed_generation=generation
    )


def _point(size: int, evaluation: Evaluation) -> CurvePoint:
    return CurvePoint(
        size=size, loss=evaluation.loss, bits_per_byte=evaluation.bits_per_byte, loss_per_example=evaluation.loss_per_example,
        uniform_bits_per_byte=evaluation.uniform_bits_per_byte if size == 0 else None,
    )


def mark_trial(status: LLMSelectionStatus, candidate: str, record: TrialRecord) -> LLMSelectionStatus:
    """Record that a trial Job exists (queued or running) for a candidate."""
    new = status.model_copy(deep=True)
    entry = new.candidates[candidate]
    entry.trials = [t for t in entry.trials if t.job_name != record.job_name] + [record]
    if entry.state not in TERMINAL:
        entry.state = record.state
    return new


def record_lost(
    status: LLMSelectionStatus, candidate: str, job_name: str, why: str, spent: TimeSpent = NO_TIME
) -> LLMSelectionStatus:
    """A trial's Job vanished before its result was read: run it again, unless it has used up its attempts.

    `spent` is what its pods ran before they went: spent all the same."""
    new = status.model_copy(deep=True)
    entry = new.candidates[candidate]
    _end_trial(entry, job_name, "Lost", spent)
    if entry.state in TERMINAL:
        # A later attempt already ended it (its Job was created before this one's loss was written).
        return _with_totals(new)
    round_ = next((t.round for t in entry.trials if t.job_name == job_name), 0)
    if sum(t.state == "Lost" and t.round == round_ for t in entry.trials) >= MAX_ATTEMPTS:
        entry.state, entry.reason = "Failed", "JobLost"
        entry.message = f"{MAX_ATTEMPTS} Jobs of this trial vanished before their result was read; the last: {why}"
        return _with_totals(new)
    entry.state, entry.reason, entry.message = "Pending", "JobLost", why
    return _with_totals(new)


def _end_trial(entry: CandidateStatus, job_name: str, state: TrialState, spent: TimeSpent) -> None:
    """Mark a trial ended and book what its pods ran (its record of them is no longer needed)."""
    for trial in entry.trials:
        if trial.job_name == job_name:
            trial.state, trial.seconds, trial.pods = state, spent.seconds, None
    entry.gpu_seconds += spent.gpu_seconds


def mark_waiting(
    status: LLMSelectionStatus, candidate: str, reason: str | None, message: str | None, since: str | None = None
) -> LLMSelectionStatus:
    """Say why an unfinished candidate's trial is not running (None, None once nothing holds it back), and since
    when, where the operator has to keep that itself."""
    new = status.model_copy(deep=True)
    entry = new.candidates[candidate]
    if entry.state not in TERMINAL:
        entry.reason, entry.message, entry.waiting_since = reason, message, since
    return new


def record_result(
    status: LLMSelectionStatus,
    spec: LLMSelectionSpec,
    candidate: str,
    job_name: str,
    result: TrialResult,
    gpus: int,
    spent: TimeSpent | None = None,
) -> LLMSelectionStatus:
    """Fold a finished trial's result into the candidate's status.

    `spent` is what the trial's pods ran (every pod, evicted ones too), where Kubernetes tells; the
    result's own wall time on `gpus` GPUs otherwise. `gpus` also prices full fine-tuning.
    """
    new = status.model_copy(deep=True)
    entry = new.candidates[candidate]
    ok = result.status == "Succeeded"
    spent = spent or TimeSpent(result.seconds, result.seconds * gpus)  # GPUs held for the whole trial; none on CPU
    _end_trial(entry, job_name, "Succeeded" if ok else "Failed", spent)
    known = {p.size for p in entry.points}
    entry.points = sorted(entry.points + [_point(p.size, p.test) for p in result.points if p.size not in known], key=lambda p: p.size)
    entry.zero_shot = _point(0, result.zero_shot) if result.zero_shot else entry.zero_shot
    entry.ntk = result.ntk or entry.ntk
    if result.test_rows_in_train is not None:
        entry.test_rows_in_train = result.test_rows_in_train
    entry.train_examples = result.train_examples or entry.train_examples
    entry.fine_tuned_model = result.model_dir or entry.fine_tuned_model
    entry.flops += result.total_flops()
    if result.resources:
        entry.device, entry.parameters = result.resources.device, result.resources.parameters
    entry.full_finetune_flops, entry.full_finetune_gpu_seconds = _full_finetune_estimate(result, spec, gpus)
    if not ok and _settling_trial(new, entry, job_name):
        _excuse(entry, job_name, result.reason or "TrialFailed", result.message)
        return _with_totals(new)
    entry.state = "Succeeded" if ok else "Failed"
    entry.reason, entry.message = (None, None) if ok else (result.reason or "TrialFailed", result.message)
    if result.reason in DATASET_FAILURES:
        _fail_the_unstarted(new, candidate, result.reason, result.message)
    return _with_totals(new)


def _fail_the_unstarted(status: LLMSelectionStatus, found_by: str, reason: str, message: str | None) -> None:
    """Fail, unrun, the candidates no trial has started for: the dataset a trial found unusable is theirs too, and
    each would spend a pod's start-up (a GPU, an image, the weights) on the same failure."""
    for entry in status.candidates.values():
        if entry.state == "Pending" and not entry.trials:
            entry.state, entry.reason = "Failed", reason
            entry.message = f"not run: the trial of {found_by} found the dataset unusable: {message}"


def record_failure(
    status: LLMSelectionStatus, candidate: str, job_name: str, reason: str, message: str, spent: TimeSpent = NO_TIME
) -> LLMSelectionStatus:
    """A trial ended without a usable result (no or malformed result, a Job that never ran or was refused).

    `spent` is what its pods ran, as Kubernetes saw it: GPUs held are spent even by a failure.
    """
    new = status.model_copy(deep=True)
    entry = new.candidates[candidate]
    _end_trial(entry, job_name, "Failed", spent)
    if _settling_trial(new, entry, job_name):
        _excuse(entry, job_name, reason, message)
    else:
        entry.state, entry.reason, entry.message = "Failed", reason, message
    return _with_totals(new)


def _settling_trial(status: LLMSelectionStatus, entry: CandidateStatus, job_name: str) -> bool:
    """Whether the Job is a trial of the round that settles a race's disagreeing laws on the target."""
    rounds = [] if status.race is None else status.race.rounds
    trial = next((t for t in entry.trials if t.job_name == job_name), None)  # None: a Job refused before it was recorded
    return trial is not None and 0 < trial.round <= len(rounds) and rounds[trial.round - 1].settles_instead_of is not None


def _excuse(entry: CandidateStatus, job_name: str, reason: str, message: str | None) -> None:
    """A settling trial failed: the candidate stands on the sizes it measured before, and the race ranks by its laws."""
    for trial in entry.trials:
        if trial.job_name == job_name:
            trial.failure = f"{reason}: {message}" if message else reason
    entry.state = "Succeeded"


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
    status.progress = _progress(status)
    full = [e.full_finetune_flops for e in entries]
    full_gpu = [e.full_finetune_gpu_seconds for e in entries]
    flops = sum(e.flops for e in entries)
    gpu_seconds = sum(e.gpu_seconds for e in entries)
    status.compute = Compute(
        flops=flops,
        gpu_seconds=gpu_seconds,
        gpu_hours=round(gpu_seconds / 3600, 3),
        full_finetune_flops=_mean_scaled_total(full),
        full_finetune_gpu_seconds=_mean_scaled_total(full_gpu),
    )
    if status.compute.full_finetune_flops:
        status.compute.fraction_of_full = flops / status.compute.full_finetune_flops
    return status


def _progress(status: LLMSelectionStatus) -> str:
    """Candidates finished / total; a race names its round, since its survivors start again each round and
    the count drops when one begins."""
    done = sum(1 for e in status.candidates.values() if e.state in TERMINAL)
    counted = f"{done}/{len(status.candidates)}"
    if status.race is None or status.race.stop is not None:
        return counted
    return f"{counted} round {len(status.race.rounds)}"


def _mean_scaled_total(values: list[float | None]) -> float | None:
    """Total over candidates, estimating the unknown ones by the mean of the known ones."""
    known = [v for v in values if v is not None]
    return None if not known else float(np.mean(known) * len(values))


def all_finished(status: LLMSelectionStatus) -> bool:
    """Every candidate finished or failed, and a race has stopped (between rounds its candidates are all finished)."""
    stopped = status.race is None or status.race.stop is not None
    return stopped and all(e.state in TERMINAL for e in status.candidates.values())


def record_round(status: LLMSelectionStatus, decision: racing.RoundDecision) -> LLMSelectionStatus:
    """Fold a race's decision after a round into the status: assessments, eliminations, and who runs next."""
    new = status.model_copy(deep=True)
    for assessment in decision.assessments:
        entry = new.candidates[assessment.name]
        entry.predicted_loss, entry.p_best = assessment.predicted_loss, assessment.p_best
        entry.interval = list(assessment.interval)
    for out in decision.eliminated:
        entry = new.candidates[out.name]
        entry.eliminated_in, entry.elimination_reason, entry.lower_confidence = out.round, out.reason, True
    next_sizes = {name: list(sizes) for name, sizes in decision.next_sizes.items() if sizes}
    for name in next_sizes:
        new.candidates[name].state = _state_in_round(new.candidates[name], decision.round + 1)
    new.race.rounds.append(RoundRecord(
        round=decision.round,
        sizes={name: ran for name, entry in new.candidates.items() if (ran := _sizes_run(entry, decision.round))},
        law=decision.law,
        noise={law: value for law, value in decision.noise.items() if np.isfinite(value)},
        law_leaders=dict(decision.law_leaders),
        from_scratch=list(decision.from_scratch),
        eliminated=[Elimination(candidate=out.name, reason=out.reason) for out in decision.eliminated],
        next_sizes=next_sizes,
        compute_fraction=decision.compute_fraction,
        stop=decision.stop,
        settles_instead_of=decision.settles_instead_of,
    ))
    new.race.compute_fraction, new.race.stop = decision.compute_fraction, decision.stop
    return _with_totals(new)


def end_race(status: LLMSelectionStatus, stop: str, message: str | None = None) -> LLMSelectionStatus:
    """Stop a race that cannot go on: no candidate left in it, or its round could not be decided."""
    new = status.model_copy(deep=True)
    new.race.stop, new.race.message = stop, message
    return _with_totals(new)


def _in_round(entry: CandidateStatus, round: int) -> list[TrialRecord]:
    return [t for t in entry.trials if t.round == round and t.state != "Lost"]


def _state_in_round(entry: CandidateStatus, round: int) -> CandidateState:
    """The candidate's state as its trial of `round` stands (Pending before it exists)."""
    trials = _in_round(entry, round)
    return trials[-1].state if trials else "Pending"


def race_candidates(status: LLMSelectionStatus) -> list[racing.RaceCandidate]:
    """What the race knows of every candidate that measured something; a failed one is out of the race
    from the round it failed in (its points still count as compute spent)."""
    candidates = []
    for name, entry in status.candidates.items():
        if entry.parameters is None or not entry.points:
            continue  # failed before measuring anything: it spent nothing the race counts
        out = entry.eliminated_in
        if entry.state == "Failed" and out is None:
            out = max((t.round for t in entry.trials), default=0)
        candidates.append(racing.RaceCandidate(
            name=name,
            params=float(entry.parameters),
            sizes=tuple(p.size for p in entry.points),
            losses=tuple(p.bits_per_byte for p in entry.points),
            zero_shot=entry.zero_shot.bits_per_byte if entry.zero_shot else None,
            uniform=entry.zero_shot.uniform_bits_per_byte if entry.zero_shot else None,
            eliminated_in=out,
        ))
    return candidates


def may_settle(status: LLMSelectionStatus, target: int) -> bool:
    """Whether a race may settle its laws' disagreement on `target`: it has not tried before, and the training split
    holds `target` rows by every trial that counted them (and one has)."""
    counted = [e.train_examples for e in status.candidates.values() if e.train_examples is not None]
    tried = status.race is not None and racing.tried_to_settle(status.race.rounds)
    return bool(counted) and min(counted) >= target and not tried


def settling(status: LLMSelectionStatus) -> tuple[str, ...]:
    """The contenders the race's current round fine-tunes on the target, when it settles the laws' disagreement."""
    return racing.settling_contenders([] if status.race is None else status.race.rounds)


def compute_fraction(status: LLMSelectionStatus, target: int) -> float:
    """Compute spent so far (subset size x parameters over measured points) over fully fine-tuning every candidate
    that measured something: the race's measure, for any strategy."""
    candidates = race_candidates(status)
    return racing.compute_fraction(candidates, target) if candidates else 0.0


def rounds_started(status: LLMSelectionStatus) -> int:
    """Rounds that have launched a trial (1 for a fixed budget once it started)."""
    return 1 + max((t.round for e in status.candidates.values() for t in e.trials), default=-1)


def _sizes_run(entry: CandidateStatus, round: int) -> list[int]:
    trials = _in_round(entry, round)
    return trials[-1].sizes if trials else []


def finalize(status: LLMSelectionStatus, spec: LLMSelectionSpec, generation: int | None, now: str) -> LLMSelectionStatus:
    """When every candidate has finished or failed: rank, set best and the conditions."""
    new = _with_totals(status.model_copy(deep=True))
    failed = sorted(name for name, e in new.candidates.items() if e.state == "Failed")
    if len(failed) > spec.max_failed_candidates:
        detail = "; ".join(f"{n}: {new.candidates[n].reason}" for n in failed)
        allowed = spec.max_failed_candidates
        message = f"{len(failed)} of {len(new.candidates)} candidates failed (maxFailedCandidates {allowed}): {detail}"
        return _ended(new, "Failed", _condition("Failed", "MaxFailedCandidatesReached", message, generation, now), now)
    try:
        new = rank(new, spec)
    except LensLLMError as err:
        return _ended(new, "Failed", _condition("Failed", "RankingFailed", str(err), generation, now), now)
    conditions = []
    if failed:
        conditions.append(_condition("Degraded", "CandidatesFailed", f"failed: {', '.join(failed)}", generation, now))
    if (split := _laws_split(new)) is not None:
        reason = "SettledByMeasurement" if new.race.stop == "settled" else "LawsDisagree"
        conditions.append(_condition("LawsAgree", reason, split, generation, now, holds="False"))
    how = "measured" if new.race is not None and new.race.stop == "settled" else "predicted"
    message = f"best: {new.best} ({how} {new.ranking[0].predicted_loss:.4f} bits/byte at {spec.budget.target_size})"
    if saved := new.candidates[new.best].fine_tuned_model:
        message += f"; its fine-tuned model: {saved}"
    new.conditions = conditions
    return _ended(new, "Complete", _condition("Complete", "Ranked", message, generation, now), now)


def laws_agree(status: LLMSelectionStatus) -> bool | None:
    """For a race, whether every law named the same leader in its latest round that fitted them (None before one,
    or for a fixed budget)."""
    fitted = _last_fitted_round(status)
    return None if fitted is None else racing.leaders_agree(fitted.law_leaders)


def _last_fitted_round(status: LLMSelectionStatus) -> RoundRecord | None:
    """The race's latest round ranked by a law (a settled round ranks by measured losses)."""
    rounds = [] if status.race is None else status.race.rounds
    return next((r for r in reversed(rounds) if r.law != racing.MEASURED), None)


def _laws_split(status: LLMSelectionStatus) -> str | None:
    """For a race whose laws name different leaders in its last fitted round: who each law predicts best, and
    what the ranking then rests on."""
    if laws_agree(status) is not False:
        return None
    fitted = _last_fitted_round(status)
    named = ", ".join(f"{law}: {name}" for law, name in fitted.law_leaders.items())
    if status.race.stop == "settled":
        return (f"the laws predicted different best candidates ({named}); the race fine-tuned them on targetSize, "
                f"and {status.best} measured the lowest loss there")
    failed = [f"{name} ({t.failure})" for name, e in status.candidates.items() for t in e.trials if t.failure]
    tried = f"; the race could not settle it on targetSize: the trials of {', '.join(failed)} failed" if failed else ""
    return (f"the laws predict different best candidates ({named}){tried}; the ranking follows "
            f"{fitted.law}, which fitted the curves better, so the pick hangs on that law "
            "extrapolating well (docs/benchmarks.md)")


def _ended(status: LLMSelectionStatus, phase: Phase, condition: Condition, now: str) -> LLMSelectionStatus:
    status.phase = phase
    status.conditions = [c for c in status.conditions if c.type != condition.type] + [condition]
    status.reason = next((c.reason for c in status.conditions if c.type in ("Failed", "Degraded")), None)
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
        uniform=np.array([z.uniform_bits_per_byte for z in zero]) if all(z and z.uniform_bits_per_byte for z in zero) else None,
    )
    return curves, [_spectrum(status.candidates[n].ntk) for n in names]


def _spectrum(ntk: NTKSummary | None) -> NTKSpectrum | None:
    if ntk is None or not ntk.eigenvalues:
        return None
    return NTKSpectrum(eigenvalues=np.array(ntk.eigenvalues), projections_sq=np.array(ntk.projections_sq), eta=ntk.eta)


def rank(status: LLMSelectionStatus, spec: LLMSelectionSpec) -> LLMSelectionStatus:
    """Rank the succeeded candidates with the spec's selector, or, for a race, by its last assessments."""
    if status.race is not None:
        return _race_rank(status)
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


def _race_rank(status: LLMSelectionStatus) -> LLMSelectionStatus:
    """Survivors by predicted loss, then the eliminated candidates by their last prediction (racing.rank)."""
    if status.race.message:
        raise LensLLMError(status.race.message)
    entries = {n: e for n, e in status.candidates.items() if e.state == "Succeeded" and e.p_best is not None}
    if not entries:
        raise LensLLMError("no candidate succeeded, nothing to rank")
    candidates = [racing.RaceCandidate(n, 1.0, (), (), eliminated_in=e.eliminated_in) for n, e in entries.items()]
    # The assessment's round and largest size do not enter the ranking.
    latest = {n: racing.Assessment(n, 0, 0, e.predicted_loss, tuple(e.interval), e.p_best) for n, e in entries.items()}
    new = status.model_copy(deep=True)
    ranked = racing.rank(candidates, latest)
    for place in ranked:
        entry = new.candidates[place.name]
        entry.rank, entry.lower_confidence = place.rank, place.lower_confidence
    new.ranking = [
        RankEntry(candidate=p.name, predicted_loss=p.predicted_loss, lower_confidence=p.lower_confidence) for p in ranked
    ]
    new.best = new.ranking[0].candidate
    return new
