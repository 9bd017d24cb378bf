"""Replay the race on a curves table, and compare it with fixed budgets at equal compute.

A table holds every candidate's loss at every subset size, so "running" a size is reading
its column; the race decides (`lensllm.science.racing`) exactly as it would between real
rounds. The ladder is every size column below the target; the target column is the truth
the ranking is scored against (RelAcc, PearCorr, and the coverage of the prediction
intervals), read by the race only when it settles its laws' disagreement by fine-tuning
their leaders on the target (as the product would, at that cost).

Compute is counted as the product would: subset size x parameters summed over measured
points, as a fraction of fine-tuning every candidate on the target. A fixed budget that
sees sizes up to `max_n` spends `sum(sizes <= max_n) / target` of it, whatever the models.

Used by `lensllm bench --strategy race`; pure computation, no I/O.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lensllm.errors import CurveError
from lensllm.science.benchmark import PAPER_RATIOS, run_benchmark
from lensllm.science.curves import Curves
from lensllm.science.metrics import pearcorr, relacc
from lensllm.science.racing import (
    MEASURED,
    RaceCandidate,
    RaceSettings,
    RankedCandidate,
    RoundDecision,
    decide,
    most_rounds,
    rank,
    round_zero,
    settling_contenders,
    tried_to_settle,
)


@dataclass(frozen=True)
class RaceReplay:
    """One race on one table: every round's decision, the final ranking, and how good and cheap it was."""

    settings: RaceSettings
    seed: int
    decisions: tuple[RoundDecision, ...]
    ranking: tuple[RankedCandidate, ...]
    compute_fraction: float
    relacc: float
    pearcorr: float
    selected: str
    coverage: float

    @property
    def rounds(self) -> int:
        return len(self.decisions)

    @property
    def stop(self) -> str:
        return str(self.decisions[-1].stop)

    @property
    def laws_agree(self) -> bool:
        """Whether every law's fit named the same best candidate in the last round that fitted them."""
        return next(d for d in reversed(self.decisions) if d.law != MEASURED).laws_agree

    @property
    def survivors(self) -> int:
        return sum(r.eliminated_in is None for r in self.ranking)


@dataclass(frozen=True)
class QualityPoint:
    """Mean quality of one strategy at its mean compute (over seeds for a race; one run for a fixed budget)."""

    label: str
    compute_fraction: float
    relacc: float
    pearcorr: float
    min_relacc: float


def replay_race(curves: Curves, target: float, settings: RaceSettings, seed: int = 0) -> RaceReplay:
    """Run the race on the table's columns below `target`; score it against the `target` column."""
    if curves.params is None:
        raise CurveError("the race needs parameter counts (a `size` column) to count compute")
    ladder = [int(s) for s in curves.sizes if s < target]
    measured = {name: RaceCandidate(name, float(p), (), (), _entry(curves.zero_shot, i), uniform=_entry(curves.uniform, i))
                for i, (name, p) in enumerate(zip(curves.models, curves.params))}
    plan = round_zero(settings, ladder, curves.models)
    decisions = []
    for round_ in range(most_rounds(settings)):
        measured = {name: _measure(curves, c, plan.get(name, ())) for name, c in measured.items()}
        decision = decide(settings, ladder, target, list(measured.values()), round_, seed,
                          may_settle=not tried_to_settle(decisions), settling=settling_contenders(decisions))
        decisions.append(decision)
        for out in decision.eliminated:
            measured[out.name] = dataclasses.replace(measured[out.name], eliminated_in=out.round)
        if decision.stop:
            break
        plan = dict(decision.next_sizes)
    return _scored(curves, target, settings, seed, decisions)


def capped(curves: Curves, target: float, replay: RaceReplay, max_compute_fraction: float | None) -> RaceReplay:
    """`replay` as it would have ended under a compute cap of `max_compute_fraction` (None: no cap).

    The cap only decides when to stop, never who is eliminated, so a capped race is the
    uncapped one cut after the first round whose successor it could not pay for: one
    replay yields the race at every cap below its own.
    """
    own = replay.settings.max_compute_fraction
    if replay.stop == "computeCap" and (max_compute_fraction is None or max_compute_fraction > own):
        wanted = "no cap" if max_compute_fraction is None else f"a cap of {max_compute_fraction:g}"
        raise CurveError(f"a race stopped by its cap {own:g} cannot tell what {wanted} would do")
    if max_compute_fraction is None:
        return _scored(curves, target, dataclasses.replace(replay.settings, max_compute_fraction=None), replay.seed, replay.decisions)
    for k, d in enumerate(replay.decisions):
        if d.stop or d.compute_fraction + d.next_compute_fraction > max_compute_fraction:
            break
    decisions = replay.decisions[: k + 1]
    if not decisions[-1].stop:
        # A settling round the cap cannot pay for is not run: the race stops as it would have without it.
        stop = decisions[-1].settles_instead_of or "computeCap"
        last = dataclasses.replace(decisions[-1], stop=stop, next_sizes={}, next_compute_fraction=0.0, settles_instead_of=None)
        decisions = decisions[:-1] + (last,)
    settings = dataclasses.replace(replay.settings, max_compute_fraction=max_compute_fraction)
    return _scored(curves, target, settings, replay.seed, decisions)


