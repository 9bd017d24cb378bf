"""Predictive distributions and P(best) (lensllm.science.uncertainty) on synthetic laws with known noise."""

from dataclasses import astuple

import numpy as np
import pytest
from scipy.stats import norm

from lensllm.science.fitting import family_loss, fit_family_many, refit_family_many
from lensllm.science.laws import rectified_loss
from lensllm.errors import CurveError
from lensllm.science.uncertainty import (
    BENCHMARK_ERRORS,
    ERROR_PROBABILITIES,
    MIN_LOG_NOISE,
    ExtrapolationErrors,
    MeasuredCurve,
    fit_law,
    predictive_distributions,
    probability_best,
)

SIZES = 100.0 * 2.0 ** np.arange(6)  # 100 .. 3,200
TARGET = 102_400


def random_laws(n: int, seed: int) -> np.ndarray:
    """Rows of (B, D_l, beta, E) spread like fine-tuning curves."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(5, 200, n), rng.uniform(1, 50, n), rng.uniform(0.2, 0.6, n), rng.uniform(0.5, 2.0, n)])


def measured(laws: np.ndarray, noise: float, seed: int) -> list[MeasuredCurve]:
    rng = np.random.default_rng(seed)
    return [
        MeasuredCurve(
            f"m{i}",
            SIZES,
            rectified_loss(SIZES, *law) * np.exp(noise * rng.standard_normal(SIZES.size)),
            zero_shot=float(rectified_loss(np.array([0.0]), *law)[0]),
        )
        for i, law in enumerate(laws)
    ]


@pytest.mark.parametrize("noise", [0.005, 0.02])
def test_the_pooled_noise_recovers_the_injected_noise(noise):
    found = predictive_distributions(measured(random_laws(30, 1), noise, 2), TARGET, draws=20, seed=(0, 0), laws=["lensllm"]).noise
    assert 0.6 * noise <= found["lensllm"] <= 1.4 * noise


def test_noise_free_curves_get_the_floor_not_zero():
    found = predictive_distributions(measured(random_laws(5, 1), 0.0, 2), TARGET, draws=20, seed=(0, 0), laws=["lensllm"]).noise
    assert found == {"lensllm": MIN_LOG_NOISE}


def test_most_90_percent_intervals_hold_the_true_loss_when_the_law_is_right():
    laws = random_laws(60, 3)
    predictive = predictive_distributions(measured(laws, 0.01, 4), TARGET, draws=200, seed=(0, 0), laws=["lensllm"]).predictive
    truth = np.array([rectified_loss(np.array([TARGET]), *law)[0] for law in laws])
    inside = np.mean([p.interval(0.9)[0] <= t <= p.interval(0.9)[1] for p, t in zip(predictive, truth)])
    assert 0.75 <= inside <= 1.0


def test_the_law_that_fits_the_curves_better_is_the_one_that_extrapolates():
    rectified_curves = measured(random_laws(10, 9), 0.005, 10)
    chosen = predictive_distributions(rectified_curves, TARGET, draws=20, seed=(0, 0))
    assert chosen.law == "lensllm" and chosen.noise["lensllm"] < chosen.noise["vanilla"]
    # Pure power laws with a zero-shot loss far above them: the rectified form cannot bend that far.
    power = [MeasuredCurve(f"p{i}", SIZES, 30.0 * SIZES ** -(0.3 + 0.05 * i) + 0.5, zero_shot=20.0) for i in range(6)]
    chosen = predictive_distributions(power, TARGET, draws=20, seed=(0, 0))
    assert chosen.law == "vanilla" and chosen.noise["vanilla"] < chosen.noise["lensllm"]


def test_each_law_names_the_candidate_its_own_fit_predicts_lowest():
    """Two measured LensBench de-en curves (bits per byte, sizes 8 to 256) the laws rank differently: a model
    trained from scratch whose curve is still steepening, and a pre-trained one that has slowed down."""
    sizes = np.array([8.0, 16, 32, 64, 128, 256])
    scratch = MeasuredCurve("llama-m-none-4k", sizes, np.array([5.202, 5.142, 5.070, 4.925, 4.602, 4.218]), zero_shot=5.314)
    pretrained = MeasuredCurve("llama-xs-dict-4k", sizes, np.array([3.733, 3.668, 3.569, 3.445, 3.360, 3.317]), zero_shot=3.807)
    assessed = predictive_distributions([scratch, pretrained], 2048, draws=20, seed=(0, 0))
    predicted = {
        law: {c.name: float(family_loss(2048.0, *astuple(fit_law(c, law))[:4])) for c in (scratch, pretrained)}
        for law in ("lensllm", "vanilla")
    }
    assert assessed.leaders == {law: min(p, key=p.get) for law, p in predicted.items()}
    assert assessed.leaders == {"lensllm": "llama-m-none-4k", "vanilla": "llama-xs-dict-4k"}, predicted


def test_draws_are_fixed_by_the_seed_and_do_not_depend_on_the_other_candidates():
    curves = measured(random_laws(4, 5), 0.01, 6)
    def draws(company, seed):
        return predictive_distributions(company, TARGET, draws=50, seed=seed, laws=["lensllm"]).predictive[0].draws

    alone = draws(curves[:1], (9, 2))
    np.testing.assert_array_equal(alone, draws(curves[:1], (9, 2)))
    assert not np.array_equal(alone, draws(curves[:1], (9, 3)))
    # The pooled noise depends on the company, the standard normal draws do not.
    assert np.corrcoef(np.log(draws(curves, (9, 2))), np.log(alone))[0, 1] > 0.95


def test_p_best_of_two_normals_matches_the_closed_form():
    rng = np.random.default_rng(0)
    draws = np.stack([1.0 + 0.1 * rng.standard_normal(4000), 1.1 + 0.1 * rng.standard_normal(4000)])
    p = probability_best(draws)
    assert p[0] == pytest.approx(norm.cdf(0.1 / (0.1 * np.sqrt(2))), abs=0.01)
    assert p.sum() == pytest.approx(1.0)


def test_p_best_is_one_for_a_lone_candidate_and_zero_for_one_always_behind():
    assert probability_best(np.array([[1.0, 2.0]])).tolist() == [1.0]
    p = probability_best(np.array([[1.0, 1.1, 1.2], [2.0, 2.1, 2.2], [1.5, 1.6, 1.7]]))
    assert p.tolist() == [1.0, 0.0, 0.0]


def test_refitting_from_a_nearby_start_finds_the_global_fit():
    x = np.concatenate([[0.0], SIZES])
    laws = random_laws(8, 7)
    y = np.stack([rectified_loss(x, *law) for law in laws]) * np.exp(0.01 * np.random.default_rng(8).standard_normal((8, x.size)))
    fits = fit_family_many(x, y, f_bounds=(0.0, np.inf))
    start = np.array([[f.B * 1.3, f.F * 0.7 + 1.0, f.beta * 0.9, f.E * 0.95] for f in fits])
    refit = refit_family_many(x, y, start, f_bounds=(0.0, np.inf))
    global_ = np.array([[f.B, f.F, f.beta, f.E] for f in fits])
    np.testing.assert_allclose(
        rectified_loss(np.array([TARGET]), *refit.T), rectified_loss(np.array([TARGET]), *global_.T), rtol=1e-5
    )


def test_a_candidate_learning_from_scratch_is_predicted_by_the_law_that_predicts_it_worst():
    """The same two de-en curves with what a uniform guess scores (bits per byte): the randomly initialised model
    sits at it (5.314 against 5.284) and gets the more pessimistic law's prediction; the pre-trained one (3.807)
    keeps the better-fitting law's. The truth at 2,048: 3.691 and 3.156 bits per byte."""
    sizes = np.array([8.0, 16, 32, 64, 128, 256])
    scratch_losses = np.array([5.202, 5.142, 5.070, 4.925, 4.602, 4.218])
    pretrained = MeasuredCurve("llama-xs-dict-4k", sizes, np.array([3.733, 3.668, 3.569, 3.445, 3.360, 3.317]),
                               zero_shot=3.807, uniform=5.284)
    unknown = MeasuredCurve("llama-m-none-4k", sizes, scratch_losses, zero_shot=5.314)
    scratch = MeasuredCurve("llama-m-none-4k", sizes, scratch_losses, zero_shot=5.314, uniform=5.284)
    assert scratch.learns_from_scratch and not pretrained.learns_from_scratch and not unknown.learns_from_scratch

    def predicted(curves, laws=("lensllm", "vanilla")) -> dict[str, float]:
        return {p.name: p.loss for p in predictive_distributions(curves, 2048, draws=50, seed=(0, 0), laws=laws).predictive}

    plain, flagged = predicted([unknown, pretrained]), predicted([scratch, pretrained])
    per_law = {law: predicted([scratch, pretrained], laws=(law,)) for law in ("lensllm", "vanilla")}
    assert flagged["llama-xs-dict-4k"] == plain["llama-xs-dict-4k"]
    assert flagged["llama-m-none-4k"] == max(p["llama-m-none-4k"] for p in per_law.values())
    assert plain["llama-m-none-4k"] < plain["llama-xs-dict-4k"] < flagged["llama-m-none-4k"]


