"""Scaling laws of fine-tuning loss against subset size, each a pure function plus an estimator.

- `vanilla_loss` / `VanillaLaw`: `L(D) = B / D^beta + E` (Kaplan et al. 2020; Hernandez et
  al. 2021), the "VanillaFit" baseline of the Rectified Scaling Law paper.
- `rectified_loss` / `RectifiedLaw`: `L(D) = B / (D_l + D^beta) + E` (Lin et al., ICML 2024),
  where D_l is the "pre-learned data size"; fitted with the zero-shot loss as the point D = 0,
  as the published code does.
- `lensllm_loss` / `LensLLMLaw`: `L(D) = B / (F(Theta, t) + D^beta) + E` (Zeng et al., ICML
  2025). With an NTK summary, `F(t) = sum_k c_k^2 exp(-2 eta lambda_k t)` and t is fitted;
  without one, F is a fitted non-negative term and the law has the rectified form. Like the
  rectified fit it uses the zero-shot loss as the point D = 0, where F(0) is the squared
  initial residual the NTK summary measures.
- `AtSLaw`: accept-then-stop (Lin et al.): find where the power phase starts by walking back
  from the largest sizes, then fit a line in log-log space to the power phase.

Every estimator follows one contract: keyword-only hyperparameters, `fit(sizes, losses,
zero_shot=None) -> self`, `predict(sizes)`, learned values in attributes ending in `_`.
"""

import warnings
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
from scipy.optimize import brentq

from lensllm.errors import CurveError, FitError, NotFittedError
from lensllm.science.checks import check_curve, check_positive, check_sizes
from lensllm.science.fitting import FamilyFit, family_loss, fit_family, fit_family_many

MIN_FIT_POINTS = 3
# NTK eigenvalues at or below this fraction of the largest are numerically zero: their modes never decay.
NULL_MODE_TOLERANCE = 1e-10


class LawWarning(UserWarning):
    """A fit is valid but suspicious, e.g. a parameter ended on its bound."""


def vanilla_loss(sizes: np.ndarray, B: float, beta: float, E: float) -> np.ndarray:
    """Vanilla power law `B / D^beta + E`."""
    return family_loss(np.asarray(sizes, float), B, 0.0, beta, E)


def rectified_loss(sizes: np.ndarray, B: float, D_l: float, beta: float, E: float) -> np.ndarray:
    """Rectified law `B / (D_l + D^beta) + E`."""
    return family_loss(np.asarray(sizes, float), B, D_l, beta, E)


def lensllm_loss(sizes: np.ndarray, B: float, F: float, beta: float, E: float) -> np.ndarray:
    """LENSLLM law `B / (F + D^beta) + E` for a given value of the NTK term F(Theta, t)."""
    return family_loss(np.asarray(sizes, float), B, F, beta, E)


@dataclass(frozen=True)
class NTKSpectrum:
    """What the law needs from an empirical NTK: its eigenvalues, the squared projections
    of the initial residual vector on the eigenvectors, and the learning rate eta."""

    eigenvalues: np.ndarray
    projections_sq: np.ndarray
    eta: float
    zero_tol: float = field(default=NULL_MODE_TOLERANCE)

    def __post_init__(self) -> None:
        lam = np.asarray(self.eigenvalues, float)
        c2 = np.asarray(self.projections_sq, float)
        if lam.shape != c2.shape or lam.ndim != 1 or lam.size == 0:
            raise CurveError(f"NTK eigenvalues and projections must be equal-length 1-D, got {lam.shape} and {c2.shape}")
        if not (np.all(np.isfinite(lam)) and np.all(np.isfinite(c2))) or np.any(c2 < 0):
            raise CurveError("NTK eigenvalues must be finite and squared projections finite and >= 0")
        check_positive(self.eta, what="NTK eta")
        object.__setattr__(self, "eigenvalues", np.clip(lam, 0.0, None))
        object.__setattr__(self, "projections_sq", c2)

    def residual_term(self, t: float | np.ndarray) -> np.ndarray:
        """`F(t) = sum_k c_k^2 exp(-2 eta lambda_k t)`: the NTK-linearised squared residual at time t."""
        tt = np.asarray(t, float)[..., None]
        return (self.projections_sq * np.exp(-2.0 * self.eta * self.eigenvalues * tt)).sum(-1)

    @property
    def initial(self) -> float:
        """F(0): the squared norm of the initial residual vector."""
        return float(self.projections_sq.sum())

    @property
    def limit(self) -> float:
        """F(inf): the residual energy in the kernel's null space, which training never removes."""
        null = self.eigenvalues <= self.zero_tol * max(self.eigenvalues.max(), 0.0)
        return float(self.projections_sq[null].sum())

    def time_for(self, value: float) -> float:
        """The training time t at which F(t) equals `value` (F never increases, so t is unique)."""
        lo, hi = self.limit, self.initial
        if value >= hi:
            return 0.0
        if value <= lo:
            return float("inf")
        t_hi = 1.0
        while self.residual_term(t_hi) > value:
            t_hi *= 2.0
        return float(brentq(lambda t: float(self.residual_term(t)) - value, 0.0, t_hi, xtol=1e-14, rtol=1e-14))


