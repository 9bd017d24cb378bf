"""How far a race's predictions at the target missed on the benchmark's tables: the floor of its intervals.

A race reports each candidate's interval of its loss at the target. The bootstrap sees only the
measurement noise and the race's own backtest only the first doublings past its sizes, so on a
held-out draw their 90% intervals held half of the finalists' true losses. The product therefore
widens every interval to at least the spread of the law's errors measured here: for every
candidate of a race (seeds 0-2, default settings) on each table, the log error of its last
prediction, log(true / predicted), divided by how far that prediction reached, log(target / largest
size measured). Rounds predicted by the power law (three sizes) and by the laws err differently,
so each keeps its own spread. The table's target column is the truth; the race never sees it.

`lensllm lensbench calibrate` writes `lensllm.science.benchmark_errors` from these; `coverage_markdown`
scores the intervals that result, each group of tables with a floor measured without it.
Pure computation on curve tables.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensllm.cli import options
from lensllm.science.race_replay import RaceReplay, replay_race
from lensllm.science.racing import RaceSettings
from lensllm.science.uncertainty import POWER_LAW, ExtrapolationErrors

SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class FinalPrediction:
    """One candidate's last prediction in one race, its interval, and the truth."""

    predictor: str  # POWER_LAW, or "laws"
    reach: float
    predicted: float
    true: float
    interval: tuple[float, float]
    finalist: bool

    @property
    def error(self) -> float:
        """log(true / predicted) per unit of log reach."""
        return math.log(self.true / self.predicted) / self.reach

    @property
    def held(self) -> bool:
        return self.interval[0] <= self.true <= self.interval[1]

    @property
    def half_width(self) -> float:
        """Half the interval's width in log space: 0.1 is about plus or minus 10%."""
        return math.log(self.interval[1] / self.interval[0]) / 2


def final_predictions(table: Path, settings: RaceSettings = RaceSettings()) -> list[FinalPrediction]:
    """Every candidate's last prediction in the races of SEEDS on `table` (predictions at the target, not inside it).

    The races do not settle: a settled race replaces its finalists' predictions with losses measured at the
    target, and what is measured here is how far predictions miss.
    """
    curves = options.load_curves(table)
    target = options.resolve_target(curves, None)
    truth = dict(zip(curves.models, curves.loss_at(target).tolist()))
    unsettled = dataclasses.replace(settings, settle=False)
    replays = [replay_race(curves, target, unsettled, seed) for seed in SEEDS]
    return [p for replay in replays for p in _of_replay(replay, target, truth) if p.reach > 0]


def _of_replay(replay: RaceReplay, target: float, truth: Mapping[str, float]) -> list[FinalPrediction]:
    latest = {a.name: a for d in replay.decisions for a in d.assessments}
    finalists = {r.name for r in replay.ranking if r.eliminated_in is None}
    return [
        FinalPrediction(
            predictor=POWER_LAW if replay.decisions[a.round].law == POWER_LAW else "laws",
            reach=math.log(target / a.largest_size),
            predicted=a.predicted_loss,
            true=truth[name],
            interval=a.interval,
            finalist=name in finalists,
        )
        for name, a in latest.items()
    ]


def measured_errors(predictions: Sequence[FinalPrediction]) -> ExtrapolationErrors:
    """The spread of the predictions' errors per unit of log reach, by predictor."""
    return ExtrapolationErrors.measured(*([p.error for p in predictions if (p.predictor == POWER_LAW) == power]
                                          for power in (True, False)))


def module_text(tables: Sequence[Path], predictions: Sequence[FinalPrediction]) -> str:
    """The source of `lensllm.science.benchmark_errors`: the errors measured on `tables`."""
    errors = measured_errors(predictions)
    counts = {name: sum((p.predictor == POWER_LAW) == (name == "power") for p in predictions) for name in ("power", "laws")}
    listed = "".join(f"    {str(t)!r},\n" for t in tables)
    return f'''"""How far a race's predictions at the target missed on the benchmark's tables: the floor of its intervals.

Written by `lensllm lensbench calibrate` (lensllm_bench.calibrate); tests/lensbench/test_calibrate.py fails
when it drifts from the tables. Quantiles, at `lensllm.science.uncertainty.ERROR_PROBABILITIES`, of
log(true / predicted) per unit of log reach over every candidate's last prediction in races with seeds
{SEEDS[0]}-{SEEDS[-1]} on each table: POWER for rounds the power law predicts ({counts["power"]} predictions), LAWS for
the others ({counts["laws"]}).
"""

TABLES = (
{listed})
POWER = {_floats(errors.power)}
LAWS = {_floats(errors.laws)}
'''


def _floats(values: Sequence[float]) -> str:
    """A tuple literal, eight values to a line."""
    cells = [f"{v:.6f}" for v in values]
    rows = ["    " + ", ".join(cells[i : i + 8]) + "," for i in range(0, len(cells), 8)]
    return "(\n" + "\n".join(rows) + "\n)"


def coverage_markdown(groups: Mapping[str, Sequence[Path]], calibration: Sequence[str]) -> str:
    """How often the intervals hold the truth, per group of tables: with the floor measured on every `calibration` group
    but the group itself (for a group outside `calibration`, on all of them), and without any floor."""
    bare = RaceSettings(extrapolation_errors=None)  # the floor changes intervals only: the same predictions
    without = {label: [p for t in tables for p in final_predictions(t, bare)] for label, tables in groups.items()}
    lines = [
        "| tables | candidates, over 3 seeds | held without the floor (%) | held with it (%) | finalists "
        "| held without the floor (%) | held with it (%) | finalists' median half-width with it (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, tables in groups.items():
        floor = measured_errors([p for g in calibration if g != label for p in without[g]])
        with_floor = [p for t in tables for p in final_predictions(t, RaceSettings(extrapolation_errors=floor))]
        lines.append(f"| {label} | {len(with_floor)} | {_held(without[label])} | {_held(with_floor)} | "
                     f"{sum(p.finalist for p in with_floor)} | {_held(without[label], True)} | {_held(with_floor, True)} | "
                     f"{100 * float(np.median([p.half_width for p in with_floor if p.finalist])):.0f} |")
    return "\n".join(lines) + "\n"


def _held(predictions: Sequence[FinalPrediction], finalists_only: bool = False) -> str:
    chosen = [p.held for p in predictions if p.finalist or not finalists_only]
    return f"{100 * sum(chosen) / len(chosen):.0f}"
