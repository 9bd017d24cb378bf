"""Fit every law to a finished learning curve through the science core.

Called by the recipe at the end of a trial. A law that cannot be fitted (fewer than three
points, no finite optimum) becomes a `LawFit` with an `error`, never a failed trial: the
curve itself is the trial's product, the fits are a convenience.
"""

import math
import warnings

import numpy as np

from lensllm.errors import LensLLMError
from lensllm.science.curves import Curves
from lensllm.science.laws import LawWarning, NTKSpectrum
from lensllm.science.selectors import select
from lensllm.trial.result import METHODS, Evaluation, LawFit, NTKSummary, SizePoint

# Spec fitMetric -> Evaluation attribute.
METRICS = {"loss": "loss", "lossPerExample": "loss_per_example", "bitsPerByte": "bits_per_byte"}


def fit_all(
    zero_shot: Evaluation | None, points: list[SizePoint], *, target: int, metric: str, ntk: NTKSummary | None
) -> list[LawFit]:
    """One `LawFit` per method; lensllm and default use the NTK spectrum when there is one, and the laws the
    zero-shot loss when it was measured."""
    field = METRICS[metric]
    sizes = np.array([p.size for p in points], dtype=float)
    losses = np.array([[getattr(p.test, field) for p in points]])
    zero = None if zero_shot is None else np.array([getattr(zero_shot, field)])
    spectrum = None if ntk is None else NTKSpectrum(np.array(ntk.eigenvalues), np.array(ntk.projections_sq), ntk.eta)
    return [_fit(method, sizes, losses, zero, target, spectrum) for method in METHODS]


def _fit(method: str, sizes: np.ndarray, losses: np.ndarray, zero_shot: np.ndarray | None, target: int, spectrum) -> LawFit:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LawWarning)
        try:
            curves = Curves(models=("candidate",), sizes=sizes, losses=losses, zero_shot=zero_shot)
            selection = select(method, curves, target, ntk=[spectrum])
        except LensLLMError as err:
            return LawFit(method=method, error=str(err))
    predicted = float(selection.predicted_loss[0])
    params = {k: float(v) for k, v in selection.fits[0].items() if v is not None and math.isfinite(v)}
    return LawFit(
        method=method,
        predicted_loss=predicted if math.isfinite(predicted) else None,
        params=params,
        warning="; ".join(dict.fromkeys(str(w.message) for w in caught)) or None,
        error=None if math.isfinite(predicted) else f"non-finite prediction at size {target}",
    )