THREE_SIZES = SIZES[:3]


def power_curves(n: int, noise: float, seed: int) -> tuple[list[MeasuredCurve], np.ndarray]:
    """`n` curves `B D^-beta` measured at three sizes with log-normal noise, and their true losses at TARGET."""
    rng = np.random.default_rng(seed)
    B, beta = rng.uniform(5, 50, n), rng.uniform(0.1, 0.5, n)
    curves = [
        MeasuredCurve(f"p{i}", THREE_SIZES, B[i] * THREE_SIZES ** -beta[i] * np.exp(noise * rng.standard_normal(3)), zero_shot=60.0)
        for i in range(n)
    ]
    return curves, B * TARGET**-beta


def test_curves_of_three_sizes_are_predicted_by_the_power_law():
    curves, truth = power_curves(6, 0.0, 1)
    assessed = predictive_distributions(curves, TARGET, draws=50, seed=(0, 0))
    assert assessed.law == "power" and assessed.noise == {"power": MIN_LOG_NOISE}
    np.testing.assert_allclose([p.loss for p in assessed.predictive], truth, rtol=0.02)
    assert assessed.leaders == {"power": curves[int(np.argmin(truth))].name}


def test_the_power_law_pools_the_noise_over_its_spare_points():
    curves, _ = power_curves(60, 0.02, 2)
    found = predictive_distributions(curves, TARGET, draws=20, seed=(0, 0)).noise["power"]
    assert 0.014 <= found <= 0.026


