"""Racing: spend the larger subset sizes only on candidates that may still be best.

A race runs in rounds over a ladder of subset sizes (the selection's budget sizes, smallest
first). Round 0 fine-tunes every candidate on the first `initial_sizes` sizes; round k adds
the next `sizes_per_round` sizes for the candidates still in the race, nested on what they
measured (no size is ever run twice). After each round `decide` fits the survivors' curves
with the law that fits them best and bootstraps it (`lensllm.science.uncertainty`),
computes each survivor's probability of being best at the target, P(best), and

- eliminates every candidate with P(best) < epsilon (epsilon / 10 in a round ranked by the power
  law, see below), recording the round and the reason,
  except the most likely one and each law's leader (the candidate a law's own fit predicts
  best): P(best) comes from the law that fits best, and no law is trusted to eliminate what
  another one ranks first (on the LensBench docstring table the LENSLLM law eliminated the
  vanilla law's leader, the true best, after round 1); an eliminated candidate never comes back;
- stops when one candidate has P(best) >= 1 - delta, when the schedule (at most
  `max_rounds` rounds) has no sizes left, or, given a cap, when the next round would push the compute
  spent past `max_compute_fraction` of fully fine-tuning every candidate (a point costs subset size x
  parameters; round 0 always runs, as nothing can be ranked without it); without one a race spends
  at most what a fixed budget over the same sizes would;
- otherwise names the sizes each survivor runs next.

A race that would stop while its laws name different leaders settles the question by
measurement instead (`settle`, on by default, once, when the caller says the training data holds
the target size): one more round fine-tunes each law's leader, and the most likely candidate, on the
target size itself, and the next decision ranks them by the losses they measured there (stop
`settled`); the other survivors leave the race then. Ranked by a law alone, such races kept the
best model in 9 of 18 cases over the benchmark's 35 tables, against 81 of 87 when the laws agreed
(docs/benchmarks.md). It costs each contender's full fine-tuning, and a compute cap it would
break leaves the race stopped as it was.

Round 0 runs three sizes by default: too few for the laws to leave a residual, so it is ranked
by a plain power law (`lensllm.science.uncertainty`), whose draws see the noise but not the error
of extending a straight line a thousandfold; a candidate leaves such a round only at P(best) below
a tenth of epsilon, and no such round stops the race as confident. Chosen on the FLAN and
Gigaword tables, as the other settings were: starting on four sizes cost twice the compute, and
three with the full epsilon lost the best model on Gigaword (docs/benchmarks.md).

`rank` orders the candidates once the race stops: survivors by predicted loss, then the
eliminated ones by the prediction they had when they left, flagged as lower-confidence.

Pure functions of (settings, ladder, target, measured points, round, seed): the operator's
trial plan calls them between rounds, and `lensllm bench --strategy race` replays them on
curve tables (`lensllm.science.race_replay`).
"""

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from lensllm.errors import CurveError
from lensllm.science.checks import check_positive, check_sizes
from lensllm.science.uncertainty import (
    BENCHMARK_ERRORS,
    LAWS,
    POWER_LAW,
    ExtrapolationErrors,
    MeasuredCurve,
    predictive_distributions,
    probability_best,
)

StopReason = Literal["confident", "exhausted", "computeCap", "settled"]
# Round 0 needs a spare point to measure the noise by: three sizes for the two-parameter power law
# that predicts curves that short (lensllm.science.uncertainty), four for the laws.
MIN_INITIAL_SIZES = 3
# A compute cap is a share of fully fine-tuning every candidate: a race spending more would not be a shortcut.
# The spec's budget.maxComputeFraction and `lensllm bench --max-compute-fraction` share this bound.
MAX_COMPUTE_FRACTION = 1.0
# The share of epsilon under which a round ranked by the power law eliminates.
POWER_LAW_EPSILON_SHARE = 0.1
# The "law" of a settled round: its losses were measured on the target, not predicted.
MEASURED = "measured"


