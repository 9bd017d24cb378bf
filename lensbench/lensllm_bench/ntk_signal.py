"""Does the measured NTK say anything the curves do not? Its statistics against where `default` errs.

`ntk_answer` tests the one use LENSLLM makes of the NTK: bounding F in its law. This asks the wider
question, for any method. `default`'s error on a model is its log residual at the target,
log(true loss) - log(predicted loss). For each table and budget ratio, each statistic of the NTK at the
pre-trained weights is rank-correlated (Spearman) with that error over the models, first as it is, then
with the zero-shot loss partialled out (the curves carry the zero-shot loss already, and the NTK's
residual term F(0) is a sum of squared per-example zero-shot losses). Correlation is not yet a better ranking,
so the last test is the one that counts: each prediction is corrected by w times the statistic
(standardised within its table), w fitted by least squares on every *other* task (leave one task out),
and the corrected ranking is scored by PearCorr and RelAcc against `default` itself.
Deterministic; pure computation on tables. Called by `lensllm lensbench ntk-signal`.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from lensllm.errors import LensLLMError
from lensllm.science.laws import NTKSpectrum
from lensllm.science.metrics import pearcorr, relacc_of_scores
from lensllm.science.selectors import select
from lensllm_bench.loo import Table
from lensllm_bench.ntk_answer import pct


def _log(x: float) -> float:
    return float(np.log(max(x, np.finfo(float).tiny)))


def _effective_rank(s: NTKSpectrum) -> float:
    """exp of the entropy of the normalised eigenvalues: how many directions the kernel really spans."""
    share = s.eigenvalues[s.eigenvalues > 0] / s.eigenvalues.sum()
    return float(np.exp(-(share * np.log(share)).sum()))


def _top_alignment(s: NTKSpectrum, k: int = 3) -> float:
    """The share of F(0) on the k largest eigendirections: fast directions the residual lies along."""
    top = np.argsort(s.eigenvalues)[::-1][:k]
    return float(s.projections_sq[top].sum() / max(s.initial, np.finfo(float).tiny))


NTK_STATISTICS: dict[str, Callable[[NTKSpectrum], float]] = {
    "F(0), log": lambda s: _log(s.initial),
    "trace, log": lambda s: _log(float(s.eigenvalues.sum())),
    "largest eigenvalue, log": lambda s: _log(float(s.eigenvalues.max())),
    "effective rank": _effective_rank,
    "top-3 alignment": _top_alignment,
}
ZERO_SHOT = "zero-shot loss, log (the curves' own)"
STATISTICS = (ZERO_SHOT, *NTK_STATISTICS)


@dataclass(frozen=True)
class Errors:
    """`default` on one table at one ratio, with the statistics its errors are tested against."""

    table: str
    task: str
    ratio: int
    predicted: np.ndarray
    truth: np.ndarray
    statistics: np.ndarray  # models x STATISTICS, each standardised within the table

    @property
    def residual(self) -> np.ndarray:
        return np.log(self.truth) - np.log(self.predicted)


def _standardise(column: np.ndarray) -> np.ndarray:
    spread = column.std()
    return np.zeros_like(column) if spread == 0 else (column - column.mean()) / spread


def statistics_of(table: Table) -> np.ndarray:
    """One row per model: the zero-shot loss and each NTK statistic, standardised within the table."""
    curves = table.curves
    if curves.ntk is None or any(s is None for s in curves.ntk) or curves.zero_shot is None:
        raise LensLLMError(f"{table.name}: needs every model's NTK spectrum and zero-shot loss (a LensBench table)")
    raw = [np.log(curves.zero_shot)] + [np.array([f(s) for s in curves.ntk]) for f in NTK_STATISTICS.values()]
    return np.column_stack([_standardise(c) for c in raw])


def errors(table: Table) -> list[Errors]:
    """`default`'s predictions at each of the table's ratios, with the table's statistics."""
    stats = statistics_of(table)
    predicted = [select("default", table.curves.up_to(table.target / r), table.target).predicted_loss for r in table.ratios]
    return [Errors(table.name, table.task, r, p, table.truth, stats) for r, p in zip(table.ratios, predicted)]


