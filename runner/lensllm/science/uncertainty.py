"""How sure is a prediction of the loss at the target, and how likely is each candidate to be best?

Every candidate's curve is fitted with each law offered, and the law whose fits leave the
smaller residual, pooled over the candidates, is the one that extrapolates: no single law
fits every dataset (the LENSLLM law wins on the published FLAN and Gigaword tables, the
vanilla law on the early, small sizes of WMT19, where zero-shot losses sit far above the
first fine-tuned point). Both laws fit with the same degrees of freedom per curve (the
LENSLLM law has one more parameter and one more point, the zero-shot loss), so their
residuals compare fairly. A parametric bootstrap of the chosen law gives each candidate's
predictive distribution at the target size: the fitted curve plus log-normal noise at the
pooled residual level, refitted many times. The prediction is the draws' mean in log space
(bagging). The laws:

- `lensllm`: `B / (F + D^beta) + E` with the zero-shot loss as the point D = 0 (without an
  NTK summary it has the rectified form; `lensllm.science.laws.LensLLMLaw`);
- `vanilla`: `B / D^beta + E` on the fine-tuned points only (`VanillaLaw`).

Curves of three fine-tuned sizes (a race that starts on three) leave neither law a spare point,
so no residual to measure the noise by. They are predicted by a plain power law, `B / D^beta`: a
straight line in log-log space fitted by least squares, with one spare point per curve. Its
bootstrap is exact and needs no refitting: a refit to noisy copies moves the log prediction by
a fixed linear combination of the noise. It cannot level off, so far from the data it predicts
too low; what the race needs from round 0 is the order of the candidates, and the laws take over
from four sizes on (docs/benchmarks.md).

The noise level is pooled over every curve assessed together (one dataset, one recipe, so
one measurement noise): with a handful of points per curve and four parameters,
a single curve's residuals say almost nothing about its noise, thirty curves' do. The
zero-shot point is not resampled: it is measured on the fixed test set, not after training
on a random subset.

What the bootstrap does not see is the law being wrong far from the data: alone, its 90%
intervals held the true loss of a race's finalists about half the time on the benchmark tables
(docs/benchmarks.md). So the intervals reported are widened by a backtest of the same assessment:
each curve's largest size is predicted from its first sizes (four where it has five or more), and
the log errors, per unit of log reach, pooled over every curve measured (those of candidates a race
has eliminated too), are scaled to each candidate's reach to the target, as if the law's error
grows in proportion to how far it reaches. Widened, they still held less than their level out of
sample (half of the finalists on a held-out LensBench draw, where curves kept steepening past the
sizes the backtest reaches): a race's own curves are too few and too short to see how far the law
errs eight times past them. So every interval reaches at least as far as the law erred on the
benchmark: the spread of log(true / predicted) per unit of log reach over the race's final
predictions on the benchmark's tables (`lensllm.science.benchmark_errors`, measured by `lensllm
lensbench calibrate`), one spread for rounds the power law predicts and one for the laws, scaled to
the candidate's reach. The draws, and so P(best), stay the bootstrap's: an error all candidates
share does not reorder them.

Each law also names its leader, the candidate its own fit predicts best: where the laws' leaders
differ, the ranking hangs on which law is right, and the race keeps every leader.

One kind of candidate makes the laws wrong in a known direction: one with nothing of the task's
language to transfer, whose zero-shot loss is no better than a uniform guess over its vocabulary
(random weights, or pre-training on unrelated text). It learns from scratch, and on the subsets
its curve is flat and then drops steeply; a law extends that drop far past the data, while such
a model levels off long before the target (LensBench, docs/benchmarks.md). Such a candidate is
predicted by whichever law predicts it worst.

Called by `lensllm.science.racing`; pure and deterministic under the seed it is given.
"""

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lensllm.errors import CurveError, FitError
from lensllm.science import benchmark_errors
from lensllm.science.checks import check_curve, check_positive
from lensllm.science.curves import learns_from_scratch
from lensllm.science.fitting import FamilyFit, family_loss, fit_family, fit_family_many, refit_family_many

MIN_FITTED_POINTS = 3
# With fewer fine-tuned points than this, the laws leave no residual: the power law predicts.
MIN_LAW_POINTS = 4
POWER_LAW = "power"
# A perfect fit would make every bootstrap draw identical; real subset fine-tunes never
# repeat to better than this (log-space standard deviation, about 0.2%).
MIN_LOG_NOISE = 2e-3
# The backtest needs only the centre of each prediction: a few draws bag it as the target's draws do.
BACKTEST_DRAWS = 8
# Every 2.5%: the central 80%, 90% and 95% intervals fall on the grid.
ERROR_PROBABILITIES = tuple(np.linspace(0.0, 1.0, 41).tolist())


