"""Deterministic least-squares fitting of the rectified family `L(D) = B / (F + D^beta) + E`.

The vanilla, rectified and LENSLLM laws are all members of this family; they differ
only in the interval allowed for F (0; [0, inf); an NTK-derived interval) and in which
points they see. Fitting is a global grid search followed by a local refinement, both
vectorised over every curve of a table at once:

1. Grid over (beta, F). For fixed (beta, F) the model is linear in (B, E), so the best
   (B, E) under relative (~log-space) error has a closed form. This makes the fit
   independent of any random start (the published code restarts from random points and
   returns different fits on different runs).
2. Refine the best cells with a bounded Levenberg-Marquardt on the exact log-space
   residuals with an analytic Jacobian, iterated until the cost stops moving at machine
   precision, far below what a 1e-9 perturbation of the inputs could move.

Called by `lensllm.science.laws`, and by `lensllm.science.uncertainty`, which refits
bootstrap resamples of a fitted curve warm-started from that fit (`refit_family_many`).
"""

from dataclasses import dataclass

import numpy as np

from lensllm.errors import FitError

BETA_BOUNDS = (1e-3, 3.0)
LOG_B_BOUNDS = (-50.0, 80.0)
# F below exp(-25) is indistinguishable from 0 next to D^beta >= 1 (sizes are counts).
LOG_F_FLOOR = -25.0
LOG_F_CEIL = 40.0
_GRID_BETAS = np.linspace(0.02, 2.0, 67)
_GRID_LOG_F = np.linspace(-6.0, 28.0, 52)
_REFINE_STARTS = 3
_MAX_ITER = 400


@dataclass(frozen=True)
class FamilyFit:
    """Best parameters of the family for one curve and how well they fit."""

    B: float
    F: float
    beta: float
    E: float
    rmse_log: float
    converged: bool
    at_bounds: tuple[str, ...]

    def loss_at(self, sizes: np.ndarray | float) -> np.ndarray:
        """The fitted curve at every size given."""
        return family_loss(sizes, self.B, self.F, self.beta, self.E)


def family_loss(sizes: np.ndarray, B: float, F: float, beta: float, E: float) -> np.ndarray:
    """`B / (F + D^beta) + E`, evaluated at every size D (D = 0 allowed)."""
    return B / (F + np.power(sizes, beta)) + E


def fit_family(sizes: np.ndarray, losses: np.ndarray, *, f_bounds: tuple[float, float]) -> FamilyFit:
    """Fit `B / (F + D^beta) + E` to one curve in log space, with F constrained to `f_bounds`."""
    fit = fit_family_many(sizes, np.asarray(losses, float)[None, :], f_bounds=f_bounds)[0]
    if fit is None:
        raise FitError(f"no finite fit of the law to sizes {np.asarray(sizes).tolist()} and losses {np.asarray(losses).tolist()}")
    return fit


def fit_family_many(
    sizes: np.ndarray, losses: np.ndarray, *, f_bounds: tuple[float, float]
) -> list[FamilyFit | None]:
    """Fit the family to every row of `losses` (one curve per row, all at `sizes`); None where no finite fit exists."""
    x, y = np.asarray(sizes, float), np.asarray(losses, float)
    free_f = f_bounds[1] > 0.0
    lower, upper = _bounds(y, f_bounds, free_f)
    starts = _grid_starts(x, y, _grid_log_f(f_bounds))  # (m, s, 4)
    m, s = starts.shape[:2]
    theta0 = starts[..., : lower.shape[1]]
    theta0 = np.clip(theta0, lower[:, None, :], upper[:, None, :]).reshape(m * s, -1)
    rows = np.repeat(np.arange(m), s)
    theta, cost, converged = _levenberg_marquardt(theta0, x, np.log(y)[rows], lower[rows], upper[rows], free_f)
    cost = np.where(np.isfinite(cost), cost, np.inf).reshape(m, s)
    pick = np.argmin(cost, axis=1)
    fits = []
    for i in range(m):
        j = i * s + pick[i]
        if not np.isfinite(cost[i, pick[i]]):
            fits.append(None)
            continue
        fits.append(_to_family_fit(theta[j], float(cost[i, pick[i]]), bool(converged[j]), lower[i], upper[i], x.size))
    return fits