def _scored(curves, target, settings, seed, decisions) -> RaceReplay:
    """The ranking after `decisions`, scored against the table's loss at `target`."""
    out = {e.name: e.round for d in decisions for e in d.eliminated}
    latest = {a.name: a for d in decisions for a in d.assessments}
    candidates = [RaceCandidate(name, 1.0, (), (), eliminated_in=out.get(name)) for name in curves.models]
    ranking = rank(candidates, latest)
    true = curves.loss_at(target)
    scores = np.array([latest[name].predicted_loss for name in curves.models])
    return RaceReplay(
        settings=settings,
        seed=seed,
        decisions=tuple(decisions),
        ranking=tuple(ranking),
        compute_fraction=decisions[-1].compute_fraction,
        relacc=relacc(true, curves.models.index(ranking[0].name)),
        pearcorr=pearcorr(scores, true),
        selected=ranking[0].name,
        coverage=float(np.mean([r.interval[0] <= true[curves.models.index(r.name)] <= r.interval[1] for r in ranking])),
    )


def _entry(column: np.ndarray | None, i: int) -> float | None:
    """Model `i`'s value in an optional per-model column of the table."""
    return None if column is None else float(column[i])


def _measure(curves: Curves, candidate: RaceCandidate, sizes: Sequence[int]) -> RaceCandidate:
    """The candidate after "fine-tuning" on `sizes`: their losses read from the table."""
    if not sizes:
        return candidate
    row = curves.models.index(candidate.name)
    new = {int(s): float(curves.loss_at(s)[row]) for s in sizes}
    points = dict(zip(candidate.sizes, candidate.losses)) | new
    ordered = sorted(points)
    return dataclasses.replace(candidate, sizes=tuple(ordered), losses=tuple(points[s] for s in ordered))


# The settings the front sweeps: compute caps from 0.1% to 25% of full fine-tuning (the cost
# of the smallest and largest fixed budgets of the papers), elimination thresholds, and round 0's
# sizes (three, the fewest a fit allows, or the default four).
FRONT_CAPS = (0.001, 0.002, 0.003, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25)
FRONT_EPSILONS = (0.005, 0.01, 0.02, 0.05)
FRONT_INITIAL_SIZES = (3, 4)


def race_runs(curves: Curves, target: float, settings: RaceSettings, seeds: Sequence[int]) -> list[RaceReplay]:
    """The race under `settings` once per seed."""
    return [replay_race(curves, target, settings, seed) for seed in seeds]


def race_grid(
    curves: Curves,
    target: float,
    settings: RaceSettings,
    seeds: Sequence[int],
    epsilons: Sequence[float] = FRONT_EPSILONS,
    initial_sizes: Sequence[int] = FRONT_INITIAL_SIZES,
) -> dict[tuple[int, float], list[RaceReplay]]:
    """Per (initial sizes, epsilon) of the grid and the settings' own, the race with the loosest cap of the
    grid, once per seed; `capped` turns each into the race at any smaller cap."""
    own = settings.max_compute_fraction
    loosest = None if own is None else max(own, *FRONT_CAPS)
    return {
        (n0, epsilon): race_runs(
            curves, target, dataclasses.replace(settings, initial_sizes=n0, epsilon=epsilon, max_compute_fraction=loosest), seeds
        )
        for n0 in sorted({*initial_sizes, settings.initial_sizes})
        for epsilon in sorted({*epsilons, settings.epsilon})
    }


def mean_point(label: str, runs: Sequence[RaceReplay]) -> QualityPoint:
    """Mean compute and quality of runs of one race setting (one per seed)."""
    return QualityPoint(
        label=label,
        compute_fraction=float(np.mean([r.compute_fraction for r in runs])),
        relacc=float(np.mean([r.relacc for r in runs])),
        pearcorr=float(np.mean([r.pearcorr for r in runs])),
        min_relacc=float(min(r.relacc for r in runs)),
    )


def race_points(
    curves: Curves, target: float, races: dict[tuple[int, float], list[RaceReplay]], caps: Sequence[float] = FRONT_CAPS
) -> list[QualityPoint]:
    """The race at every (initial sizes, epsilon, cap) of the grid, averaged over seeds."""
    return [
        mean_point(f"race n0={n0} eps={epsilon:g} cap={cap:g}", [capped(curves, target, r, cap) for r in runs])
        for (n0, epsilon), runs in races.items()
        for cap in caps
    ]


def fixed_budget_points(curves: Curves, target: float, method: str = "ats", ratios: Sequence[int] = PAPER_RATIOS) -> list[QualityPoint]:
    """A fixed-budget selector at each ratio, with the compute it spends."""
    rows = run_benchmark(curves, [method], ratios, target)
    return [
        QualityPoint(
            label=f"{method} 1/{row.ratio}",
            compute_fraction=float(curves.sizes[curves.sizes <= row.max_n].sum() / target),
            relacc=row.relacc,
            pearcorr=row.pearcorr,
            min_relacc=row.relacc,
        )
        for row in rows
    ]


def pareto_front(points: Sequence[QualityPoint]) -> list[QualityPoint]:
    """The points no other point beats on both compute (lower) and RelAcc (higher), cheapest first."""
    ordered = sorted(points, key=lambda p: (p.compute_fraction, -p.relacc))
    front, best = [], -np.inf
    for p in ordered:
        if p.relacc > best:
            front.append(p)
            best = p.relacc
    return front


def undominated(front: Sequence[QualityPoint], reference: Sequence[QualityPoint]) -> list[QualityPoint]:
    """The reference points that no point of `front` matches or beats (compute <=, RelAcc >=)."""
    return [
        ref
        for ref in reference
        if not any(p.compute_fraction <= ref.compute_fraction and p.relacc >= ref.relacc for p in front)
    ]
