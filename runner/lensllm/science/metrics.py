"""Selection metrics as defined by the Rectified Scaling Law and LENSLLM papers."""

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