def test_the_power_law_bootstrap_spreads_like_refits_to_noisy_copies():
    """The closed-form draws against brute force: refit a line to many noisy copies of the fit, predict at TARGET."""
    curves, _ = power_curves(40, 0.02, 3)
    assessed = predictive_distributions(curves, TARGET, draws=4000, seed=(0, 0))
    noise = assessed.noise["power"]
    rng = np.random.default_rng(4)
    x = np.log(THREE_SIZES)
    for curve, predictive in list(zip(curves, assessed.predictive))[:3]:
        line = np.polyfit(x, np.log(curve.losses), 1)
        copies = np.polyval(line, x) + noise * rng.standard_normal((4000, 3))
        refits = np.array([np.polyval(np.polyfit(x, copy, 1), np.log(TARGET)) for copy in copies])
        assert np.std(np.log(predictive.draws)) == pytest.approx(np.std(refits), rel=0.06)
        assert np.mean(np.log(predictive.draws)) == pytest.approx(np.polyval(line, np.log(TARGET)), abs=3 * noise)


def test_a_short_curve_learning_from_scratch_is_raised_to_its_most_pessimistic_law():
    """The first three de-en points of the randomly initialised model: the power law extends its drop; the
    laws fitted exactly through the points predict it higher, and it gets the higher of them."""
    sizes = np.array([8.0, 16, 32])
    losses = np.array([5.202, 5.142, 5.070])
    scratch = MeasuredCurve("llama-m-none-4k", sizes, losses, zero_shot=5.314, uniform=5.284)
    unknown = MeasuredCurve("llama-m-none-4k", sizes, losses, zero_shot=5.314)
    pretrained = MeasuredCurve("llama-xs-dict-4k", sizes, np.array([3.733, 3.668, 3.569]), zero_shot=3.807, uniform=5.284)

    def assess(curves):
        return predictive_distributions(curves, 2048, draws=50, seed=(0, 0))

    plain, flagged = assess([unknown, pretrained]), assess([scratch, pretrained])
    assert flagged.law == "power" and flagged.from_scratch == ("llama-m-none-4k",)
    assert flagged.predictive[1].loss == plain.predictive[1].loss
    worst = max(float(fit_law(scratch, law).loss_at(2048.0)) for law in ("lensllm", "vanilla"))
    assert flagged.predictive[0].loss == pytest.approx(worst, rel=0.01) and worst > 1.01 * plain.predictive[0].loss
    shift = flagged.predictive[0].draws / plain.predictive[0].draws
    np.testing.assert_allclose(shift, shift[0], rtol=1e-9)  # the same spread, moved up