def refit_family_many(
    sizes: np.ndarray, losses: np.ndarray, starts: np.ndarray, *, f_bounds: tuple[float, float]
) -> np.ndarray:
    """Refine every row of `losses` from its own start, skipping the grid search.

    `starts` and the result hold one row of (B, F, beta, E) per curve; a row is NaN where the
    refit is not finite. Meant for curves close to one already fitted (bootstrap resamples):
    the grid search is what makes `fit_family_many` global, and costs ~20x the refinement.
    """
    x, y = np.asarray(sizes, float), np.asarray(losses, float)
    start = np.asarray(starts, float)
    free_f = f_bounds[1] > 0.0
    lower, upper = _bounds(y, f_bounds, free_f)
    with np.errstate(divide="ignore"):
        theta0 = np.column_stack([np.log(start[:, 0]), start[:, 3], start[:, 2], np.log(start[:, 1])])
    theta0 = np.clip(theta0[:, : lower.shape[1]], lower, upper)
    theta, cost, _ = _levenberg_marquardt(theta0, x, np.log(y), lower, upper, free_f)
    f = np.exp(theta[:, 3]) if free_f else np.zeros(theta.shape[0])
    out = np.column_stack([np.exp(theta[:, 0]), f, theta[:, 2], theta[:, 1]])
    out[~np.isfinite(cost)] = np.nan
    return out


def _bounds(y: np.ndarray, f_bounds: tuple[float, float], free_f: bool) -> tuple[np.ndarray, np.ndarray]:
    m = y.shape[0]
    log_f_lo = np.log(f_bounds[0]) if f_bounds[0] > 0 else LOG_F_FLOOR
    log_f_hi = max(min(np.log(f_bounds[1]), LOG_F_CEIL), log_f_lo) if free_f else 0.0
    lower = np.tile([LOG_B_BOUNDS[0], 0.0, BETA_BOUNDS[0], log_f_lo], (m, 1))
    upper = np.tile([LOG_B_BOUNDS[1], 0.0, BETA_BOUNDS[1], log_f_hi], (m, 1))
    # The irreducible loss E cannot exceed the smallest observed loss.
    upper[:, 1] = y.min(axis=1) * (1.0 - 1e-9)
    n_par = 4 if free_f else 3
    return lower[:, :n_par], upper[:, :n_par]


def _grid_log_f(f_bounds: tuple[float, float]) -> np.ndarray:
    lo, hi = f_bounds
    if hi <= 0.0:
        return np.array([-np.inf])
    if lo > 0.0:
        return np.linspace(np.log(lo), np.log(hi), 25) if hi > lo else np.array([np.log(lo)])
    return np.concatenate([[-np.inf], _GRID_LOG_F[_GRID_LOG_F <= np.log(hi)]])