class Law(Protocol):
    """What every fitted law offers to selectors, the CLI and the runner."""

    name: ClassVar[str]

    def fit(self, sizes: np.ndarray, losses: np.ndarray, zero_shot: float | None = None) -> "Law": ...

    def predict(self, sizes: np.ndarray | float) -> np.ndarray: ...

    @property
    def params_(self) -> dict[str, float]: ...


class _FamilyLaw:
    """Shared estimator mechanics of the three members of the rectified family."""

    name: ClassVar[str]
    uses_zero_shot: ClassVar[bool] = False

    def _f_bounds(self) -> tuple[float, float]:
        raise NotImplementedError

    def fit(self, sizes: np.ndarray, losses: np.ndarray, zero_shot: float | None = None):
        x, y = self._points(sizes, losses, zero_shot)
        return self._store(fit_family(x, y, f_bounds=self._f_bounds()), x.size)

    def _points(self, sizes, losses, zero_shot) -> tuple[np.ndarray, np.ndarray]:
        """The (size, loss) points this law is fitted to."""
        x, y = check_curve(sizes, losses, min_points=MIN_FIT_POINTS)
        x, y = x[x > 0], y[x > 0]
        if x.size < MIN_FIT_POINTS:
            raise FitError(f"need at least {MIN_FIT_POINTS} fine-tuned points to fit, got sizes {x.tolist()}")
        if self.uses_zero_shot and zero_shot is not None:
            x = np.concatenate([[0.0], x])
            y = np.concatenate([[check_positive(zero_shot, what="zero-shot loss")], y])
        return x, y

    def _store(self, fit: FamilyFit, n_points: int):
        self.fit_ = fit
        self.n_points_ = int(n_points)
        self.converged_ = fit.converged
        self.rmse_log_ = fit.rmse_log
        self.at_bounds_ = fit.at_bounds
        if self.at_bounds_:
            warnings.warn(f"{self.name} fit has {', '.join(self.at_bounds_)} at a bound", LawWarning, stacklevel=3)
        return self

    def _fitted(self) -> FamilyFit:
        if not hasattr(self, "fit_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit() first")
        return self.fit_

    def predict(self, sizes: np.ndarray | float) -> np.ndarray:
        f = self._fitted()
        return f.loss_at(check_sizes(np.atleast_1d(sizes), what="sizes to predict"))


class VanillaLaw(_FamilyLaw):
    """`L(D) = B / D^beta + E` fitted to the fine-tuned points."""

    name = "vanilla"

    def _f_bounds(self) -> tuple[float, float]:
        return (0.0, 0.0)

    @property
    def params_(self) -> dict[str, float]:
        f = self._fitted()
        return {"B": f.B, "beta": f.beta, "E": f.E}


class RectifiedLaw(_FamilyLaw):
    """`L(D) = B / (D_l + D^beta) + E`; the zero-shot loss is the point at D = 0."""

    name = "rectified"
    uses_zero_shot = True

    def _f_bounds(self) -> tuple[float, float]:
        return (0.0, np.inf)

    @property
    def params_(self) -> dict[str, float]:
        f = self._fitted()
        return {"B": f.B, "D_l": f.F, "beta": f.beta, "E": f.E}


class LensLLMLaw(_FamilyLaw):
    """`L(D) = B / (F(Theta, t) + D^beta) + E`, F from the NTK spectrum when one is given."""

    name = "lensllm"
    uses_zero_shot = True

    def __init__(self, *, ntk: NTKSpectrum | None = None) -> None:
        self.ntk = ntk

    def _f_bounds(self) -> tuple[float, float]:
        if self.ntk is None:
            return (0.0, np.inf)
        return (self.ntk.limit, self.ntk.initial)

    @property
    def t_(self) -> float | None:
        """The fitted training time t, when F came from an NTK spectrum."""
        f = self._fitted()
        return None if self.ntk is None else self.ntk.time_for(f.F)

    @property
    def params_(self) -> dict[str, float]:
        f = self._fitted()
        params = {"B": f.B, "F": f.F, "beta": f.beta, "E": f.E}
        if self.ntk is not None:
            params["t"] = self.t_
        return params