@dataclass(frozen=True)
class RaceSettings:
    """The knobs of a race; defaults chosen on the FLAN and Gigaword tables (docs/benchmarks.md)."""

    epsilon: float = 0.01
    delta: float = 0.05
    max_compute_fraction: float | None = None  # no cap: the schedule bounds the spending
    initial_sizes: int = 3
    sizes_per_round: int = 1
    max_rounds: int = 7  # of the ladder's schedule; a settling round comes on top
    laws: tuple[str, ...] = tuple(LAWS)
    draws: int = 200
    interval_level: float = 0.9
    # How far the laws erred elsewhere: every interval reaches at least that far (None: no floor).
    extrapolation_errors: ExtrapolationErrors | None = BENCHMARK_ERRORS
    # Fine-tune the laws' leaders on the target when the race would stop with its laws disagreeing.
    settle: bool = True

    def __post_init__(self) -> None:
        for name in ("epsilon", "delta", "interval_level"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise CurveError(f"race setting {name} must be in (0, 1), got {value!r}")
        if self.max_compute_fraction is not None:
            cap = check_positive(self.max_compute_fraction, what="race setting max_compute_fraction")
            if cap > MAX_COMPUTE_FRACTION:
                raise CurveError(f"race setting max_compute_fraction must be at most {MAX_COMPUTE_FRACTION:g}, got {cap!r}")
        for name in ("initial_sizes", "sizes_per_round", "max_rounds", "draws"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise CurveError(f"race setting {name} must be a positive integer, got {value!r}")
        if self.initial_sizes < MIN_INITIAL_SIZES:
            raise CurveError(f"race setting initial_sizes must be at least {MIN_INITIAL_SIZES} (a fit needs a spare point), got {self.initial_sizes}")
        unknown = [law for law in self.laws if law not in LAWS]
        if not self.laws or unknown or len(set(self.laws)) != len(self.laws):
            raise CurveError(f"race setting laws must be distinct names among {', '.join(LAWS)}, got {list(self.laws)}")


@dataclass(frozen=True)
class RaceCandidate:
    """What the race knows of one candidate: its measured points, its size, and whether it is out."""

    name: str
    params: float
    sizes: tuple[int, ...]
    losses: tuple[float, ...]
    zero_shot: float | None = None
    eliminated_in: int | None = None
    uniform: float | None = None  # a uniform guess's loss, in the losses' unit (MeasuredCurve.learns_from_scratch)

    @property
    def in_race(self) -> bool:
        return self.eliminated_in is None

    def curve(self) -> MeasuredCurve:
        return MeasuredCurve(
            self.name, np.asarray(self.sizes, float), np.asarray(self.losses, float), self.zero_shot, self.uniform
        )


@dataclass(frozen=True)
class Assessment:
    """One candidate's standing after a round: predicted loss at the target, its interval, P(best)."""

    name: str
    round: int
    largest_size: int
    predicted_loss: float
    interval: tuple[float, float]
    p_best: float


@dataclass(frozen=True)
class Elimination:
    name: str
    round: int
    reason: str


@dataclass(frozen=True)
class RoundDecision:
    """What `decide` concluded after a round, and what runs next (nothing when `stop` is set)."""

    round: int
    assessments: tuple[Assessment, ...]
    eliminated: tuple[Elimination, ...]
    next_sizes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    stop: StopReason | None = None
    compute_fraction: float = 0.0
    next_compute_fraction: float = 0.0
    law: str = ""
    noise: Mapping[str, float] = field(default_factory=dict)
    law_leaders: Mapping[str, str] = field(default_factory=dict)
    from_scratch: tuple[str, ...] = ()  # assessed candidates that learn the task from scratch: predicted by their worst law
    # Set when the race would have stopped here for this reason but settles its laws' disagreement first:
    # next_sizes then hold the target size for each contender.
    settles_instead_of: StopReason | None = None

    @property
    def laws_agree(self) -> bool:
        return leaders_agree(self.law_leaders)


def leaders_agree(law_leaders: Mapping[str, str]) -> bool:
    """Whether every law's fit predicts the same candidate best (so the pick does not hang on the law)."""
    return len(set(law_leaders.values())) <= 1


@dataclass(frozen=True)
class RankedCandidate:
    name: str
    rank: int
    predicted_loss: float
    interval: tuple[float, float]
    p_best: float
    eliminated_in: int | None

    @property
    def lower_confidence(self) -> bool:
        """Eliminated candidates are ranked on fewer, smaller sizes than the survivors."""
        return self.eliminated_in is not None


def most_rounds(settings: RaceSettings) -> int:
    """The rounds a race can decide: the schedule's, and one that settles the laws' disagreement."""
    return settings.max_rounds + int(settings.settle)


class SettlingRound(Protocol):
    """What a decided round says of settling: a RoundDecision, or a selection status's record of one."""

    @property
    def settles_instead_of(self) -> str | None: ...

    @property
    def next_sizes(self) -> Mapping[str, Sequence[int]]: ...


def tried_to_settle(rounds: Sequence[SettlingRound]) -> bool:
    return any(r.settles_instead_of for r in rounds)


def settling_contenders(rounds: Sequence[SettlingRound]) -> tuple[str, ...]:
    """The contenders the next round fine-tunes on the target, when the last decided round settles."""
    return tuple(rounds[-1].next_sizes) if rounds and rounds[-1].settles_instead_of else ()


def schedule(settings: RaceSettings, ladder: Sequence[int]) -> list[tuple[int, ...]]:
    """The sizes each round adds, round 0 first; at most `max_rounds` rounds."""
    sizes = [int(s) for s in check_sizes(ladder, what="race ladder")]
    if sizes[0] <= 0:
        raise CurveError(f"race ladder sizes must be > 0, got {sizes}")
    if len(sizes) < settings.initial_sizes:
        raise CurveError(f"race setting initial_sizes is {settings.initial_sizes}, but the ladder has only {len(sizes)} "
                         f"sizes ({', '.join(map(str, sizes))}) for round 0 to run")
    rounds = [tuple(sizes[: settings.initial_sizes])]
    rest = sizes[settings.initial_sizes :]
    step = settings.sizes_per_round
    rounds += [tuple(rest[i : i + step]) for i in range(0, len(rest), step)]
    return rounds[: settings.max_rounds]


def round_zero(settings: RaceSettings, ladder: Sequence[int], names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The sizes every candidate runs first."""
    first = schedule(settings, ladder)[0]
    return {name: first for name in names}


def compute_fraction(candidates: Sequence[RaceCandidate], target: float) -> float:
    """Compute spent (sum of size x parameters over measured points) over fine-tuning every candidate on `target`."""
    return sum(sum(c.sizes) * c.params for c in candidates) / _full_cost(candidates, target)


def _full_cost(candidates: Sequence[RaceCandidate], target: float) -> float:
    return float(target) * sum(c.params for c in candidates)


def decide(
    settings: RaceSettings,
    ladder: Sequence[int],
    target: float,
    candidates: Sequence[RaceCandidate],
    round: int,
    seed: int,
    *,
    may_settle: bool = False,
    settling: Collection[str] = (),
) -> RoundDecision:
    """After `round`, assess the candidates still in the race, eliminate, and say what runs next or why to stop.

    `may_settle`: the training data holds `target` examples and the race has not tried to settle before, so a
    disagreement of the laws may be settled by fine-tuning on the target itself (RaceSettings.settle).
    `settling`: the contenders `round` fine-tuned on the target, when it was a settling round. If every one of
    them measured it they are ranked by what they measured; if one could not, the laws rank the race as before.
    """
    _check_inputs(candidates, target, round)
    racing = [c for c in candidates if c.in_race]
    if not racing:
        raise CurveError("no candidate is left in the race")
    size = _settle_size(ladder, target)
    contenders = [c for c in racing if c.name in settling]
    if size is not None and contenders and all(size in c.sizes for c in contenders):
        return _settled(candidates, racing, size, round)
    assessed = predictive_distributions(
        [c.curve() for c in racing], target, draws=settings.draws, seed=(seed, round), laws=settings.laws,
        backtested=[c.curve() for c in candidates if not c.in_race], elsewhere=settings.extrapolation_errors,
    )
    p_best = probability_best(np.stack([p.draws for p in assessed.predictive]))
    assessments = tuple(
        Assessment(c.name, round, max(c.sizes), p.loss, p.interval(settings.interval_level), float(pb))
        for c, p, pb in zip(racing, assessed.predictive, p_best)
    )
    leader = int(np.argmax(p_best))
    kept = {assessments[leader].name, *assessed.leaders.values()}
    threshold, meaning = _elimination_threshold(settings, assessed.law)
    out = tuple(
        Elimination(a.name, round, f"P(best) {a.p_best:.4f} < {meaning} after sizes up to {a.largest_size:,}")
        for a in assessments
        if a.p_best < threshold and a.name not in kept
    )
    gone = {e.name for e in out}
    survivors = [c for c in racing if c.name not in gone]
    spent = compute_fraction(candidates, target)
    plan = _next_sizes(settings, ladder, survivors, round)
    cost = sum(sum(plan[c.name]) * c.params for c in survivors) / _full_cost(candidates, target)
    # The power law's P(best) may thin the field, never end the race: its line can cross the others'.
    confidence = float(p_best[leader]) if assessed.law != POWER_LAW else 0.0
    stop = _stop_reason(settings, confidence, plan, spent + cost)
    decision = RoundDecision(
        round=round,
        assessments=assessments,
        eliminated=out,
        next_sizes={} if stop else plan,
        stop=stop,
        compute_fraction=spent,
        next_compute_fraction=0.0 if stop else cost,
        law=assessed.law,
        noise=assessed.noise,
        law_leaders=assessed.leaders,
        from_scratch=assessed.from_scratch,
    )
    if stop and size is not None and settings.settle and may_settle and not decision.laws_agree:
        return _settling(settings, decision, size, target, candidates)
    return decision


def _settle_size(ladder: Sequence[int], target: float) -> int | None:
    """The size a settling round fine-tunes on: the target, when it is a whole size past the ladder."""
    if float(target).is_integer() and target > max(ladder):
        return int(target)
    return None


def _settling(
    settings: RaceSettings, decision: RoundDecision, size: int, target: float, candidates: Sequence[RaceCandidate]
) -> RoundDecision:
    """The stopping `decision` turned into one more round that fine-tunes the contenders on the target `size`, when
    the compute cap (if any) pays for it."""
    leader = max(decision.assessments, key=lambda a: a.p_best).name
    contenders = {leader, *decision.law_leaders.values()}
    params = {c.name: c.params for c in candidates}
    cost = size * sum(params[name] for name in contenders) / _full_cost(candidates, target)
    cap = settings.max_compute_fraction
    if cap is not None and decision.compute_fraction + cost > cap:
        return decision
    return dataclasses.replace(
        decision,
        next_sizes={a.name: (size,) for a in decision.assessments if a.name in contenders},
        stop=None,
        next_compute_fraction=cost,
        settles_instead_of=decision.stop,
    )


def _settled(candidates: Sequence[RaceCandidate], racing: Sequence[RaceCandidate], size: int, round: int) -> RoundDecision:
    """The round after a settling one: the contenders ranked by the loss they measured on the target `size`; the
    other survivors, which did not run it, leave the race."""
    measured = {c.name: c.losses[c.sizes.index(size)] for c in racing if size in c.sizes}
    best = min(measured, key=measured.__getitem__)
    return RoundDecision(
        round=round,
        assessments=tuple(
            Assessment(name, round, size, loss, (loss, loss), float(name == best)) for name, loss in measured.items()
        ),
        eliminated=tuple(
            Elimination(c.name, round, "not among the laws' leaders, which the race fine-tuned on the target size to "
                        "settle their disagreement")
            for c in racing
            if c.name not in measured
        ),
        stop="settled",
        compute_fraction=compute_fraction(candidates, size),
        law=MEASURED,
    )


def _elimination_threshold(settings: RaceSettings, law: str) -> tuple[float, str]:
    """The P(best) under which a round ranked by `law` eliminates, and how to say it."""
    if law == POWER_LAW:
        threshold = settings.epsilon * POWER_LAW_EPSILON_SHARE
        return threshold, f"{threshold:g} (epsilon {settings.epsilon:g} x {POWER_LAW_EPSILON_SHARE:g}: ranked by the power law)"
    return settings.epsilon, f"epsilon {settings.epsilon:g}"


def _check_inputs(candidates: Sequence[RaceCandidate], target: float, round: int) -> None:
    check_positive(target, what="target size")
    if round < 0:
        raise CurveError(f"round must be >= 0, got {round}")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise CurveError(f"candidate names must be unique, got {names}")
    for c in candidates:
        check_positive(c.params, what=f"parameter count of {c.name!r}")
        if len(c.sizes) != len(c.losses):
            raise CurveError(f"candidate {c.name!r}: {len(c.sizes)} sizes but {len(c.losses)} losses")


def _next_sizes(
    settings: RaceSettings, ladder: Sequence[int], survivors: Sequence[RaceCandidate], round: int
) -> dict[str, tuple[int, ...]]:
    """Sizes of the schedule up to round + 1 that each survivor has not measured yet."""
    due = [s for sizes in schedule(settings, ladder)[: round + 2] for s in sizes]
    return {c.name: tuple(s for s in due if s not in frozenset(c.sizes)) for c in survivors}


def _stop_reason(
    settings: RaceSettings, top_p_best: float, plan: Mapping[str, tuple[int, ...]], fraction_after: float
) -> StopReason | None:
    if top_p_best >= 1.0 - settings.delta:
        return "confident"
    if not any(plan.values()):
        return "exhausted"
    if settings.max_compute_fraction is not None and fraction_after > settings.max_compute_fraction:
        return "computeCap"
    return None


def rank(candidates: Sequence[RaceCandidate], latest: Mapping[str, Assessment]) -> list[RankedCandidate]:
    """Survivors by predicted loss, then eliminated candidates by their last prediction (ties keep input order)."""
    missing = [c.name for c in candidates if c.name not in latest]
    if missing:
        raise CurveError(f"no assessment for candidates {missing}: rank after at least one decided round")
    order = sorted(
        range(len(candidates)),
        key=lambda i: (not candidates[i].in_race, latest[candidates[i].name].predicted_loss, i),
    )
    return [
        RankedCandidate(
            name=candidates[i].name,
            rank=r,
            predicted_loss=latest[candidates[i].name].predicted_loss,
            interval=latest[candidates[i].name].interval,
            p_best=latest[candidates[i].name].p_best,
            eliminated_in=candidates[i].eliminated_in,
        )
        for r, i in enumerate(order, start=1)
    ]
