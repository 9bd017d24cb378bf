"""Fixtures shared by every test folder: where the published benchmark curves live."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CURVES_DIR = Path(os.environ.get("LENSLLM_CURVES_DIR", REPO.parent / "shared" / "data" / "curves"))


@pytest.fixture(scope="session")
def curves_dir() -> Path:
    """The folder holding flan.csv and gigaword.csv; CI must have it, elsewhere tests skip."""
    if not (CURVES_DIR / "flan.csv").exists():
        message = (
            f"benchmark curves not found in {CURVES_DIR}: they ship in the project's shared/data/curves "
            "(the Rectified Scaling Law release, Apache-2.0); set LENSLLM_CURVES_DIR to their folder"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CURVES_DIR
