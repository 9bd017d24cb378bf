"""The load run: many ten-candidate selections through the real operator process, each trial a real process that
writes a prepared, valid result document (tests/support/fast_trial.py), and the figures measured on the way.

Used by tests/reliability/test_load.py and scripts/reliability_figures.py. Measured, all from the emulated API
server's journal (tests/support/kube_emulator.py, one clock) and from /proc for the operator process:
- on an idle operator, the time from applying one selection to the creation of its last Job;
- for the flood: the time from the first apply to the last selection Complete, the operator's CPU seconds and peak
  RSS, its API requests per selection, the time from each Job's completion to its result in the selection's status
  (p50, p99, max; every trial, all of a race's rounds), and the apply-to-all-first-round-Jobs-created time per
  selection (p50, p99);
- the operator's liveness probe, polled every 0.2 s during the flood: its slowest answer (the probe is served by
  the event loop that every reconciliation shares);
- what else ran meanwhile: the CPU seconds of the test process (emulated API server, kubelet, Job controller) and of
  the trial processes, and the machine's load average: the wall times depend on them as much as on the operator.

Selections are fixed budgets (one trial per candidate) or races (the default strategy:
rounds of trials, each round decided by the operator's fits and bootstrap).
"""

import collections
import os
import resource
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
from cluster import Cluster, OperatorProcess, free_port, wait_for
from kube_emulator import ApiCall
from fast_trial import RESULTS, prepare
from kubelet import Kubelet
from lensllm.science.racing import schedule
from lensllm.selection.spec import LLMSelectionSpec

GROUP, VERSION, PLURAL = "lensllm.io", "v1alpha1", "llmselections"
FAST_TRIAL = Path(__file__).with_name("fast_trial.py")
SELECTION_LABEL = "lensllm.io/selection"


def manifest(name: str, candidates: int, strategy: str = "fixed") -> dict[str, Any]:
    """Ten candidates at once; a race gets a fifth size, so that it can run three rounds."""
    sizes = [16, 32, 64, 128] if strategy == "fixed" else [16, 32, 64, 128, 256]
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMSelection", "metadata": {"name": name},
        "spec": {
            "candidates": [{"name": f"c{i}", "model": f"/models/m{i}"} for i in range(candidates)],
            "dataset": {"source": "/data/task", "inputField": "input", "targetField": "target",
                        "maxTestExamples": 32},
            "budget": {"subsetSizes": sizes, "targetSize": 4096},
            "ntk": {"probeSize": 8}, "parallelism": candidates, "strategy": strategy,
        },
    }


def trial_size_sets(spec: LLMSelectionSpec) -> list[list[int]]:
    """The sizes a trial of this selection may be given: all of them, or those of one of a race's rounds."""
    if spec.strategy == "fixed":
        return [list(spec.budget.sizes)]
    return [list(sizes) for sizes in schedule(spec.race_settings(), spec.budget.sizes)]


class LivenessPoller:
    """Polls the operator's liveness probe in a thread and keeps how long each answer took (a failure: the timeout)."""

    def __init__(self, url: str, interval: float = 0.2, timeout: float = 10.0) -> None:
        self.url, self.interval, self.timeout = url, interval, timeout
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)

    def __enter__(self) -> "LivenessPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=self.timeout) as answer:
                    answer.read()
                self.seconds.append(time.monotonic() - started)
            except OSError:
                self.seconds.append(self.timeout)


def journal_jobs(job: dict[str, Any]) -> tuple[str, bool]:
    done = any(c.get("type") == "Complete" and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])
    return (job["metadata"].get("labels") or {}).get(SELECTION_LABEL, ""), done


