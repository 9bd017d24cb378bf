"""Fixtures shared by every test folder: the published benchmark curves, the demo's tiny models and its race."""

import os
import shutil
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
from demo_selection import race_manifest
from filelock import FileLock
from selections import run_locally

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


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder `build` fills once per test run: the first xdist worker to ask builds it while the others wait for
    the lock, then every worker reads the same folder (read-only)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's own root, above every worker's
    folder = shared / name
    with FileLock(shared / f"{name}.lock"):
        if not folder.exists():
            partial = shared / f"{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)  # left by a worker whose build failed
            partial.mkdir()
            build(partial)
            partial.rename(folder)
    return folder


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> Path:
    """The demo's generated task and three tiny pre-trained causal LMs (lensllm.demo): half a minute of
    pre-training, once per run."""
    import torch

    from lensllm.demo import prepare

    def build(folder: Path) -> None:
        torch.set_num_threads(1)
        prepare(folder, n_train=1024, n_test=64)

    return built_once(tmp_path_factory, "demo", build)


@pytest.fixture(scope="session")
def demo_race(demo_world, tmp_path_factory) -> Path:
    """The output folder of `lensllm select --local` on the demo's race (demo_selection.race_manifest), run once per
    test run: local mode's race test reads it, and the operator's race must end with its status."""
    built = built_once(tmp_path_factory, "demo-race", lambda folder: run_locally(race_manifest(demo_world), folder))
    return built / "out"