def spearman(x: np.ndarray, y: np.ndarray, control: np.ndarray | None = None) -> float:
    """Rank correlation of x and y, with the ranks of `control` regressed out of both when given."""
    rx, ry = rankdata(x), rankdata(y)
    if control is not None:
        design = np.column_stack([rankdata(control), np.ones_like(rx)])
        rx, ry = (r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry))
    return pearcorr(rx, ry)


@dataclass(frozen=True)
class Correlation:
    by_task: dict[str, float]  # mean raw Spearman over the task's tables and ratios
    raw: float  # mean over every table and ratio
    partial: float | None  # the same with the zero-shot loss partialled out (None for the zero-shot loss itself)
    partial_sign_share: float | None  # share of tables x ratios whose partial correlation has the mean's sign


def correlation(found: Sequence[Errors], column: int) -> Correlation:
    raw = [spearman(e.statistics[:, column], e.residual) for e in found]
    tasks = list(dict.fromkeys(e.task for e in found))
    by_task = {t: float(np.mean([r for r, e in zip(raw, found) if e.task == t])) for t in tasks}
    if STATISTICS[column] == ZERO_SHOT:
        return Correlation(by_task, float(np.mean(raw)), None, None)
    partial = np.array([spearman(e.statistics[:, column], e.residual, e.statistics[:, 0]) for e in found])
    mean = float(partial.mean())
    return Correlation(by_task, float(np.mean(raw)), mean, float(np.mean(np.sign(partial) == np.sign(mean))))


def fitted_weight(train: Sequence[Errors], column: int) -> float:
    """Least-squares w in residual ~ w x statistic, each residual centred within its table and ratio
    (a shift shared by every model changes no ranking)."""
    x = np.concatenate([e.statistics[:, column] for e in train])
    y = np.concatenate([e.residual - e.residual.mean() for e in train])
    power = float(x @ x)
    return 0.0 if power == 0.0 else float(x @ y / power)


@dataclass(frozen=True)
class Corrected:
    """`default` corrected by one statistic on one held-out task: means over its tables and ratios."""

    weight: float
    pearcorr: float
    relacc: float


def corrected(found: Sequence[Errors], column: int | None, task: str) -> Corrected:
    """The held-out task's tables ranked by default x exp(w x statistic), w fitted on the other tasks;
    `column=None` is `default` itself."""
    held = [e for e in found if e.task == task]
    if not held or len(held) == len(found):
        raise LensLLMError(f"leave one task out needs task {task!r} and at least one other task")
    weight = 0.0 if column is None else fitted_weight([e for e in found if e.task != task], column)
    scores = [e.predicted * np.exp(weight * (0.0 if column is None else e.statistics[:, column])) for e in held]
    return Corrected(
        weight,
        float(np.mean([pearcorr(s, e.truth) for s, e in zip(scores, held)])),
        float(np.mean([relacc_of_scores(s, e.truth) for s, e in zip(scores, held)])),
    )


def markdown(found: Sequence[Errors]) -> str:
    tasks = list(dict.fromkeys(e.task for e in found))
    out = ["| statistic | " + " | ".join(f"Spearman on {t}" for t in tasks)
           + " | all tables | with the zero-shot loss removed | same sign (share) |",
           "|---|" + "---|" * (len(tasks) + 3)]
    for column, name in enumerate(STATISTICS):
        c = correlation(found, column)
        partial = ("—", "—") if c.partial is None else (f"{c.partial:+.2f}", f"{pct(c.partial_sign_share)}%")
        by_task = " | ".join(f"{c.by_task[t]:+.2f}" for t in tasks)
        out.append(f"| {name} | {by_task} | {c.raw:+.2f} | {' | '.join(partial)} |")
    out += ["", "| correction, leave one task out | " + " | ".join(f"{t}: PearCorr / RelAcc (%)" for t in tasks) + " |",
            "|---|" + "---|" * len(tasks)]
    for column, name in [(None, "none (`default`)"), *enumerate(STATISTICS)]:
        cells = [corrected(found, column, t) for t in tasks]
        weights = [""] * len(cells) if column is None else [f" (w {c.weight:+.3f})" for c in cells]
        scored = " | ".join(f"{pct(c.pearcorr)} / {pct(c.relacc)}{w}" for c, w in zip(cells, weights))
        out.append(f"| {name} | {scored} |")
    return "\n".join(out) + "\n"