@dataclass(frozen=True)
class ExtrapolationErrors:
    """How far predictions at a target missed elsewhere: quantiles of log(true / predicted) per unit of log reach
    at ERROR_PROBABILITIES, for rounds predicted by the power law and by the laws."""

    power: tuple[float, ...]
    laws: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("power", "laws"):
            q = np.asarray(getattr(self, name), float)
            if q.shape != (len(ERROR_PROBABILITIES),) or not np.all(np.isfinite(q)) or np.any(np.diff(q) < 0):
                raise CurveError(f"extrapolation errors {name}: need {len(ERROR_PROBABILITIES)} finite, non-decreasing quantiles")

    @classmethod
    def measured(cls, power: Sequence[float], laws: Sequence[float]) -> "ExtrapolationErrors":
        """The quantiles of measured errors per unit of log reach, by the predictor that made them."""
        return cls(*(tuple(float(q) for q in np.quantile(_some(e, name), ERROR_PROBABILITIES))
                     for e, name in ((power, "power"), (laws, "laws"))))

    def at_reach(self, law: str, reach: float) -> np.ndarray:
        """The quantiles of the log error of a prediction `reach` (log of target over largest size) away, by `law`."""
        return reach * np.asarray(self.power if law == POWER_LAW else self.laws)


def _some(errors: Sequence[float], name: str) -> np.ndarray:
    e = np.asarray(errors, float)
    if e.size == 0 or not np.all(np.isfinite(e)):
        raise CurveError(f"extrapolation errors {name}: need at least one finite error, got {e.size}")
    return e


# What the benchmark's tables say, as `lensllm lensbench calibrate` measured it.
BENCHMARK_ERRORS = ExtrapolationErrors(benchmark_errors.POWER, benchmark_errors.LAWS)


@dataclass(frozen=True)
class _LawSpec:
    f_bounds: tuple[float, float]
    uses_zero_shot: bool

    @property
    def n_params(self) -> int:
        return 4 if self.f_bounds[1] > 0 else 3


# The same bounds and points as the estimators of lensllm.science.laws use.
LAWS = {"lensllm": _LawSpec((0.0, np.inf), True), "vanilla": _LawSpec((0.0, 0.0), False)}


