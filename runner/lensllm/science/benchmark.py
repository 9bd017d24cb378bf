"""The papers' benchmark protocol: for each budget ratio r, every method sees only the
subset sizes up to target / r, selects, and is scored against the true loss at the target.

Used by `lensllm bench`; pure computation, no I/O.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lensllm.errors import CurveError, FitError
from lensllm.science.curves import Curves
from lensllm.science.laws import MIN_FIT_POINTS
from lensllm.science.metrics import extrapolation_error, pearcorr, relacc
from lensllm.science.selectors import select

PAPER_RATIOS = (8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class BenchRow:
    """One method at one budget ratio."""

    method: str
    ratio: int
    max_n: int
    target_n: int
    pearcorr: float
    relacc: float
    selected: str
    extrapolation_error: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def run_benchmark(curves: Curves, methods: Sequence[str], ratios: Sequence[int], target: float) -> list[BenchRow]:
    """Score every method at every ratio; rows ordered by method, then ratio."""
    true = curves.loss_at(target)
    budgets = {r: _budget(curves, target, r) for r in ratios}
    rows = []
    for method in methods:
        for ratio, (max_n, seen) in budgets.items():
            try:
                selection = select(method, seen, target, ntk=seen.ntk)
            except (FitError, CurveError) as err:
                raise type(err)(f"{method} at ratio {ratio} (sizes <= {max_n}): {err}") from None
            predicted = selection.predicted_loss
            rows.append(
                BenchRow(
                    method=method,
                    ratio=int(ratio),
                    max_n=int(max_n),
                    target_n=int(target),
                    pearcorr=pearcorr(selection.scores, true),
                    relacc=relacc(true, selection.best),
                    selected=curves.models[selection.best],
                    extrapolation_error=None if predicted is None else extrapolation_error(predicted, true),
                )
            )
    return rows


def check_comparable(curves: Curves) -> None:
    """PearCorr and RelAcc compare models: a table of one cannot score a selection."""
    if curves.n_models < 2:
        raise CurveError(f"{curves.n_models} model ({', '.join(curves.models)}); scoring a selection needs at least two")


def usable_ratios(curves: Curves, target: float, ratios: Sequence[int] = PAPER_RATIOS) -> list[int]:
    """The ratios that leave every law enough subset sizes to fit (LensBench tables are shorter)."""
    usable = [r for r in ratios if r >= 1 and np.count_nonzero(curves.sizes <= target / r) >= MIN_FIT_POINTS]
    if not usable:
        raise CurveError(
            f"no budget ratio among {list(ratios)} leaves {MIN_FIT_POINTS} subset sizes <= {target:g} / ratio "
            f"(sizes are {curves.sizes.astype(int).tolist()})"
        )
    return usable


def _budget(curves: Curves, target: float, ratio: int) -> tuple[float, Curves]:
    if ratio < 1:
        raise CurveError(f"budget ratio must be >= 1, got {ratio}")
    max_n = target / ratio
    if max_n < curves.sizes[0]:
        raise CurveError(
            f"ratio {ratio} leaves no subset size <= {max_n:g} (smallest is {curves.sizes[0]:g})"
        )
    seen = curves.up_to(max_n)
    return float(seen.sizes[-1]), seen


def summarize(rows: Sequence[BenchRow]) -> dict[str, dict[str, float]]:
    """Per-method means of PearCorr and RelAcc over the ratios; PearCorr over the ratios where it is defined
    (NaN where it is nowhere: every true loss equal)."""
    out: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        defined = [r.pearcorr for r in mine if not np.isnan(r.pearcorr)]
        out[method] = {
            "pearcorr": float(np.mean(defined)) if defined else float("nan"),
            "relacc": float(np.mean([r.relacc for r in mine])),
        }
    return out
