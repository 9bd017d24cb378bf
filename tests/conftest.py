"""Fixtures shared by every test folder: the published benchmark curves and the demo's tiny models."""

import os
import sysconfig
from pathlib import Path

import pytest

# Tests run models offline (no hub here), and child processes find the venv's `lensllm`.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
os.environ["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])

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


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> Path:
    """The demo's generated task and three tiny pre-trained causal LMs (lensllm.demo), built once."""
    import torch

    from lensllm.demo import prepare

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("demo")
    prepare(folder, n_train=1024, n_test=64)
    return folder