@dataclass(frozen=True)
class MeasuredCurve:
    """One candidate's measured points: losses after fine-tuning on `sizes` examples, and the zero-shot loss."""

    name: str
    sizes: np.ndarray
    losses: np.ndarray
    zero_shot: float | None = None
    uniform: float | None = None  # a uniform guess's loss on the same test set, in the losses' unit

    @property
    def learns_from_scratch(self) -> bool:
        return learns_from_scratch(self.zero_shot, self.uniform)

    def points(self, with_zero_shot: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The (size, loss) points a law is fitted to, the zero-shot loss first as size 0 when asked and known."""
        try:
            x, y = check_curve(self.sizes, self.losses, min_points=MIN_FITTED_POINTS)
        except (CurveError, FitError) as err:
            raise type(err)(f"candidate {self.name!r}: {err}") from None
        if np.any(x <= 0):
            raise FitError(f"candidate {self.name!r}: fine-tuned sizes must be > 0, got {x.tolist()}")
        if self.zero_shot is None or not with_zero_shot:
            return x, y
        zero = check_positive(self.zero_shot, what=f"zero-shot loss of {self.name!r}")
        return np.concatenate([[0.0], x]), np.concatenate([[zero], y])


@dataclass(frozen=True)
class Predictive:
    """A candidate's predicted loss at the target: bootstrap draws of every law, pooled."""

    name: str
    draws: np.ndarray
    # The backtest's log errors scaled to this candidate's horizon: what the law's own error may add.
    extrapolation: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # The benchmark's log errors at this candidate's horizon, at ERROR_PROBABILITIES: what the law erred elsewhere.
    elsewhere: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def loss(self) -> float:
        """The bagged prediction: the draws' mean in log space. Steadier than the single fit far
        from the data (on the published tables it correlates better with the truth at every budget)."""
        return float(np.exp(np.mean(np.log(self.draws))))

    def interval(self, level: float) -> tuple[float, float]:
        """The central `level` interval of the draws, widened to the central `level` of the backtest's and the
        benchmark's errors around the prediction where those reach further."""
        quantiles = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
        lo, hi = np.quantile(self.draws, quantiles)
        far = []
        if self.extrapolation.size:
            far.append(np.quantile(self.extrapolation, quantiles))
        if self.elsewhere.size:
            far.append(np.interp(quantiles, ERROR_PROBABILITIES, self.elsewhere))
        for far_lo, far_hi in far:
            lo, hi = min(lo, self.loss * np.exp(far_lo)), max(hi, self.loss * np.exp(far_hi))
        return float(lo), float(hi)


@dataclass(frozen=True)
class Assessed:
    """The predictive distributions of one round, the law they come from, each law's pooled noise,
    each law's leader (the candidate its fit predicts lowest at the target), and the candidates that
    learn the task from scratch (predicted by whichever law predicts them worst)."""

    predictive: list[Predictive]
    law: str
    noise: dict[str, float]
    leaders: dict[str, str]
    from_scratch: tuple[str, ...]


def predictive_distributions(
    curves: Sequence[MeasuredCurve],
    target: float,
    *,
    draws: int,
    seed: Sequence[int],
    laws: Sequence[str] = tuple(LAWS),
    backtested: Sequence[MeasuredCurve] = (),
    elsewhere: ExtrapolationErrors | None = BENCHMARK_ERRORS,
) -> Assessed:
    """Each curve's predictive distribution of the loss at `target` under the best-fitting of `laws`.

    `seed` (e.g. (selection seed, round)) and each candidate's name seed its draws, so a
    candidate's draws do not depend on which other candidates are assessed with it. Each
    prediction carries the backtest's errors scaled to its horizon (none while every curve has
    fewer than three fine-tuned sizes) and `elsewhere`'s errors at that horizon (none: no floor).
    """
    assessed = _assess(curves, target, draws, seed, laws)
    errors = _backtest_errors([*curves, *backtested], seed, laws)
    widened = []
    for c, p in zip(curves, assessed.predictive):
        reach = _horizon(c, target)
        if errors.size:
            p = dataclasses.replace(p, extrapolation=reach * errors)
        if elsewhere is not None:
            p = dataclasses.replace(p, elsewhere=elsewhere.at_reach(assessed.law, reach))
        widened.append(p)
    return dataclasses.replace(assessed, predictive=widened)


def _backtest_errors(curves: Sequence[MeasuredCurve], seed: Sequence[int], laws: Sequence[str]) -> np.ndarray:
    """Per unit of log reach, log(measured) - log(predicted) of every curve's largest fine-tuned size, predicted the
    way the target is from the curve's first sizes."""
    errors: list[float] = []
    for (kept, size), group in _cut_back(curves).items():
        predicted = _predicted_from_first_sizes([c for c, _ in group], size, seed, laws)
        reach = np.log(size / kept[-1])
        errors += [(np.log(measured) - np.log(p)) / reach for (_, measured), p in zip(group, predicted)]
    return np.array(errors)


def _cut_back(curves: Sequence[MeasuredCurve]) -> dict[tuple[tuple[float, ...], float], list[tuple[MeasuredCurve, float]]]:
    """Each curve of three or more fine-tuned sizes cut back to its first MIN_LAW_POINTS sizes (and always by at least
    one), with the loss at its largest size; grouped by the sizes kept and that largest size."""
    groups: dict[tuple[tuple[float, ...], float], list[tuple[MeasuredCurve, float]]] = {}
    for c in curves:
        try:
            x, y = c.points(False)
        except (CurveError, FitError):  # too few or unusable points: nothing to hold out
            continue
        if x.size > 2:
            kept = max(min(MIN_LAW_POINTS, x.size - 1), 2)
            cut = dataclasses.replace(c, sizes=x[:kept], losses=y[:kept])
            groups.setdefault((tuple(x[:kept].tolist()), float(x[-1])), []).append((cut, float(y[-1])))
    return groups


def _predicted_from_first_sizes(cut: Sequence[MeasuredCurve], size: float, seed: Sequence[int], laws: Sequence[str]) -> list[float]:
    """Cut-back curves' losses at `size`, as a round predicts (from two sizes, by the line through them); none when no
    law fits them."""
    if cut[0].sizes.size < MIN_FITTED_POINTS:
        return [_line_through_two(c, size) for c in cut]
    try:
        return [p.loss for p in _assess(cut, size, BACKTEST_DRAWS, seed, laws).predictive]
    except FitError:
        return []


def _line_through_two(curve: MeasuredCurve, size: float) -> float:
    """The loss at `size` on the straight line in log-log space through the curve's two points."""
    (x0, x1), (y0, y1) = np.log(curve.sizes), np.log(curve.losses)
    return float(np.exp(y1 + (y1 - y0) * (np.log(size) - x1) / (x1 - x0)))


def _horizon(curve: MeasuredCurve, target: float) -> float:
    """How far the prediction reaches: log(target / largest fine-tuned size), none inside the measured sizes."""
    return max(float(np.log(target / curve.points(False)[0][-1])), 0.0)


def _assess(curves: Sequence[MeasuredCurve], target: float, draws: int, seed: Sequence[int], laws: Sequence[str]) -> Assessed:
    """The predictive distributions at `target` under the best-fitting law, without the backtest."""
    check_positive(target, what="target size")
    if min(c.points(False)[0].size for c in curves) < MIN_LAW_POINTS:
        return _power_law_assessment(curves, target, draws, seed, laws)
    fitted = {law: _fit_all(curves, LAWS[law]) for law in laws}
    noise = {law: pooled for law, (_, _, pooled) in fitted.items()}
    law = min(laws, key=lambda name: noise[name])  # ties keep the order given
    everyone = set(range(len(curves)))
    out = _draws(curves, fitted[law], LAWS[law], noise[law], everyone, target, draws, seed)
    from_scratch = {i for i, c in enumerate(curves) if c.learns_from_scratch}
    if from_scratch:
        by_law = {other: _draws(curves, fitted[other], LAWS[other], noise[other], from_scratch, target, draws, seed)
                  for other in laws if other != law}
        for i in from_scratch:
            out[i] = max([out[i], *(found[i] for found in by_law.values())], key=lambda d: float(np.mean(np.log(d))))
    leaders = {name: curves[_leader(fits_, target)].name for name, (_, fits_, _) in fitted.items()}
    return Assessed([Predictive(c.name, out[i]) for i, c in enumerate(curves)], law, noise, leaders,
                    tuple(c.name for i, c in enumerate(curves) if i in from_scratch))


def _power_law_assessment(curves: Sequence[MeasuredCurve], target: float, draws: int, seed: Sequence[int], laws: Sequence[str]) -> Assessed:
    """Every curve predicted by `B / D^beta` fitted in log-log space, with its exact parametric bootstrap."""
    points = [c.points(False) for c in curves]
    predicted = np.empty(len(curves))
    weights: list[np.ndarray] = [np.empty(0)] * len(curves)
    sse, dof = 0.0, 0
    for x, members in _by_sizes(points).items():
        design = _log_log_design(np.array(x))
        log_losses = np.log(np.stack([points[i][1] for i in members], axis=1))
        coef = np.linalg.lstsq(design, log_losses, rcond=None)[0]
        sse += float(np.sum((log_losses - design @ coef) ** 2))
        dof += len(members) * (len(x) - 2)
        # The log prediction is a linear combination of the log losses: a refit to noise e moves it by w . e.
        w = np.array([1.0, np.log(target)]) @ np.linalg.pinv(design)
        for k, i in enumerate(members):
            predicted[i] = float(w @ log_losses[:, k])
            weights[i] = w
    noise = max(float(np.sqrt(sse / dof)), MIN_LOG_NOISE)
    from_scratch = tuple(c.name for c in curves if c.learns_from_scratch)
    out = []
    for c, centre, w in zip(curves, predicted, weights):
        if c.name in from_scratch:
            centre = max(centre, _worst_exact_fit(c, target, laws))
        z = np.random.default_rng([*seed, zlib.crc32(c.name.encode())]).standard_normal((draws, w.size))
        out.append(Predictive(c.name, np.exp(centre + noise * (z @ w))))
    leader = curves[int(np.argmin(predicted))].name
    return Assessed(out, POWER_LAW, {POWER_LAW: noise}, {POWER_LAW: leader}, from_scratch)


def _worst_exact_fit(curve: MeasuredCurve, target: float, laws: Sequence[str]) -> float:
    """The highest log loss at `target` that any of `laws`, fitted to the curve, predicts."""
    return max(float(np.log(fit_law(curve, law).loss_at(float(target)))) for law in laws)


def _draws(curves, fitted, law: _LawSpec, noise: float, members: set[int], target, draws, seed) -> dict[int, np.ndarray]:
    """The bootstrap draws at `target` of the curves in `members` under one law, by index."""
    points, fits, _ = fitted
    out: dict[int, np.ndarray] = {}
    for x, group in _by_sizes(points).items():
        chosen = [i for i in group if i in members]
        if chosen:
            found = _bootstrap(np.array(x), [curves[i].name for i in chosen], [fits[i] for i in chosen], law, target, draws, seed, noise)
            out.update(zip(chosen, found))
    return out


def _leader(fits: Sequence[FamilyFit], target: float) -> int:
    """Index of the fit that predicts the lowest loss at `target` (ties: the first)."""
    return int(np.argmin([f.loss_at(float(target)) for f in fits]))


def fit_law(curve: MeasuredCurve, law: str) -> FamilyFit:
    """One curve's fit under `law` (or the power law), on the points that law sees: the curve a race's round bootstraps."""
    if law == POWER_LAW:
        return _fit_power_law(*curve.points(False))
    spec = LAWS[law]
    x, y = curve.points(spec.uses_zero_shot)
    return fit_family(x, y, f_bounds=spec.f_bounds)


def _log_log_design(x: np.ndarray) -> np.ndarray:
    """The least-squares design of `log L = log B - beta log D`: columns 1 and log D."""
    return np.column_stack([np.ones(len(x)), np.log(x)])


def _fit_power_law(x: np.ndarray, y: np.ndarray) -> FamilyFit:
    """`B / D^beta` (the family with F = E = 0) by least squares in log-log space."""
    design = _log_log_design(x)
    coef = np.linalg.lstsq(design, np.log(y), rcond=None)[0]
    residual = np.log(y) - design @ coef
    return FamilyFit(float(np.exp(coef[0])), 0.0, float(-coef[1]), 0.0, float(np.sqrt(np.mean(residual**2))), True, ())


def _fit_all(curves: Sequence[MeasuredCurve], law: _LawSpec) -> tuple[list, list, float]:
    """Every curve's points and fit under `law` (one vectorised fit per set of sizes), and the pooled noise."""
    points = [c.points(law.uses_zero_shot) for c in curves]
    fits: list = [None] * len(curves)
    for x, members in _by_sizes(points).items():
        rows = fit_family_many(np.array(x), np.stack([points[i][1] for i in members]), f_bounds=law.f_bounds)
        for i, fit in zip(members, rows):
            if fit is None:
                raise FitError(f"candidate {curves[i].name!r}: no finite fit of the law to its points")
            fits[i] = fit
    return points, fits, _pooled_noise([x.size for x, _ in points], fits, law.n_params)


def _by_sizes(points: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[tuple[float, ...], list[int]]:
    """Indices of the curves measured at the same sizes, which one vectorised fit can share."""
    groups: dict[tuple[float, ...], list[int]] = {}
    for i, (x, _) in enumerate(points):
        groups.setdefault(tuple(x.tolist()), []).append(i)
    return groups


def _bootstrap(x, names, fits, law: _LawSpec, target, draws, seed, noise) -> list[np.ndarray]:
    """Refit `draws` noisy copies of each fitted curve (all measured at `x`) in one vectorised pass."""
    params = np.array([[f.B, f.F, f.beta, f.E] for f in fits])
    fitted = family_loss(x[None, :], *(params[:, k : k + 1] for k in range(4)))
    z = np.stack([np.random.default_rng([*seed, zlib.crc32(n.encode())]).standard_normal((draws, x.size)) for n in names])
    z[..., x == 0] = 0.0
    resampled = (fitted[:, None, :] * np.exp(noise * z)).reshape(-1, x.size)
    refits = refit_family_many(x, resampled, np.repeat(params, draws, axis=0), f_bounds=law.f_bounds)
    at_target = family_loss(float(target), *refits.T).reshape(len(names), draws)
    point = family_loss(float(target), *params.T)
    # A resample with no finite refit (rare) counts as the fitted curve itself.
    return list(np.where(np.isfinite(at_target), at_target, point[:, None]))


def _pooled_noise(n_points: Sequence[int], fits: Sequence, n_params: int) -> float:
    """Residual standard deviation in log space, pooled over every fit with spare degrees of freedom."""
    sse = sum(f.rmse_log**2 * n for f, n in zip(fits, n_points))
    dof = sum(max(n - n_params, 0) for n in n_points)
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
