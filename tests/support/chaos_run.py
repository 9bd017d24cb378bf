"""One chaos run from start to finish: an emulated cluster, its kubelet running the stand-in trial, the real operator
process, one selection, a fault schedule (or none: the fault-free run), and the invariants checked at the end.

Used by tests/reliability/test_chaos.py (one run per seed) and scripts/reliability_figures.py. Each run builds its
own cluster in `workdir`, so runs are independent and can be repeated from their seed alone.
"""

import os
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import kubernetes
from chaos import (
    ChaosDriver,
    Outcome,
    Schedule,
    Verdict,
    apply_refusals,
    duplicate_jobs,
    models_not_kept,
    points_lost,
    points_measured_twice,
    selection_manifest,
    settling_table,
)
from cluster import OperatorProcess, free_port, wait_for, write_kubeconfig
from kube_emulator import EmulatorServer
from kubelet import OFFLINE, Kubelet
from stand_in_trial import LEDGER, SIZE_SECONDS, TABLE, TRAIN_EXAMPLES

STAND_IN = Path(__file__).with_name("stand_in_trial.py")
GROUP, VERSION, PLURAL = "lensllm.io", "v1alpha1", "llmselections"
NAMESPACE, NAME, CLAIM = "chaos", "trio", "work"
CRD = Path(__file__).resolve().parents[2] / "crds" / "llmselection.yaml"
# The operator's periodic resync (default 20 s): 5 s here keeps a run's healing, and the suite, short.
RESYNC = "LENSLLM_RESYNC_SECONDS"


class ChaosCluster:
    """The cluster of one run; `with ChaosCluster(workdir, ...) as cluster:` tears everything down at the end."""

    def __init__(self, workdir: Path, size_seconds: float, trial_env: dict[str, str]) -> None:
        self.workdir, self.ledger = workdir, workdir / "ledger.jsonl"
        self._size_seconds, self._trial_env = size_seconds, trial_env
        self._stack = ExitStack()
        self._restart_lock = threading.Lock()

    def __enter__(self) -> "ChaosCluster":
        self.server = EmulatorServer()
        self._stack.callback(self.server.stop)
        self.server.emulator.journaled["jobs"] = lambda job: dict(job["metadata"].get("labels") or {})
        self.kubeconfig = write_kubeconfig(self.workdir / "kubeconfig", self.server.url)
        self.api = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        self._stack.callback(self.api.close)
        self._load_crd()
        core = kubernetes.client.CoreV1Api(self.api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        claim = {"metadata": {"name": CLAIM}, "spec": {"accessModes": ["ReadWriteMany"],
                                                       "resources": {"requests": {"storage": "1Gi"}}}}
        core.create_namespaced_persistent_volume_claim(NAMESPACE, claim)
        env = {LEDGER: str(self.ledger), SIZE_SECONDS: str(self._size_seconds), **self._trial_env}
        self.kubelet = Kubelet(self.server, self.workdir / "pods", env=env,
                               commands={"lensllm": [sys.executable, str(STAND_IN)]})
        self._stack.callback(self.kubelet.stop)
        self.operator = self._operator()
        self._stack.callback(lambda: self.operator.returncode is None and self.operator.terminate(5))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _load_crd(self) -> None:
        import yaml

        custom = kubernetes.client.CustomObjectsApi(self.api)
        for doc in yaml.safe_load_all(CRD.read_text()):
            custom.create_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", doc)

    def _operator(self) -> OperatorProcess:
        metrics, liveness = free_port(), free_port()
        command = [sys.executable, "-m", "lensllm.cli.main", "operator", "--namespace", NAMESPACE,
                   "--metrics-port", str(metrics), "--liveness-port", str(liveness)]
        env = {**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1", "KUBECONFIG": str(self.kubeconfig),
               RESYNC: os.environ.get(RESYNC, "5")}
        process = OperatorProcess(command, env, self.workdir / "operator.log",
                                  f"http://127.0.0.1:{liveness}/healthz", timeout=60)
        process.start()
        return process

    def kill_and_restart_operator(self, pause: float) -> None:
        """SIGKILL the operator, as a node loss or OOM kill would, and start it again after `pause` seconds."""
        with self._restart_lock:
            self.operator.kill()
            time.sleep(pause)
            self.operator.start()

    def apply(self, manifest: dict[str, Any]) -> None:
        kubernetes.client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, manifest)

    def status(self) -> dict[str, Any]:
        custom = kubernetes.client.CustomObjectsApi(self.api)
        return custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME).get("status") or {}