class AtSLaw:
    """Accept-then-stop: a log-log line through the power phase of the curve.

    Walking back from the largest sizes, fit a line to the last p points (p = k, k+1, ...)
    and accept the point before them while its residual is within `delta` standard
    deviations of the fit's residuals. The published code never uses the smallest point,
    even when it passes; `use_smallest=True` keeps it in that case.
    """

    name = "ats"

    def __init__(self, *, k: int = 3, delta: float = 5.0, use_smallest: bool = False) -> None:
        self.k = k
        self.delta = delta
        self.use_smallest = use_smallest

    def fit(self, sizes: np.ndarray, losses: np.ndarray, zero_shot: float | None = None) -> "AtSLaw":
        x, y = check_curve(sizes, losses, min_points=2)
        x, y = x[x > 0], y[x > 0]
        log_x, log_y = np.log(x), np.log(y)
        if log_x.size < 2:
            raise FitError(f"AtS needs at least 2 fine-tuned points, got sizes {x.tolist()}")
        n_power = self._power_phase_length(log_x, log_y)
        slope, intercept = np.polyfit(log_x[-n_power:], log_y[-n_power:], 1)
        self.slope_, self.intercept_ = float(slope), float(intercept)
        self.n_points_ = n_power
        self.transition_size_ = float(x[-n_power])
        return self

    def _power_phase_length(self, log_x: np.ndarray, log_y: np.ndarray) -> int:
        n = log_x.size
        if n <= self.k:
            return n
        for p in range(self.k, n):
            slope, intercept = np.polyfit(log_x[-p:], log_y[-p:], 1)
            spread = (log_y[-p:] - (slope * log_x[-p:] + intercept)).std()
            miss = abs(log_y[-p - 1] - (slope * log_x[-p - 1] + intercept))
            with np.errstate(divide="ignore", invalid="ignore"):
                if miss / spread > self.delta:
                    return p
        return n if self.use_smallest else n - 1

    def predict(self, sizes: np.ndarray | float) -> np.ndarray:
        if not hasattr(self, "slope_"):
            raise NotFittedError("AtSLaw is not fitted yet: call fit() first")
        x = check_sizes(np.atleast_1d(sizes), what="sizes to predict")
        if np.any(x <= 0):
            raise CurveError("AtS predicts at sizes > 0 only (a power law is infinite at 0)")
        return np.exp(self.intercept_ + self.slope_ * np.log(x))

    @property
    def params_(self) -> dict[str, float]:
        if not hasattr(self, "slope_"):
            raise NotFittedError("AtSLaw is not fitted yet: call fit() first")
        return {"slope": self.slope_, "intercept": self.intercept_, "transition_size": self.transition_size_}


def fit_laws(laws: list[Law], sizes: np.ndarray, losses: np.ndarray, zero_shot: np.ndarray | None, names: list[str]) -> None:
    """Fit `laws[i]` to row i of `losses` (the curve of model `names[i]`).

    Members of the rectified family are fitted in one vectorised pass per group of equal
    F bounds: the same result as fitting them one by one, many times faster on a table.
    """
    groups: dict[tuple[float, float], list[int]] = {}
    for i, law in enumerate(laws):
        zero = None if zero_shot is None else float(zero_shot[i])
        if not isinstance(law, _FamilyLaw):
            _named(names[i], law.fit, sizes, losses[i], zero)
            continue
        groups.setdefault(law._f_bounds(), []).append(i)
    for f_bounds, rows in groups.items():
        points = [_named(names[i], laws[i]._points, sizes, losses[i], None if zero_shot is None else float(zero_shot[i])) for i in rows]
        x = points[0][0]
        fits = fit_family_many(x, np.stack([y for _, y in points]), f_bounds=f_bounds)
        for i, fit in zip(rows, fits):
            if fit is None:
                raise FitError(f"model {names[i]!r}: no finite fit of the {laws[i].name} law to losses {losses[i].tolist()}")
            laws[i]._store(fit, x.size)


def _named(name: str, func, *args):
    try:
        return func(*args)
    except (FitError, CurveError) as err:
        raise type(err)(f"model {name!r}: {err}") from None
