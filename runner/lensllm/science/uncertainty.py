"""How sure is a prediction of the loss at the target, and how likely is each candidate to be best?

Each candidate's curve is fitted with the LENSLLM law (`B / (F + D^beta) + E`; without an
NTK summary it has the rectified form), and a parametric bootstrap gives its predictive
distribution at the target size: the fitted curve plus log-normal noise, refitted many
times; the prediction is the draws' mean in log space (bagging). The noise level is pooled
over every curve assessed together (one dataset, one recipe, so one measurement noise):
with a handful of points per curve and four parameters, a single curve's residuals say
almost nothing about its noise, thirty curves' do. The zero-shot point is not resampled:
it is measured on the fixed test set, not after training on a random subset.

What the bootstrap does not see is the law being wrong far from the data; the intervals
are conditional on the law, and docs/benchmarks.md measures how often they hold.

Called by `lensllm.science.racing`; pure and deterministic under the seed it is given.
"""

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lensllm.errors import FitError
from lensllm.science.checks import check_curve, check_positive
from lensllm.science.fitting import family_loss, fit_family_many, refit_family_many

N_LAW_PARAMS = 4
MIN_FITTED_POINTS = 3
# A perfect fit would make every bootstrap draw identical; real subset fine-tunes never
# repeat to better than this (log-space standard deviation, about 0.2%).
MIN_LOG_NOISE = 2e-3
_F_BOUNDS = (0.0, np.inf)


@dataclass(frozen=True)
class MeasuredCurve:
    """One candidate's measured points: losses after fine-tuning on `sizes` examples, and the zero-shot loss."""

    name: str
    sizes: np.ndarray
    losses: np.ndarray
    zero_shot: float | None = None

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """The (size, loss) points the law is fitted to, the zero-shot loss first as size 0."""
        x, y = check_curve(self.sizes, self.losses, min_points=MIN_FITTED_POINTS)
        if np.any(x <= 0):
            raise FitError(f"candidate {self.name!r}: fine-tuned sizes must be > 0, got {x.tolist()}")
        if self.zero_shot is None:
            return x, y
        zero = check_positive(self.zero_shot, what=f"zero-shot loss of {self.name!r}")
        return np.concatenate([[0.0], x]), np.concatenate([[zero], y])


@dataclass(frozen=True)
class Predictive:
    """A candidate's predicted loss at the target: the law fitted to its points, and bootstrap draws."""

    name: str
    fitted: float
    draws: np.ndarray

    @property
    def loss(self) -> float:
        """The bagged prediction: the draws' mean in log space. Steadier than the single fit far
        from the data (on the published tables it correlates better with the truth at every budget)."""
        return float(np.exp(np.mean(np.log(self.draws))))

    def interval(self, level: float) -> tuple[float, float]:
        """The central `level` interval of the draws."""
        lo, hi = np.quantile(self.draws, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
        return float(lo), float(hi)


def predictive_distributions(
    curves: Sequence[MeasuredCurve], target: float, *, draws: int, seed: Sequence[int]
) -> tuple[list[Predictive], float]:
    """Each curve's predictive distribution of the loss at `target`, and the pooled log-space noise used.

    `seed` (e.g. (selection seed, round)) and each candidate's name seed its draws, so a
    candidate's draws do not depend on which other candidates are assessed with it.
    """
    check_positive(target, what="target size")
    groups = _by_points(curves)
    fits = {}
    for x, members in groups.items():
        rows = fit_family_many(np.array(x), np.stack([curves[i].points()[1] for i in members]), f_bounds=_F_BOUNDS)
        for i, fit in zip(members, rows):
            if fit is None:
                raise FitError(f"candidate {curves[i].name!r}: no finite fit of the law to its points")
            fits[i] = fit
    noise = _pooled_noise(curves, fits)
    out: dict[int, Predictive] = {}
    for x, members in groups.items():
        found = _bootstrap(np.array(x), [curves[i].name for i in members], [fits[i] for i in members], target, draws, seed, noise)
        out.update(zip(members, found))
    return [out[i] for i in range(len(curves))], noise


def _bootstrap(x, names, fits, target, draws, seed, noise) -> list[Predictive]:
    """Refit `draws` noisy copies of each fitted curve (all measured at `x`) in one vectorised pass."""
    params = np.array([[f.B, f.F, f.beta, f.E] for f in fits])
    fitted = family_loss(x[None, :], *(params[:, k : k + 1] for k in range(4)))
    z = np.stack([np.random.default_rng([*seed, zlib.crc32(n.encode())]).standard_normal((draws, x.size)) for n in names])
    z[..., x == 0] = 0.0
    resampled = (fitted[:, None, :] * np.exp(noise * z)).reshape(-1, x.size)
    refits = refit_family_many(x, resampled, np.repeat(params, draws, axis=0), f_bounds=_F_BOUNDS)
    at_target = family_loss(float(target), *refits.T).reshape(len(names), draws)
    point = family_loss(float(target), *params.T)
    # A resample with no finite refit (rare) counts as the fitted curve itself.
    at_target = np.where(np.isfinite(at_target), at_target, point[:, None])
    return [Predictive(name, float(point[j]), at_target[j]) for j, name in enumerate(names)]


def _by_points(curves: Sequence[MeasuredCurve]) -> dict[tuple[float, ...], list[int]]:
    """Indices of curves measured at the same sizes, which one vectorised fit can share."""
    groups: dict[tuple[float, ...], list[int]] = {}
    for i, curve in enumerate(curves):
        groups.setdefault(tuple(curve.points()[0].tolist()), []).append(i)
    return groups


def _pooled_noise(curves: Sequence[MeasuredCurve], fits: dict) -> float:
    """Residual standard deviation in log space, pooled over every fit with spare degrees of freedom."""
    sizes = [curves[i].points()[0].size for i in range(len(curves))]
    sse = sum(fits[i].rmse_log ** 2 * n for i, n in enumerate(sizes))
    dof = sum(max(n - N_LAW_PARAMS, 0) for n in sizes)
    return max(float(np.sqrt(sse / dof)) if dof > 0 else 0.0, MIN_LOG_NOISE)


def probability_best(draws: np.ndarray) -> np.ndarray:
    """P(best) of every candidate from independent draws of their losses (one row per candidate).

    Rao-Blackwellised: for each draw of candidate i, the exact probability under the other
    candidates' empirical distributions that all of them are higher; averaged over i's
    draws. Smoother than counting argmins, and it sums to 1 when no two draws tie.
    """
    d = np.asarray(draws, float)
    m, n = d.shape
    if m == 1:
        return np.ones(1)
    ordered = np.sort(d, axis=1)
    flat = d.ravel()
    # higher[k, j]: fraction of candidate k's draws strictly above flat draw j.
    higher = 1.0 - np.stack([np.searchsorted(ordered[k], flat, side="right") for k in range(m)]) / n
    higher = higher.reshape(m, m, n)
    higher[np.arange(m), np.arange(m)] = 1.0
    return np.prod(higher, axis=0).mean(axis=1)
