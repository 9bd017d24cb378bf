"""The Grafana dashboard works against a real Prometheus server scraping the real operator.

Debian's `prometheus` (2.42) runs on loopback with a temporary config that scrapes the operator's metrics port every
second, while the operator runs a selection (two stand-in candidates and one whose model is missing, so that both
trial outcomes exist) in the emulated cluster. Then every query of charts/lensllm/dashboards/lensllm.json goes
through Prometheus's HTTP API with the dashboard's variables filled in: each must parse and return series.

The server comes from PATH or from .cache/prometheus (scripts/fetch_prometheus.sh unpacks the Debian package there;
scripts/test.sh runs it). Without it the test fails and says how to get it: CI must never skip it.
"""

import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from cluster import REPO, Cluster, free_port, wait_for
from kubelet import Kubelet
from stand_in_trial import SIZE_SECONDS

GROUP, VERSION, PLURAL = "lensllm.io", "v1alpha1", "llmselections"
DASHBOARD = REPO / "charts" / "lensllm" / "dashboards" / "lensllm.json"
STAND_IN = REPO / "tests" / "support" / "stand_in_trial.py"
FETCHED = REPO / ".cache" / "prometheus" / "usr" / "bin" / "prometheus"
# Grafana's variables, as a user looking at the finished selection would have them.
WINDOW, RANGE = "1h", "1h"


def prometheus_binary() -> Path:
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    if FETCHED.exists():
        return FETCHED
    pytest.fail("Prometheus server not found: install Debian's package (sudo apt-get install prometheus) or run "
                "`bash scripts/fetch_prometheus.sh`, which unpacks it into .cache/prometheus without installing")


class Prometheus:
    """A Prometheus server on loopback and its HTTP query API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> dict[str, Any]:
        """The answer to an instant query; a query that does not parse is an HTTP 400 with the parser's error."""
        try:
            return self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as err:
            return json.loads(err.read())


@pytest.fixture
def operator_metrics(kube: Cluster, namespace: str, operator_process) -> int:
    metrics, liveness = free_port(), free_port()
    operator_process([sys.executable, "-m", "lensllm.cli.main", "operator", "--namespace", namespace,
                      "--metrics-port", str(metrics), "--liveness-port", str(liveness)],
                     ready=f"http://127.0.0.1:{liveness}/healthz", timeout=60)
    return metrics


@pytest.fixture
def prometheus(operator_metrics: int, tmp_path: Path) -> Iterator[Prometheus]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "lensllm-operator",
                            "static_configs": [{"targets": [f"127.0.0.1:{operator_metrics}"]}]}],
    }))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen([str(prometheus_binary()), f"--config.file={config}",
                                f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: port_open(port) and target_up(server), "Prometheus to scrape the operator", timeout=60,
                 interval=0.5)
        yield server
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def target_up(server: Prometheus) -> bool:
    targets = server.get("/api/v1/targets")["data"]["activeTargets"]
    return bool(targets) and all(target["health"] == "up" for target in targets)


def dashboard_queries() -> tuple[list[str], list[str]]:
    """The PromQL of every panel target, and the metric selectors of the `label_values(...)` variables."""
    dashboard = json.loads(DASHBOARD.read_text())

    def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for panel in node.get("panels", []):
            yield panel
            yield from panels(panel)

    exprs = [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", []) if "expr" in target]
    variables = [re.fullmatch(r"label_values\((.+),\s*\w+\)", v["query"]["query"])[1]
                 for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs, variables


def filled(expr: str, namespace: str, selection: str) -> str:
    return (expr.replace("$__range", RANGE).replace("$__rate_interval", "1m").replace("$window", WINDOW)
            .replace("$namespace", namespace).replace("$selection", selection))


def test_every_dashboard_query_returns_series_for_a_finished_selection(
        kube: Cluster, namespace: str, prometheus: Prometheus, tmp_path: Path) -> None:
    kubelet = Kubelet(kube.server, tmp_path / "pods", env={SIZE_SECONDS: "0.1"},
                      commands={"lensllm": [sys.executable, str(STAND_IN)]})
    try:
        status = run_selection(kube, namespace)
    finally:
        kubelet.stop()
    assert status["phase"] == "Complete", status.get("conditions")
    # A few scrapes of the final state: increase() and rate() need two samples of every series.
    # (One series per outcome and reason, and the gauges the selection's end set: every one of them.)
    ended = ('min(count_over_time(lensllm_trials_total[1h])) >= 3 and '
             'min(count_over_time(lensllm_candidate_predicted_loss[1h])) >= 3')
    wait_for(lambda: len(prometheus.query(ended)["data"]["result"]) == 1,
             "Prometheus to scrape the finished selection", timeout=30, interval=0.5)

    exprs, variables = dashboard_queries()
    empty = []
    for expr in exprs:
        answer = prometheus.query(filled(expr, namespace, "watched"))
        assert answer["status"] == "success", f"{expr!r} does not parse: {answer.get('error')}"
        if not answer["data"]["result"]:
            empty.append(expr)
    for selector in variables:
        series = prometheus.get("/api/v1/series", **{"match[]": filled(selector, namespace, "watched")})["data"]
        if not series:
            empty.append(f"label_values({selector})")
    assert not empty, f"dashboard queries with no series for a finished selection: {empty}"
    for outcome, trials in (("succeeded", 2), ("failed", 1)):  # what the "Trials finished" panels show
        answer = prometheus.query(filled(f'sum(increase(lensllm_trials_total{{outcome="{outcome}"}}[$__range]))',
                                         namespace, "watched"))
        shown = float(answer["data"]["result"][0]["value"][1])
        assert round(shown) == trials, f"the dashboard shows {shown:g} {outcome} trials, {trials} finished"


def run_selection(kube: Cluster, namespace: str) -> dict[str, Any]:
    """A selection with two candidates that succeed and one that fails, on one GPU each (GPU-seconds count); a race
    of one round (four sizes: round 0 takes them all), so the race's panels have series too."""
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMSelection", "metadata": {"name": "watched"},
        "spec": {
            "candidates": [{"name": "good", "model": "/models/good"}, {"name": "fine", "model": "/models/fine"},
                           {"name": "gone", "model": "/models/missing"}],
            "dataset": {"source": "/data/task", "inputField": "input", "targetField": "target"},
            "budget": {"subsetSizes": [16, 32, 64, 128], "targetSize": 4096},
            "ntk": {"probeSize": 8}, "maxFailedCandidates": 1, "resources": {"nvidia.com/gpu": 1}, "strategy": "race",
            "race": {"initialSizes": 4},
        },
    }
    custom = kubernetes.client.CustomObjectsApi(kube.api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

    def finished() -> dict[str, Any] | None:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "watched").get("status") or {}
        return status if status.get("phase") in ("Complete", "Failed") else None

    return wait_for(finished, "the selection to finish", timeout=120, interval=0.3)
