"""Fixtures of the reliability suites (chaos, load, bad input): the emulated cluster and its parts, from
tests/support/cluster.py, and where a suite writes the figures it measured (`figures`)."""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster import kube, kubectl, kubelet, namespace, operator_process

__all__ = ["figures", "kube", "kubectl", "kubelet", "namespace", "operator_process"]
FIGURES = "LENSLLM_FIGURES"  # a JSON-lines file; scripts/reliability_figures.py sets it and prints the totals


@pytest.fixture
def figures() -> Callable[[str, dict[str, Any]], None]:
    """`figures(suite, record)`: keep one measured record for the figures script (when it asked for them)."""
    def write(suite: str, record: dict[str, Any]) -> None:
        if path := os.environ.get(FIGURES):
            with Path(path).open("a") as out:
                out.write(json.dumps({"suite": suite, **record}) + "\n")
    return write