def journal_selections(selection: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    """The phase, and the state of every trial, by its Job's name."""
    status = selection.get("status") or {}
    trials = [t for entry in (status.get("candidates") or {}).values() for t in entry.get("trials") or []]
    return status.get("phase"), {t.get("jobName"): t.get("state") for t in trials}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


class ProcStats:
    """CPU seconds and peak resident memory of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmHWM for pid {self.pid}")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children: the trial processes the kubelet ran (and reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(kube: Cluster, namespace: str, workdir: Path, selections: int = 100, candidates: int = 10,
             timeout: float = 900, strategy: str = "fixed") -> dict[str, Any]:
    """Apply `selections` selections at once to a fresh operator and measure (see the module docstring)."""
    results = workdir / "results"
    spec = LLMSelectionSpec.model_validate(manifest("x", candidates, strategy)["spec"])
    prepare(results, spec, [f"c{i}" for i in range(candidates)], trial_size_sets(spec))
    emulator = kube.emulator
    emulator.journaled.update(jobs=journal_jobs, llmselections=journal_selections)
    kubelet = Kubelet(kube.server, workdir / "pods", env={RESULTS: str(results)}, max_running=16,
                      commands={"lensllm": [sys.executable, "-S", str(FAST_TRIAL)]})
    try:
        operator, liveness = start_operator(kube, namespace, workdir)
        stats = ProcStats(operator.pid)
        custom = kubernetes.client.CustomObjectsApi(kube.api)
        idle = apply_and_wait(kube, custom, namespace, ["idle-probe"], candidates, timeout, strategy)
        harness = ProcStats(os.getpid())  # the emulated API server, kubelet and Job controller share this process
        cpu_before, harness_before, calls_before = stats.cpu_seconds(), harness.cpu_seconds(), len(kube.api_calls)
        trials_before = children_cpu_seconds()
        names = [f"load-{index:03d}" for index in range(selections)]
        with LivenessPoller(liveness) as probe:
            flood = apply_and_wait(kube, custom, namespace, names, candidates, timeout, strategy)
        operator_calls = kube.operator_calls(since=calls_before)
        figures = {
            "strategy": strategy, "selections": selections, "candidates": candidates,
            "idle_jobs_created_seconds": round(idle["jobs_created"][0], 3),
            "apply_to_all_complete_seconds": round(flood["all_complete"], 2),
            "complete": flood["complete"],
            "operator_cpu_seconds": round(stats.cpu_seconds() - cpu_before, 2),
            # The rest of the machine's work, so that the wall times can be read: on 2 shared cores an emulator
            # busy with a thousand pods slows every answer the operator waits for.
            "harness_cpu_seconds": round(harness.cpu_seconds() - harness_before, 2),
            "trial_processes_cpu_seconds": round(children_cpu_seconds() - trials_before, 2),
            "load_average_1m": os.getloadavg()[0],
            "operator_peak_rss_mib": round(stats.peak_rss_mib(), 1),
            "api_requests_per_selection": round(len(operator_calls) / selections, 1),
            # Which requests: a change in the total is traced here first.
            "api_requests_per_selection_by_kind": requests_by_kind(operator_calls, selections),
            "job_done_to_status_p50_seconds": round(percentile(flood["result_latency"], 0.5), 3),
            "job_done_to_status_p99_seconds": round(percentile(flood["result_latency"], 0.99), 3),
            "job_done_to_status_max_seconds": round(max(flood["result_latency"], default=float("nan")), 3),
            "jobs_created_p50_seconds": round(percentile(flood["jobs_created"], 0.5), 3),
            "jobs_created_p99_seconds": round(percentile(flood["jobs_created"], 0.99), 3),
            "liveness_p99_seconds": round(percentile(probe.seconds, 0.99), 3),
            "liveness_max_seconds": round(max(probe.seconds, default=float("nan")), 3),
            "trials_run": sum(kubelet.runs.values()),
        }
    finally:
        kubelet.stop()
    if kubelet.errors:
        raise AssertionError(f"the emulated kubelet failed: {kubelet.errors!r}")
    return figures


def start_operator(kube: Cluster, namespace: str, workdir: Path) -> tuple[OperatorProcess, str]:
    """The operator process, started, and its liveness probe's URL."""
    from kubelet import OFFLINE

    port = free_port()
    liveness = f"http://127.0.0.1:{port}/healthz"
    command = [sys.executable, "-m", "lensllm.cli.main", "operator", "--namespace", namespace,
               "--metrics-port", str(free_port()), "--liveness-port", str(port)]
    env = {**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1", "KUBECONFIG": str(kube.kubeconfig)}
    process = OperatorProcess(command, env, workdir / "operator.log", liveness, timeout=60)
    process.start()
    return process, liveness


def apply_and_wait(kube: Cluster, custom: Any, namespace: str, names: list[str], candidates: int,
                   timeout: float, strategy: str) -> dict[str, Any]:
    """Apply the selections one after the other, wait for all to end, and read the journal."""
    emulator = kube.emulator
    start = len(kube.server.call(lambda: emulator.journal))
    applied_at = time.monotonic()
    for name in names:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest(name, candidates, strategy))

    def ended() -> list[str] | None:
        phases = {name: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
                  .get("status", {}).get("phase") for name in names}
        return list(phases.values()) if all(p in ("Complete", "Failed") for p in phases.values()) else None

    try:
        phases = wait_for(ended, f"{len(names)} selections to end", timeout=timeout, interval=0.5)
    except AssertionError:
        phases = []
    journal = kube.server.call(lambda: list(emulator.journal[start:]))
    finished_at = max((e.at for e in journal if e.resource == "llmselections" and e.data[0] in ("Complete",
                                                                                               "Failed")),
                      default=time.monotonic())
    return {"all_complete": finished_at - applied_at, "complete": sum(p == "Complete" for p in phases),
            **latencies(journal, set(names), candidates)}


def latencies(journal: list[Any], names: set[str], candidates: int) -> dict[str, list[float]]:
    """Per selection: apply to its first round's last Job created; per trial (every round of a race): its Job
    Complete to the trial Succeeded in the status."""
    applied: dict[str, float] = {}
    created: dict[str, list[float]] = {}
    job_done: dict[str, float] = {}
    recorded: dict[str, float] = {}
    for entry in journal:
        if entry.resource == "llmselections" and entry.name in names:
            applied.setdefault(entry.name, entry.at)
            for job, state in entry.data[1].items():
                if state == "Succeeded":
                    recorded.setdefault(job, entry.at)
        elif entry.resource == "jobs":
            selection, done = entry.data
            if entry.type == "ADDED":
                created.setdefault(selection, []).append(entry.at)
            if done:
                job_done.setdefault(entry.name, entry.at)
    # The first `candidates` Jobs: a race creates more in its later rounds.
    jobs_created = [sorted(times)[candidates - 1] - applied[name] for name, times in created.items()
                    if name in applied and len(times) >= candidates]
    result_latency = [recorded[key] - at for key, at in job_done.items() if key in recorded]
    return {"jobs_created": jobs_created, "result_latency": result_latency}


def requests_by_kind(calls: list[ApiCall], selections: int) -> dict[str, float]:
    """Requests per selection by verb and resource (e.g. "patch llmselections/status"), most frequent first."""
    kinds = collections.Counter(f"{c.verb} {c.resource}{'/' + c.subresource if c.subresource else ''}" for c in calls)
    return {kind: round(count / selections, 2) for kind, count in kinds.most_common()}
