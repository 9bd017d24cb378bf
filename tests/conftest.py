"""Fixtures shared by every test folder: the published benchmark curves and the demo's tiny models."""

import os
import shutil
import sysconfig
from pathlib import Path

import pytest

# Tests run models offline (no hub here), and child processes find the venv's `lensllm`. Every trial process
# (local mode's, the emulated kubelet's) computes on one thread: pytest runs one worker per core, and two
# threads per process ran 5-9x slower on the 2-core CI machines.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
os.environ["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])

REPO = Path(__file__).resolve().parents[1]
# The published curve tables ship in the repository (data/curves, Apache-2.0, see its README).
CURVES_DIR = REPO / "data" / "curves"


@pytest.fixture(scope="session")
def curves_dir() -> Path:
    """The folder holding the published tables: flan.csv, gigaword.csv and wmt19.csv."""
    return CURVES_DIR


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> Path:
    """The demo's generated task and three tiny pre-trained causal LMs (lensllm.demo), built once per run: the
    first xdist worker to need them builds them (half a minute of pre-training) while the others wait, then every
    worker reads the same folder."""
    import torch
    from filelock import FileLock

    from lensllm.demo import prepare

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's own root, above every worker's
    folder = shared / "demo"
    with FileLock(shared / "demo.lock"):
        if not folder.exists():
            torch.set_num_threads(1)
            partial = shared / "demo.partial"
            shutil.rmtree(partial, ignore_errors=True)  # left by a worker whose build failed
            prepare(partial, n_train=1024, n_test=64)
            partial.rename(folder)
    return folder
