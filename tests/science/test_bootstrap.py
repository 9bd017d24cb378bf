"""The paired bootstrap over candidates that the NTK answer uses."""

import numpy as np
import pytest

from lensllm.errors import CurveError
from lensllm.science.metrics import extrapolation_error, paired_bootstrap, pearcorr


@pytest.fixture
def settings():
    rng = np.random.default_rng(7)
    truth = [rng.uniform(1, 3, 20) for _ in range(3)]
    close = [t * (1 + 0.01 * rng.standard_normal(20)) for t in truth]
    far = [t * (1 + 0.3 * rng.standard_normal(20)) for t in truth]
    return truth, close, far


def test_a_method_against_itself_differs_by_exactly_zero(settings):
    truth, close, _ = settings
    d = paired_bootstrap(pearcorr, close, close, truth, resamples=200)
    assert (d.difference, d.low, d.high) == (0.0, 0.0, 0.0)


def test_a_clearly_better_method_gets_an_interval_above_zero(settings):
    truth, close, far = settings
    d = paired_bootstrap(pearcorr, close, far, truth, resamples=500)
    assert 0 < d.low <= d.difference <= d.high
    e = paired_bootstrap(extrapolation_error, close, far, truth, resamples=500)
    assert e.high < 0  # a lower error: the difference is negative


def test_the_interval_is_reproducible_under_its_seed_and_moves_with_another(settings):
    truth, close, far = settings
    a = paired_bootstrap(pearcorr, close, far, truth, resamples=300, seed=1)
    b = paired_bootstrap(pearcorr, close, far, truth, resamples=300, seed=1)
    c = paired_bootstrap(pearcorr, close, far, truth, resamples=300, seed=2)
    assert a == b and (a.low, a.high) != (c.low, c.high) and a.difference == c.difference


def test_vectors_of_different_lengths_are_refused(settings):
    truth, close, far = settings
    with pytest.raises(CurveError, match="one length"):
        paired_bootstrap(pearcorr, close, [f[:-1] for f in far], truth)
