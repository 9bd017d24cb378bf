"""Selection metrics as defined by the Rectified Scaling Law and LENSLLM papers."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lensllm.errors import CurveError


def pearcorr(scores: np.ndarray, true_loss: np.ndarray) -> float:
    """PearCorr: Pearson correlation between a method's scores and the true loss at the target.

    NaN when either side is constant (the correlation is undefined there).
    """
    s, t = np.asarray(scores, float), np.asarray(true_loss, float)
    if s.shape != t.shape or s.size < 2:
        raise CurveError(f"pearcorr needs two equal-length vectors of >= 2 values, got {s.shape} and {t.shape}")
    s, t = s - s.mean(), t - t.mean()
    denom = np.sqrt((s * s).sum() * (t * t).sum())
    return float((s * t).sum() / denom) if denom > 0 else float("nan")


def relacc(true_loss: np.ndarray, selected: int) -> float:
    """RelAcc: (worst true loss - true loss of the selected) / (worst - best); 1 means the best was chosen."""
    t = np.asarray(true_loss, float)
    worst, best = t.max(), t.min()
    if worst == best:
        return 1.0
    return float((worst - t[selected]) / (worst - best))


def extrapolation_error(predicted_loss: np.ndarray, true_loss: np.ndarray) -> float:
    """Mean absolute relative error of the predicted loss at the target size."""
    p, t = np.asarray(predicted_loss, float), np.asarray(true_loss, float)
    return float(np.mean(np.abs(p - t) / t))


def relacc_of_scores(scores: np.ndarray, true_loss: np.ndarray) -> float:
    """RelAcc of the candidate a method ranks first (the lowest score)."""
    return relacc(true_loss, int(np.argmin(scores)))


@dataclass(frozen=True)
class PairedDifference:
    """metric(a) - metric(b) on all candidates, and its bootstrap percentile interval."""

    difference: float
    low: float
    high: float


def paired_bootstrap(
    metric: Callable[[np.ndarray, np.ndarray], float],
    scores_a: Sequence[np.ndarray],
    scores_b: Sequence[np.ndarray],
    true_loss: Sequence[np.ndarray],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Paired bootstrap over candidates of the mean difference of `metric` between two methods.

    Each element of the sequences is one setting (e.g. one budget ratio) over the same
    candidates; the difference is averaged over settings. A resample draws candidates with
    replacement, the same draw for both methods and every setting (that is the pairing).
    Resamples where the metric is undefined (NaN, e.g. all drawn losses equal) are left out.
    """
    n = np.asarray(true_loss[0]).size
    if any(np.asarray(x).shape != (n,) for x in (*scores_a, *scores_b, *true_loss)):
        raise CurveError("paired_bootstrap needs score and loss vectors of one length per setting")

    def mean_difference(idx: np.ndarray) -> float:
        return float(np.mean([metric(a[idx], t[idx]) - metric(b[idx], t[idx]) for a, b, t in zip(scores_a, scores_b, true_loss)]))

    rng = np.random.default_rng(seed)
    draws = np.array([mean_difference(rng.integers(0, n, n)) for _ in range(resamples)])
    draws = draws[np.isfinite(draws)]
    tail = 100 * (1 - level) / 2
    return PairedDifference(mean_difference(np.arange(n)), float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail)))