def test_the_power_law_fit_is_the_line_the_round_predicts_with():
    curves, _ = power_curves(3, 0.02, 5)
    assessed = predictive_distributions(curves, TARGET, draws=2000, seed=(0, 0))
    for curve, predictive in zip(curves, assessed.predictive):
        fit = fit_law(curve, "power")
        assert (fit.F, fit.E) == (0.0, 0.0)
        np.testing.assert_allclose(fit.loss_at(THREE_SIZES), np.exp(np.polyval(np.polyfit(np.log(THREE_SIZES), np.log(curve.losses), 1), np.log(THREE_SIZES))))
        assert predictive.loss == pytest.approx(float(fit.loss_at(TARGET)), rel=0.01)


def bending_curves(n: int, seed: int) -> tuple[list[MeasuredCurve], np.ndarray]:
    """Curves whose log-log slope keeps steepening (log L = a - b log D - c log^2 D), as the published FLAN curves
    do: every law levels off too early on them. Measured at SIZES with 0.2% noise; their true losses at TARGET."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(1.0, 2.0, n), rng.uniform(0.0, 0.05, n), rng.uniform(0.004, 0.012, n)
    log_loss = lambda d: a[:, None] - b[:, None] * np.log(d) - c[:, None] * np.log(d) ** 2  # noqa: E731
    losses = np.exp(log_loss(SIZES) + 0.002 * rng.standard_normal((n, SIZES.size)))
    zero_shot = np.exp(a + 0.2)
    curves = [MeasuredCurve(f"b{i}", SIZES, losses[i], zero_shot=float(zero_shot[i])) for i in range(n)]
    return curves, np.exp(log_loss(np.array([TARGET]))[:, 0])


def held(intervals: list[tuple[float, float]], truth: np.ndarray) -> float:
    return float(np.mean([lo <= t <= hi for (lo, hi), t in zip(intervals, truth)]))


def test_intervals_reach_as_far_as_the_backtest_finds_the_law_wrong():
    curves, truth = bending_curves(30, 5)
    predictive = predictive_distributions(curves, TARGET, draws=200, seed=(0, 0), elsewhere=None).predictive
    bootstrap_alone = [tuple(np.quantile(p.draws, [0.05, 0.95])) for p in predictive]
    assert held(bootstrap_alone, truth) < 0.5  # the noise is small; the law's error is not
    assert held([p.interval(0.9) for p in predictive], truth) >= 0.8
    # The laws predict too high here, so the intervals reach down, not up.
    assert all(p.interval(0.9)[1] == pytest.approx(np.quantile(p.draws, 0.95)) for p in predictive)


def test_curves_out_of_the_race_join_the_backtest_but_not_the_draws():
    lawful = measured(random_laws(3, 7), 0.0, 8)  # the law is right: their own backtest finds no error
    alone = predictive_distributions(lawful, TARGET, draws=100, seed=(0, 0), elsewhere=None).predictive
    joined = predictive_distributions(lawful, TARGET, draws=100, seed=(0, 0), backtested=bending_curves(10, 9)[0],
                                      elsewhere=None).predictive
    for a, j in zip(alone, joined):
        np.testing.assert_array_equal(a.draws, j.draws)  # P(best), and so the race's decisions, unchanged
        assert j.interval(0.9)[0] < a.interval(0.9)[0]


def test_curves_of_three_sizes_are_backtested_by_the_line_through_their_first_two():
    curves, _ = power_curves(6, 0.0, 1)
    for p in predictive_distributions(curves, TARGET, draws=50, seed=(0, 0)).predictive:
        np.testing.assert_allclose(p.extrapolation, 0.0, atol=1e-9)  # a power law is that line: no error to add


def spread(lo: float, hi: float) -> tuple[float, ...]:
    """Errors per unit of reach spread evenly from lo to hi, as ExtrapolationErrors quantiles."""
    return tuple(np.linspace(lo, hi, len(ERROR_PROBABILITIES)).tolist())


def test_every_interval_reaches_at_least_as_far_as_the_law_erred_elsewhere():
    lawful = measured(random_laws(4, 7), 0.0, 8)  # the law is right here: bootstrap and backtest find almost nothing
    elsewhere = ExtrapolationErrors(power=spread(-0.5, 0.5), laws=spread(-0.2, 0.1))
    bare = predictive_distributions(lawful, TARGET, draws=100, seed=(0, 0), elsewhere=None).predictive
    floored = predictive_distributions(lawful, TARGET, draws=100, seed=(0, 0), elsewhere=elsewhere).predictive
    reach = np.log(TARGET / SIZES[-1])
    for b, f in zip(bare, floored):
        np.testing.assert_array_equal(b.draws, f.draws)  # P(best), and so the race's decisions, unchanged
        lo, hi = f.interval(0.9)
        # The laws' spread, not the power law's: these curves have six sizes. 5% and 95% of -0.2 .. 0.1.
        assert (lo, hi) == pytest.approx((f.loss * np.exp(-0.185 * reach), f.loss * np.exp(0.085 * reach)))
        assert lo < b.interval(0.9)[0] and hi > b.interval(0.9)[1]


def test_rounds_of_three_sizes_take_the_power_laws_spread():
    curves, _ = power_curves(6, 0.0, 1)
    elsewhere = ExtrapolationErrors(power=spread(-0.5, 0.5), laws=spread(-0.01, 0.01))
    for p in predictive_distributions(curves, TARGET, draws=50, seed=(0, 0), elsewhere=elsewhere).predictive:
        reach = np.log(TARGET / THREE_SIZES[-1])
        assert p.interval(0.8) == pytest.approx((p.loss * np.exp(-0.4 * reach), p.loss * np.exp(0.4 * reach)))


def test_no_floor_inside_the_measured_sizes():
    curves = measured(random_laws(3, 7), 0.01, 8)
    elsewhere = ExtrapolationErrors(power=spread(-0.5, 0.5), laws=spread(-0.5, 0.5))
    for p in predictive_distributions(curves, SIZES[-1], draws=100, seed=(0, 0), elsewhere=elsewhere).predictive:
        assert p.interval(0.9) == pytest.approx(tuple(np.quantile(p.draws, [0.05, 0.95])))


@pytest.mark.parametrize("quantiles", [spread(0.1, -0.1), spread(-0.1, 0.1)[:-1], (*spread(-0.1, 0.1)[:-1], float("nan"))])
def test_extrapolation_errors_must_be_a_full_rising_set_of_quantiles(quantiles):
    with pytest.raises(CurveError, match="extrapolation errors power"):
        ExtrapolationErrors(power=quantiles, laws=spread(-0.1, 0.1))


def test_measured_errors_are_their_quantiles_and_need_some():
    errors = ExtrapolationErrors.measured(power=[-0.3, 0.1, 0.0], laws=np.linspace(-1, 1, 401))
    assert errors.power[0] == -0.3 and errors.power[-1] == 0.1
    np.testing.assert_allclose(errors.laws, np.linspace(-1, 1, len(ERROR_PROBABILITIES)), atol=1e-12)
    with pytest.raises(CurveError, match="extrapolation errors laws: need at least one finite error"):
        ExtrapolationErrors.measured(power=[0.0], laws=[])


def test_the_shipped_floor_comes_from_the_benchmark_tables():
    from lensllm.science import benchmark_errors

    assert BENCHMARK_ERRORS == ExtrapolationErrors(benchmark_errors.POWER, benchmark_errors.LAWS)
    assert any("lensbench" in t for t in benchmark_errors.TABLES) and any("curves" in t for t in benchmark_errors.TABLES)
    # The laws overshoot the small models' later gains: most of the benchmark's errors are below zero.
    assert np.interp(0.5, ERROR_PROBABILITIES, BENCHMARK_ERRORS.laws) < 0
