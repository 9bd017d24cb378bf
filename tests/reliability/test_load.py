"""Load: a hundred ten-candidate selections at once through the real operator process, every trial a real process
writing a prepared, valid result document (tests/support/load_run.py, tests/support/fast_trial.py).

Fixed budgets and races (the default strategy), a flood of each. Goals checked: every selection Complete, the
operator's peak RSS under 300 MiB, a ten-candidate selection on an idle operator has all its (first round's) Jobs
created within 1 s of being applied, and the liveness probe answers every poll within the chart's timeout. The other figures (time to all Complete, CPU
seconds, API requests per selection, Job-done-to-status latency) are recorded for scripts/reliability_figures.py.
Knobs (environment): LENSLLM_LOAD_SELECTIONS (100), LENSLLM_LOAD_CANDIDATES (10).
"""

import os
import re
from pathlib import Path

import pytest
from cluster import Cluster
from load_run import run_load

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.load


def liveness_timeout() -> float:
    """The chart's livenessProbe timeoutSeconds: a slower answer counts as a failed probe."""
    deployment = (REPO / "charts" / "lensllm" / "templates" / "deployment.yaml").read_text()
    return float(re.search(r"livenessProbe:(?:\n .*)*?\n +timeoutSeconds: (\d+)", deployment).group(1))


@pytest.mark.parametrize("strategy", ["fixed", "race"])
def test_a_hundred_selections_complete_within_the_memory_and_latency_goals(kube: Cluster, namespace: str,
                                                                          tmp_path: Path, figures,
                                                                          strategy: str) -> None:
    selections = int(os.environ.get("LENSLLM_LOAD_SELECTIONS", "100"))
    candidates = int(os.environ.get("LENSLLM_LOAD_CANDIDATES", "10"))
    measured = run_load(kube, namespace, tmp_path, selections, candidates, strategy=strategy)
    figures("load", measured)
    assert measured["complete"] == selections, measured
    assert measured["operator_peak_rss_mib"] < 300, measured
    assert measured["idle_jobs_created_seconds"] < 1.0, measured
    assert measured["liveness_max_seconds"] < liveness_timeout(), measured
