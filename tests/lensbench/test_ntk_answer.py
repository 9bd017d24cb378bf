"""The NTK answer on a synthetic LensBench-like table where the NTK does constrain the law."""

import warnings

import numpy as np
import pytest

from lensllm.science.curves import Curves
from lensllm.science.laws import NTKSpectrum
from lensllm_bench import ntk_answer
from lensllm_bench.loo import Table

SIZES = np.array([8.0, 16, 32, 64, 128, 256, 2048])


@pytest.fixture(scope="module")
def answer():
    rng = np.random.default_rng(3)
    B, D_l = rng.uniform(20, 60, 10), rng.uniform(50, 400, 10)
    beta, E = rng.uniform(0.4, 0.7, 10), rng.uniform(1.0, 1.5, 10)
    losses = B[:, None] / (D_l[:, None] + SIZES[None, :] ** beta[:, None]) + E[:, None]
    # Half the spectra allow F up to 10 only: there the NTK must bind; the others allow anything.
    spectra = tuple(NTKSpectrum(np.array([5.0, 1.0]), np.array([6.0, 4.0]) * (1 if i % 2 else 1e3), 1e-3) for i in range(10))
    curves = Curves(models=tuple(f"m{i}" for i in range(10)), sizes=SIZES, losses=losses, zero_shot=B / D_l + E,
                    ntk=spectra, target_size=2048.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ntk_answer.answer(Table("synthetic", curves, 2048.0, (8, 16), "synthetic"))


def test_the_share_of_fits_the_ntk_binds_counts_the_narrow_spectra(answer):
    assert answer.constrained == pytest.approx(0.5)


def test_a_bound_law_extrapolates_worse_than_the_free_one_on_curves_it_cannot_follow(answer):
    diff = answer.difference("lensllm", "rectified", "error", seed=0)
    assert diff.difference > 0 and diff.low <= diff.difference <= diff.high


def test_the_markdown_has_a_row_per_task_and_ratio_and_one_per_task(answer):
    lines = ntk_answer.markdown([answer]).splitlines()
    assert sum(line.startswith("| synthetic | 1/") for line in lines) == 2
    assert sum(line.startswith("| synthetic | 50.0% |") for line in lines) == 1