def _grid_starts(x: np.ndarray, y: np.ndarray, log_f: np.ndarray) -> np.ndarray:
    """(log B, E, beta, log F) of the best grid cells per curve, at most one per beta value."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        powers = np.power(x[None, :], _GRID_BETAS[:, None])  # (nb, n)
        den = np.exp(log_f)[None, :, None] + powers[:, None, :]  # (nb, nf, n)
        a = 1.0 / (den[None] * y[:, None, None, :])  # (m, nb, nf, n): B's column over y
        b = 1.0 / y[:, None, None, :]  # E's column over y
        saa, sab, sa = (a * a).sum(-1), (a * b).sum(-1), a.sum(-1)
        sbb, sb = (b * b).sum(-1), b.sum(-1)
        det = saa * sbb - sab * sab
        B = (sa * sbb - sb * sab) / det
        E = (sb * saa - sa * sab) / det
        e_low = E < 0  # E is an irreducible loss: clamp it to 0 and refit B alone
        B = np.where(e_low, sa / saa, B)
        E = np.where(e_low, 0.0, E)
        # A flat or rising curve wants B <= 0: keep B at its floor and fit the constant E alone.
        b_low = B <= 0
        B = np.where(b_low, np.exp(LOG_B_BOUNDS[0]), B)
        E = np.where(b_low, sb / sbb, E)
        cost = ((B[..., None] * a + E[..., None] * b - 1.0) ** 2).sum(-1)  # (m, nb, nf)
        cost = np.where(np.isfinite(cost), cost, np.inf)
        best_f = np.argmin(cost, axis=2)  # best F per (curve, beta)
        per_beta = np.take_along_axis(cost, best_f[..., None], 2)[..., 0]  # (m, nb)
        order = np.argsort(per_beta, axis=1, kind="stable")[:, :_REFINE_STARTS]
        jf = np.take_along_axis(best_f, order, 1)
        take = lambda arr: arr[np.arange(y.shape[0])[:, None], order, jf]  # noqa: E731
        log_b = np.log(take(B))
    return np.stack([log_b, take(E), _GRID_BETAS[order], np.broadcast_to(log_f[jf], order.shape)], axis=-1)


def _residuals(theta: np.ndarray, x: np.ndarray, log_y: np.ndarray, free_f: bool, with_jac: bool):
    log_b, e, beta = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
    f = np.exp(theta[:, 3:4]) if free_f else 0.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        power = np.power(x[None, :], beta)
        den = f + power
        core = np.exp(log_b) / den
        model = core + e
        resid = np.log(model) - log_y
    if not with_jac:
        return resid, None
    log_x = np.log(np.where(x > 0, x, 1.0))[None, :]  # D = 0 contributes D^beta log D = 0
    cols = [core, np.ones_like(core), -core * power * log_x / den]
    if free_f:
        cols.append(-core * f / den)
    return resid, np.stack(cols, axis=-1) / model[..., None]


def _cost(resid: np.ndarray) -> np.ndarray:
    cost = 0.5 * (resid * resid).sum(-1)
    return np.where(np.isfinite(cost), cost, np.inf)


def _levenberg_marquardt(theta, x, log_y, lower, upper, free_f):
    """Projected Levenberg-Marquardt on many small problems at once (one per row of theta)."""
    resid, jac = _residuals(theta, x, log_y, free_f, with_jac=True)
    cost = _cost(resid)
    lam = np.full(theta.shape[0], 1e-3)
    done = ~np.isfinite(cost)
    eye = np.eye(theta.shape[1])
    for _ in range(_MAX_ITER):
        active = ~done
        if not active.any():
            break
        th, r, J = theta[active], resid[active], jac[active]
        g = np.einsum("mnp,mn->mp", J, r)
        jtj = np.einsum("mnp,mnq->mpq", J, J)
        # A variable on a bound whose gradient pushes it outwards stays there this step.
        pinned = ((th <= lower[active]) & (g > 0)) | ((th >= upper[active]) & (g < 0))
        diag = np.einsum("mpp->mp", jtj)
        damp = lam[active, None] * (diag + 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300)
        A = jtj + damp[..., None] * eye
        keep = ~pinned
        A = A * keep[:, :, None] * keep[:, None, :] + pinned[:, :, None] * eye
        step = -np.linalg.solve(A, (g * keep)[..., None])[..., 0]
        trial = np.clip(th + step, lower[active], upper[active])
        r_new, J_new = _residuals(trial, x, log_y[active], free_f, with_jac=True)
        c_new = _cost(r_new)
        c_old = cost[active]
        better = c_new < c_old
        idx = np.flatnonzero(active)
        theta[idx[better]], resid[idx[better]], jac[idx[better]] = trial[better], r_new[better], J_new[better]
        cost[idx[better]] = c_new[better]
        lam[idx] = np.where(better, np.maximum(lam[idx] / 3.0, 1e-12), lam[idx] * 4.0)
        moved = np.abs(trial - th).max(axis=1)
        stalled = (~better & (lam[idx] > 1e12)) | (better & ((c_old - c_new) <= 1e-15 * c_old + 1e-300) & (moved <= 1e-10))
        done[idx[stalled]] = True
    return theta, cost, done


def _to_family_fit(theta, cost, converged, lower, upper, n) -> FamilyFit:
    names = ("B", "E", "beta", "F")[: theta.size]
    span = np.maximum(upper - lower, 1.0)
    at_low = theta - lower <= 1e-9 * span
    at_high = upper - theta <= 1e-9 * span
    # E = 0 and F at its floor are ordinary answers (no offset, no pre-learned data), not warnings.
    suspicious = at_high | (at_low & np.array([name not in ("E", "F") for name in names]))
    return FamilyFit(
        B=float(np.exp(theta[0])),
        F=float(np.exp(theta[3])) if theta.size == 4 else 0.0,
        beta=float(theta[2]),
        E=float(theta[1]),
        rmse_log=float(np.sqrt(2.0 * cost / n)),
        converged=converged,
        at_bounds=tuple(name for name, flag in zip(names, suspicious) if flag),
    )