def run_chaos(workdir: Path, schedule: Schedule | None, bound: float, size_seconds: float = 0.25,
              baseline: Verdict | None = None, strategy: str | None = None) -> Outcome:
    """Run the selection under `schedule` (None: no faults, with `strategy`) and check every invariant."""
    strategy = schedule.strategy if schedule is not None else strategy
    assert strategy is not None, "a fault-free run names its strategy"
    workdir.mkdir(parents=True, exist_ok=True)
    settling, trial_env = None, {}
    if strategy == "settle":  # the trials read their losses from the table, and report a target-size split
        settling = settling_table(workdir / "settling.csv")
        trial_env = {TABLE: str(workdir / "settling.csv"), TRAIN_EXAMPLES: str(int(settling.sizes[-1]))}
    with ChaosCluster(workdir, size_seconds, trial_env) as cluster:
        faults = cluster.server.emulator.faults
        if schedule is not None:
            apply_refusals(faults, schedule)
        driver = ChaosDriver(schedule, cluster.api, NAMESPACE, faults, cluster.kill_and_restart_operator) \
            if schedule is not None else None
        started = time.monotonic()
        cluster.apply(selection_manifest(NAME, schedule.parallelism if schedule else 3, CLAIM, strategy, settling))
        if driver is not None:
            driver.start()
        status = wait_terminal(cluster, bound)
        seconds = time.monotonic() - started
        if driver is not None:
            driver.stop()
        faults.clear()  # the cluster's state is read from here on, not hit
        outcome = Outcome(schedule.seed if schedule else None, strategy, status.get("phase"), seconds,
                          Verdict.of(status))
        outcome.faults = Counter(faults.counts()) + (driver.done if driver else Counter())
        outcome.violations = violations(cluster, status, bound, outcome, baseline)
        if settling is not None:
            outcome.violations += models_not_kept(status, int(settling.sizes[-1]), CLAIM,
                                                  cluster.workdir / "pods" / "claims" / f"{NAMESPACE}-{CLAIM}")
        log = cluster.operator.log
        outcome.operator_tracebacks = log.count("Traceback (most recent call last)")
        if outcome.violations:  # the run's folder goes with pytest's temporary ones: keep what explains it
            outcome.log_tail = [line for line in log.splitlines() if "[DEBUG" not in line][-40:]
        if driver is not None and driver.errors:
            outcome.violations.append(f"the chaos driver failed: {driver.errors!r}")
        if driver is not None and driver.settling_missed():
            outcome.violations.append(f"the chaos driver never hit the settling round ({schedule.settling})")
        if cluster.kubelet.errors:
            outcome.violations.append(f"the emulated kubelet failed: {cluster.kubelet.errors!r}")
        if errors := cluster.server.internal_errors():
            outcome.violations.append(f"the emulated API server failed: {errors!r}")
        return outcome


def wait_terminal(cluster: ChaosCluster, bound: float) -> dict[str, Any]:
    """The selection's status once Complete or Failed, or as it is when the bound has passed."""
    last: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal last
        try:
            last = cluster.status()
        except kubernetes.client.ApiException:
            return False
        return last.get("phase") in ("Complete", "Failed")

    try:
        wait_for(ended, "a terminal phase", timeout=bound, interval=0.1)
    except AssertionError:
        pass
    return last


def violations(cluster: ChaosCluster, status: dict[str, Any], bound: float, outcome: Outcome,
               baseline: Verdict | None) -> list[str]:
    found = []
    if status.get("phase") not in ("Complete", "Failed"):
        found.append(f"not terminal after {bound:g} s: phase {status.get('phase')}")
    found += duplicate_jobs(cluster.server.call(lambda: list(cluster.server.emulator.journal)))
    found += points_measured_twice(cluster.ledger)
    found += points_lost(status, outcome.strategy)
    if baseline is not None and outcome.verdict != baseline:
        found.append(f"verdict {outcome.verdict} differs from the fault-free {baseline}")
    return found
