"""Does the NTK term help? `lensllm` with the measured NTK against `rectified` and `ats` on LensBench.

For every LensBench table and budget ratio: each method's PearCorr, RelAcc and
extrapolation error, and paired bootstrap intervals over models (seeded) of the
differences, averaged over ratios. Also how often the NTK actually constrains the law:
the share of fits whose rectified D_l lies outside the NTK's interval [F(inf), F(0)].
Pure computation on tables. Called by `lensllm lensbench ntk`.
"""

from dataclasses import dataclass

import numpy as np

from lensllm.science.metrics import PairedDifference, extrapolation_error, paired_bootstrap, pearcorr, relacc_of_scores
from lensllm.science.selectors import select
from lensllm_bench.loo import Table

METHODS = ("lensllm", "rectified", "ats")
RESAMPLES = 2000


@dataclass(frozen=True)
class TableAnswer:
    table: str
    ratios: tuple[int, ...]
    predictions: dict[str, list[np.ndarray]]  # method -> one prediction vector per ratio
    truth: np.ndarray
    constrained: float  # share of (model, ratio) fits where the NTK interval excludes the free D_l

    def metric(self, method: str, name: str) -> list[float]:
        func = {"pearcorr": pearcorr, "relacc": relacc_of_scores, "error": extrapolation_error}[name]
        return [func(p, self.truth) for p in self.predictions[method]]

    def difference(self, a: str, b: str, name: str, seed: int, ratio: int | None = None) -> PairedDifference:
        """metric(a) - metric(b) at one ratio, or averaged over all ratios when `ratio` is None."""
        func = {"pearcorr": pearcorr, "relacc": relacc_of_scores, "error": extrapolation_error}[name]
        pick = range(len(self.ratios)) if ratio is None else [self.ratios.index(ratio)]
        first, second = ([self.predictions[m][j] for j in pick] for m in (a, b))
        return paired_bootstrap(func, first, second, [self.truth] * len(first), resamples=RESAMPLES, seed=seed)


def answer(table: Table) -> TableAnswer:
    if table.curves.ntk is None:
        raise ValueError(f"{table.name}: no NTK spectra (not a LensBench table)")
    predictions = {m: [] for m in METHODS}
    outside = []
    for ratio in table.ratios:
        seen = table.curves.up_to(table.target / ratio)
        for method in METHODS:
            predictions[method].append(select(method, seen, table.target, ntk=seen.ntk).predicted_loss)
        free = select("rectified", seen, table.target).fits
        outside += [not (s.limit <= f["D_l"] <= s.initial) for f, s in zip(free, seen.ntk)]
    return TableAnswer(table.name, table.ratios, predictions, table.truth, float(np.mean(outside)))


def pct(x: float) -> str:
    """A share as a percentage with one decimal, as the benchmark tables print it."""
    return f"{100 * x:.1f}"


def _interval(d: PairedDifference) -> str:
    return f"{100 * d.difference:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def markdown(answers: list[TableAnswer], seed: int = 0) -> str:
    out = ["| task | ratio | PearCorr lensllm / rectified / ats (%) | RelAcc lensllm / rectified / ats (%) | "
           "extrapolation error lensllm / rectified / ats (%) | PearCorr lensllm - rectified |", "|---|---|---|---|---|---|"]
    for a in answers:
        cells = {(m, k): a.metric(m, k) for m in METHODS for k in ("pearcorr", "relacc", "error")}
        for j, ratio in enumerate(a.ratios):
            row = [" / ".join(pct(cells[m, k][j]) for m in METHODS) for k in ("pearcorr", "relacc", "error")]
            row.append(_interval(a.difference("lensllm", "rectified", "pearcorr", seed, ratio)))
            out.append(f"| {a.table} | 1/{ratio} | " + " | ".join(row) + " |")
    out += ["", "| task | NTK binds (share of fits) | PearCorr lensllm - rectified | extrapolation error lensllm - rectified | "
            "PearCorr lensllm - ats | RelAcc lensllm - rectified |", "|---|---|---|---|---|---|"]
    for a in answers:
        out.append(
            f"| {a.table} | {pct(a.constrained)}% | {_interval(a.difference('lensllm', 'rectified', 'pearcorr', seed))} "
            f"| {_interval(a.difference('lensllm', 'rectified', 'error', seed))} "
            f"| {_interval(a.difference('lensllm', 'ats', 'pearcorr', seed))} "
            f"| {_interval(a.difference('lensllm', 'rectified', 'relacc', seed))} |"
        )
    return "\n".join(out) + "\n"
