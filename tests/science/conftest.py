import warnings

import pytest


@pytest.fixture(autouse=True)
def quiet_bounds():
    """Law fits warn when a parameter ends on a bound; these tests check values, not warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
