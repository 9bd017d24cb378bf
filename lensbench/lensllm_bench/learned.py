"""Can the ceiling's curve statistics, weighted by what the *other* tasks teach, beat AtS out of sample?

The hindsight ceiling (`ceiling`) fits weights to a table's own true losses. Here a rule learns its
weights on every other task only (leave one task out), as it would have to before it meets a new
dataset. The score is a predicted loss exp(w . x): x the ceiling's statistics with each slope
multiplied by the horizon log(target / last size), so that AtS (k = 3, delta = 5) is
w = (1, 1, 1, 0, 0, 0) exactly. w is AtS plus a correction fitted by ridge regression to the log true
losses, centred within each table and ratio (a shift shared by every model changes no ranking); the
ridge pulls the correction to zero, i.e. to AtS. Reported at several ridge strengths: the best of them
is chosen in hindsight, so it bounds from above what such a rule does out of sample.
Pure computation on curve tables (numpy, scipy). Called by `lensllm lensbench learned`.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lensllm.errors import LensLLMError
from lensllm.science.curves import Curves
from lensllm.science.metrics import pearcorr, relacc_of_scores
from lensllm.science.selectors import select
from lensllm_bench.ceiling import STATISTICS, statistics
from lensllm_bench.loo import Table
from lensllm_bench.ntk_answer import pct

AT_HORIZON = ("ats_slope", "last_slope", "recent_slope")  # slopes, extended to the target by the horizon
ATS_WEIGHTS = np.array([1.0 if s in ("level", "ats_slope", "ats_offset") else 0.0 for s in STATISTICS])
RIDGES = (0.001, 0.01, 0.1, 1.0)


def features(seen: Curves, target: float) -> np.ndarray:
    """The ceiling's statistics of each seen curve, its slopes times log(target / last size seen)."""
    horizon = np.log(target / seen.sizes[-1])
    scale = np.array([horizon if s in AT_HORIZON else 1.0 for s in STATISTICS])
    return statistics(seen) * scale


@dataclass(frozen=True)
class Seen:
    """One table at one budget ratio: the features of the seen curves, the truth and `default`'s prediction."""

    table: str
    task: str
    features: np.ndarray
    truth: np.ndarray
    default: np.ndarray


def seen_at_ratios(table: Table) -> list[Seen]:
    out = []
    for ratio in table.ratios:
        seen = table.curves.up_to(table.target / ratio)
        default = select("default", seen, table.target).predicted_loss
        out.append(Seen(table.name, table.task, features(seen, table.target), table.truth, default))
    return out


def fit_weights(train: Sequence[Seen], ridge: float) -> np.ndarray:
    """AtS's weights plus the ridge-shrunk least-squares correction towards the centred log truths of `train`.
    The ridge is per row of data, so its strength does not change with how many tables train."""
    x = np.vstack([s.features - s.features.mean(axis=0) for s in train])
    log_truth = np.concatenate([np.log(s.truth) - np.log(s.truth).mean() for s in train])
    residual = log_truth - x @ ATS_WEIGHTS
    correction = np.linalg.solve(x.T @ x + ridge * len(x) * np.eye(x.shape[1]), x.T @ residual)
    return ATS_WEIGHTS + correction


@dataclass(frozen=True)
class Scores:
    """Means over a task's tables and ratios."""

    pearcorr: float
    relacc: float


def scores(held: Sequence[Seen], predicted: Sequence[np.ndarray]) -> Scores:
    return Scores(
        float(np.mean([pearcorr(p, s.truth) for p, s in zip(predicted, held)])),
        float(np.mean([relacc_of_scores(p, s.truth) for p, s in zip(predicted, held)])),
    )


@dataclass(frozen=True)
class HeldOut:
    """One held-out task: AtS, `default` and the rule learned on the other tasks at each ridge strength."""

    task: str
    ats: Scores
    default: Scores
    learned: dict[float, Scores]
    weights: dict[float, np.ndarray]


def hold_out(found: Sequence[Seen], task: str, ridges: Sequence[float] = RIDGES) -> HeldOut:
    held = [s for s in found if s.task == task]
    train = [s for s in found if s.task != task]
    if not held or not train:
        raise LensLLMError(f"leave one task out needs task {task!r} and at least one other task")
    weights = {r: fit_weights(train, r) for r in ridges}
    return HeldOut(
        task,
        scores(held, [np.exp(s.features @ ATS_WEIGHTS) for s in held]),
        scores(held, [s.default for s in held]),
        {r: scores(held, [np.exp(s.features @ w) for s in held]) for r, w in weights.items()},
        weights,
    )


def markdown(results: Sequence[HeldOut]) -> str:
    ridges = list(results[0].learned)
    out = ["| held-out task | AtS | `default` | " + " | ".join(f"learned, ridge {r:g}" for r in ridges) + " |",
           "|---|" + "---|" * (len(ridges) + 2)]
    for h in results:
        cells = [h.ats, h.default, *h.learned.values()]
        out.append(f"| {h.task} | " + " | ".join(f"{pct(c.pearcorr)} / {pct(c.relacc)}" for c in cells) + " |")
    out += ["", "Weights learned without the task (" + ", ".join(STATISTICS) + "; AtS is "
            + ", ".join(f"{w:g}" for w in ATS_WEIGHTS) + "), at ridge " + f"{ridges[0]:g}:", "",
            "| held-out task | " + " | ".join(STATISTICS) + " |", "|---|" + "---|" * len(STATISTICS)]
    for h in results:
        out.append(f"| {h.task} | " + " | ".join(f"{w:+.2f}" for w in h.weights[ridges[0]]) + " |")
    return "\n".join(out) + "\n"
