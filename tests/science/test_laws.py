import numpy as np
import pytest

from lensllm.errors import CurveError, FitError, NotFittedError
from lensllm.science.laws import (
    LawWarning,
    AtSLaw,
    LensLLMLaw,
    NTKSpectrum,
    RectifiedLaw,
    VanillaLaw,
    rectified_loss,
    vanilla_loss,
)

SIZES = 200.0 * 2.0 ** np.arange(12)

LAWS = [VanillaLaw, RectifiedLaw, LensLLMLaw, AtSLaw]


@pytest.fixture
def rectified_curve() -> np.ndarray:
    return rectified_loss(SIZES, B=120.0, D_l=40.0, beta=0.55, E=0.8)


@pytest.mark.parametrize("law_class", LAWS)
def test_every_law_fits_predicts_and_exposes_parameters(law_class, rectified_curve):
    law = law_class()
    assert law.fit(SIZES, rectified_curve, zero_shot=3.5) is law
    predicted = law.predict([1e6, 2e6])
    assert predicted.shape == (2,) and np.all(np.isfinite(predicted)) and np.all(predicted > 0)
    assert law.params_ and all(np.isfinite(v) for v in law.params_.values())
    assert law.n_points_ >= 3


@pytest.mark.parametrize("law_class", LAWS)
def test_every_law_refuses_to_predict_before_fit(law_class):
    with pytest.raises(NotFittedError, match="not fitted"):
        law_class().predict(1000.0)


@pytest.mark.parametrize("law_class", [VanillaLaw, RectifiedLaw, LensLLMLaw])
def test_family_laws_need_three_points(law_class):
    with pytest.raises(FitError, match="at least 3"):
        law_class().fit([200.0, 400.0], [3.0, 2.9])


@pytest.mark.parametrize("bad", [[3.0, np.nan, 2.5, 2.4], [3.0, -1.0, 2.5, 2.4], [3.0, np.inf, 2.5, 2.4]])
@pytest.mark.parametrize("law_class", LAWS)
def test_every_law_rejects_non_finite_or_negative_losses(law_class, bad):
    with pytest.raises(CurveError, match="losses must be"):
        law_class().fit(SIZES[:4], bad)


def test_vanilla_law_recovers_its_parameters():
    y = vanilla_loss(SIZES, B=30.0, beta=0.45, E=1.1)
    law = VanillaLaw().fit(SIZES, y)
    assert law.params_ == pytest.approx({"B": 30.0, "beta": 0.45, "E": 1.1}, rel=1e-6)


def test_rectified_law_recovers_its_parameters_with_the_zero_shot_point(rectified_curve):
    zero_shot = 120.0 / 40.0 + 0.8  # L(0) = B / D_l + E
    law = RectifiedLaw().fit(SIZES, rectified_curve, zero_shot=zero_shot)
    assert law.params_ == pytest.approx({"B": 120.0, "D_l": 40.0, "beta": 0.55, "E": 0.8}, rel=1e-5)
    assert law.n_points_ == SIZES.size + 1


def test_fits_are_deterministic(rectified_curve):
    noisy = rectified_curve * (1 + 0.01 * np.sin(np.arange(SIZES.size)))
    first = RectifiedLaw().fit(SIZES, noisy, zero_shot=4.0).params_
    second = RectifiedLaw().fit(SIZES, noisy, zero_shot=4.0).params_
    assert first == second


def test_lensllm_law_takes_f_from_the_ntk_spectrum_and_recovers_the_training_time():
    spectrum = NTKSpectrum(eigenvalues=np.array([5.0, 1.0, 0.2]), projections_sq=np.array([30.0, 20.0, 10.0]), eta=0.01)
    t_true = 7.0
    F = float(spectrum.residual_term(t_true))
    y = rectified_loss(SIZES, B=90.0, D_l=F, beta=0.5, E=0.9)
    law = LensLLMLaw(ntk=spectrum).fit(SIZES, y, zero_shot=90.0 / F + 0.9)
    assert law.params_["F"] == pytest.approx(F, rel=1e-5)
    assert law.t_ == pytest.approx(t_true, rel=1e-4)
    assert spectrum.limit <= law.params_["F"] <= spectrum.initial


def test_lensllm_law_keeps_f_inside_the_ntk_interval():
    spectrum = NTKSpectrum(eigenvalues=np.array([2.0, 0.0]), projections_sq=np.array([3.0, 1.0]), eta=0.1)
    y = rectified_loss(SIZES, B=500.0, D_l=400.0, beta=0.6, E=0.7)  # wants F = 400, far above F(0) = 4
    law = LensLLMLaw(ntk=spectrum).fit(SIZES, y)
    assert spectrum.limit <= law.params_["F"] <= spectrum.initial * (1 + 1e-9)
    assert law.t_ == pytest.approx(0.0, abs=1e-9)


def test_ntk_residual_term_starts_at_the_squared_residual_norm_and_never_increases():
    rng = np.random.default_rng(0)
    spectrum = NTKSpectrum(eigenvalues=rng.gamma(1.0, size=16), projections_sq=rng.gamma(1.0, size=16), eta=0.05)
    values = spectrum.residual_term(np.linspace(0, 50, 200))
    assert values[0] == pytest.approx(spectrum.projections_sq.sum())
    assert np.all(np.diff(values) <= 0)


def wiggle(n: int) -> np.ndarray:
    """Deterministic +-0.5% noise, so residual spreads are not zero."""
    return 1 + 0.005 * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)


def test_ats_finds_the_power_phase_after_a_flat_start():
    power = 50.0 * SIZES**-0.3 * wiggle(SIZES.size)
    curve = np.where(SIZES < 3200, 1.5 * power[SIZES == 3200][0], power)
    law = AtSLaw().fit(SIZES, curve)
    assert law.transition_size_ == 3200
    assert law.slope_ == pytest.approx(-0.3, abs=0.01)


def test_ats_drops_the_smallest_point_unless_asked_to_keep_it():
    line = np.exp(1.0 - 0.2 * np.log(SIZES[:6])) * wiggle(6)
    assert AtSLaw().fit(SIZES[:6], line).n_points_ == 5  # as the published code does
    assert AtSLaw(use_smallest=True).fit(SIZES[:6], line).n_points_ == 6


def test_ats_with_at_most_k_points_uses_them_all():
    assert AtSLaw(k=3).fit(SIZES[:3], [3.0, 2.8, 2.7]).n_points_ == 3


def test_a_rising_curve_fits_with_a_warning_that_names_the_parameters_at_their_bounds():
    rising = np.array([3.0, 3.1, 3.2, 3.3, 3.4, 3.5])
    with pytest.warns(LawWarning, match="vanilla fit has B.* at a bound"):
        law = VanillaLaw().fit(SIZES[:6], rising)
    assert "B" in law.at_bounds_  # no decrease to explain: the law degenerates to a constant
    assert np.isfinite(law.predict(1e6)).all()


@pytest.mark.parametrize("law_class", [VanillaLaw, RectifiedLaw, LensLLMLaw])
def test_a_flat_curve_that_ends_slightly_higher_still_fits_as_a_constant(law_class):
    flat = np.array([1.4457, 1.4457, 1.4482])
    law = law_class().fit(SIZES[:3], flat, zero_shot=1.45)
    assert law.predict(1e6)[0] == pytest.approx(flat.mean(), rel=0.01)
