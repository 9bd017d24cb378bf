"""How high can a ranking built from statistics of the seen curves score, even in hindsight?

AtS, the laws and every blend `default` chooses from rank the models by a function of a few
statistics of each seen curve: the last loss reached, the slope of the power phase, where that
line passes the last point, how steep the last steps are, how far fine-tuning has come from the
zero-shot loss. For one table and budget ratio, two scores of a set of statistics are fitted to
the true target losses themselves: the best linear combination (exact: least squares gives the
combination with the largest Pearson correlation), and the best predicted loss of the form
exp(w . statistics), found by local searches from AtS's own weights and from the least-squares
fit in log space. The better of the two is the hindsight ceiling. No rule fixed before seeing
the answer reaches it; with several statistics on 30 models it is optimistic (part of what it
fits is noise), and as a local search it may miss a better optimum.

AtS's prediction is exp(level + ats_offset + ats_slope * log(target / last size)): it is one of
the scores searched over the first three statistics, so that ceiling is at least AtS, and covers
AtS with any gain or offset weight.
Pure computation on curve tables (numpy, scipy). Called by `lensllm lensbench ceiling`.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from lensllm.errors import LensLLMError
from lensllm.science.curves import Curves
from lensllm.science.laws import AtSLaw
from lensllm.science.metrics import pearcorr
from lensllm.science.selectors import fit_each, select
from lensllm_bench.loo import Table

STATISTICS = ("level", "ats_slope", "ats_offset", "last_slope", "recent_slope", "zero_shot_drop")
ATS_SPAN = STATISTICS[:3]
RECENT_POINTS = 4  # the recent slope spans the last three doublings where there are that many


def statistics(seen: Curves) -> np.ndarray:
    """One row per model: the STATISTICS of its seen curve, all in log-log space."""
    if seen.zero_shot is None:
        raise LensLLMError("the ceiling needs each model's zero-shot loss (a `0` column)")
    log_x, log_y = np.log(seen.sizes), np.log(seen.losses)
    fits = fit_each(seen, lambda i: AtSLaw(k=3, delta=5.0))
    slope = np.array([f.slope_ for f in fits])
    line_at_last = np.array([f.intercept_ for f in fits]) + slope * log_x[-1]
    level = log_y[:, -1]
    back = min(RECENT_POINTS, log_x.size)
    return np.column_stack([
        level,
        slope,
        line_at_last - level,
        (level - log_y[:, -2]) / (log_x[-1] - log_x[-2]),
        (level - log_y[:, -back]) / (log_x[-1] - log_x[-back]),
        np.log(seen.zero_shot) - level,
    ])


def best_linear_pearcorr(features: np.ndarray, truth: np.ndarray) -> float:
    """The largest Pearson correlation any linear combination of `features` has with `truth` (exact)."""
    design = _design(features, truth)
    coef, *_ = np.linalg.lstsq(design, truth, rcond=None)
    return pearcorr(design @ coef, truth)


def best_loglinear(features: np.ndarray, truth: np.ndarray, starts: Sequence[np.ndarray]) -> np.ndarray:
    """Weights w for which exp(features @ w), a predicted loss as AtS and the laws give one, correlates best
    with `truth`: the best of local searches from `starts` and from the least-squares fit in log space."""
    design = _design(features, truth)
    fitted, *_ = np.linalg.lstsq(design, np.log(truth), rcond=None)

    def loss(w: np.ndarray) -> float:
        score = np.exp(np.clip(features @ w, -50, 50))
        value = pearcorr(score, truth)
        return 1.0 if np.isnan(value) else -value

    found = [minimize(loss, w, method="BFGS").x for w in [*starts, fitted[:-1]]]
    return min(found, key=loss)


def _design(features: np.ndarray, truth: np.ndarray) -> np.ndarray:
    if len(truth) <= features.shape[1] + 2:
        raise LensLLMError(f"{len(truth)} models cannot bound a fit of {features.shape[1]} statistics")
    return np.column_stack([features, np.ones(len(truth))])


def hindsight_pearcorr(features: np.ndarray, truth: np.ndarray, starts: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
    """The best PearCorr found for a score of `features` fitted to `truth` (a linear score or a log-linear
    loss), and the log-linear weights, to start a search over more statistics from."""
    weights = best_loglinear(features, truth, starts)
    return max(best_linear_pearcorr(features, truth), pearcorr(np.exp(features @ weights), truth)), weights


@dataclass(frozen=True)
class Ceilings:
    """Per ratio of one table: AtS's and `default`'s PearCorr and the two hindsight ceilings (fractions)."""

    table: str
    ratios: tuple[int, ...]
    ats: list[float]
    default: list[float]
    ats_span: list[float]
    all_statistics: list[float]


def ceilings(table: Table) -> Ceilings:
    rows: dict[str, list[float]] = {"ats": [], "default": [], "ats_span": [], "all_statistics": []}
    span = [STATISTICS.index(s) for s in ATS_SPAN]
    for ratio in table.ratios:
        seen = table.curves.up_to(table.target / ratio)
        stats = statistics(seen)
        for method in ("ats", "default"):
            rows[method].append(pearcorr(select(method, seen, table.target).predicted_loss, table.truth))
        # AtS itself is a log-linear score of its statistics: the searches start there.
        ats = np.array([1.0, np.log(table.target / seen.sizes[-1]), 1.0])
        best, weights = hindsight_pearcorr(stats[:, span], table.truth, [ats])
        padded = np.zeros(len(STATISTICS))
        padded[span] = weights
        rows["ats_span"].append(best)
        rows["all_statistics"].append(max(best, hindsight_pearcorr(stats, table.truth, [padded])[0]))
    return Ceilings(table.name, table.ratios, **rows)


def markdown(results: Sequence[Ceilings]) -> str:
    out = ["| table | ratio | AtS | `default` | ceiling: AtS's statistics | ceiling: all six |", "|---|---|---|---|---|---|"]
    for c in results:
        columns = (c.ats, c.default, c.ats_span, c.all_statistics)
        for j, ratio in enumerate(c.ratios):
            out.append(f"| {c.table} | 1/{ratio} | " + " | ".join(f"{100 * col[j]:.1f}" for col in columns) + " |")
        out.append(f"| {c.table} | **mean** | " + " | ".join(f"**{100 * np.mean(col):.1f}**" for col in columns) + " |")
    return "\n".join(out) + "\n"
