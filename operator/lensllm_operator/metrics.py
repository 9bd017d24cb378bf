"""Prometheus metrics of the operator, served on `/metrics` by prometheus-client.

Names follow Prometheus conventions (base units, `_total` for counters). Per-selection
series are removed when the selection is deleted so dashboards never show ghosts. The
reconciler calls these only after the status that justifies them was written, so a failed
status write never counts a trial twice.

GPU time is counted as Kubernetes saw the pods run, whether or not a result came back:
`lensllm_gpu_seconds_total` accrues while trials run (every reconciliation adds what passed
since the last), `lensllm_trial_gpu_seconds_total` books a whole trial when it ends, with its
outcome and reason.
"""

from typing import get_args
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from lensllm.trial.result import Reason

PHASES = ("Pending", "Running", "Complete", "Failed")
TRIAL_STATES = ("queued", "running")
# Why trials fail: the runner's own reasons and those the operator reads from Kubernetes. Their series exist
# from the first selection of a namespace on, at 0: Prometheus' increase() cannot count a series' first value.
FAILURE_REASONS = (*get_args(Reason), "OOMKilled", "DeadlineExceeded", "BackoffLimitExceeded", "ResultMissing",
                   "ResultInvalid", "JobRejected", "JobForbidden", "JobNameTaken", "JobLost", "PendingTimeout",
                   "ImagePullBackOff", "CreateContainerConfigError", "Unschedulable", "KueueInadmissible")


class OperatorMetrics:
    """All series the operator exports, on one registry (tests use a private one)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.selections = Gauge(
            "lensllm_selections_current", "LLMSelections currently known, by phase.", ["phase"], registry=registry
        )
        self.trials = Counter(
            "lensllm_trials_total",
            "Finished trials (runner Jobs), by outcome and reason (Succeeded, or why it failed).",
            ["namespace", "outcome", "reason"],
            registry=registry,
        )
        self.trial_duration = Histogram(
            "lensllm_trial_duration_seconds",
            "Time the pods of finished trials ran, retries included.",
            ["outcome"],
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
            registry=registry,
        )
        self.trial_gpu_seconds = Counter(
            "lensllm_trial_gpu_seconds_total",
            "GPU seconds of finished trials (pod run time x GPUs), by outcome and reason.",
            ["namespace", "outcome", "reason"],
            registry=registry,
        )
        self.trials_current = Gauge(
            "lensllm_trials_current",
            "Unfinished trial Jobs, queued (not started) or running.",
            ["namespace", "selection", "state"],
            registry=registry,
        )
        self.gpu_seconds = Counter(
            "lensllm_gpu_seconds_total",
            "GPU seconds held by trial pods, accrued while they run, by namespace.",
            ["namespace"],
            registry=registry,
        )
        self.selection_gpu_seconds = Gauge(
            "lensllm_selection_gpu_seconds",
            "GPU seconds a selection has spent so far, running trials included.",
            ["namespace", "selection"],
            registry=registry,
        )
        self.full_finetune_gpu_seconds = Gauge(
            "lensllm_selection_full_finetune_gpu_seconds_estimate",
            "Estimated GPU seconds to fully fine-tune every candidate of a selection on targetSize examples.",
            ["namespace", "selection"],
            registry=registry,
        )
        self.compute_fraction = Gauge(
            "lensllm_selection_compute_fraction",
            "Compute a selection spent (subset size x parameters over measured points) as a fraction of fully "
            "fine-tuning every candidate on targetSize: what a race saves shows here.",
            ["namespace", "selection"],
            registry=registry,
        )
        self.rounds = Gauge(
            "lensllm_selection_rounds",
            "Rounds a selection has started (1 for a fixed budget; a race adds one per round).",
            ["namespace", "selection"],
            registry=registry,
        )
        self.laws_agree = Gauge(
            "lensllm_selection_laws_agree",
            "For a race, 1 when every law's fit predicted the same best candidate in its latest round ranked by the "
            "laws, 0 when they disagree (the selection completes with LawsAgree=False: reason LawsDisagree when the "
            "ranking hangs on the law, SettledByMeasurement when the race fine-tuned the laws' leaders on targetSize).",
            ["namespace", "selection"],
            registry=registry,
        )
        self.predicted_loss = Gauge(
            "lensllm_candidate_predicted_loss",
            "Predicted loss of a candidate at the selection's target size.",
            ["namespace", "selection", "candidate"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "lensllm_decision_seconds",
            "Time from handing the operator's science thread a race's round to decide (task=round) or a finished "
            "selection to rank (task=rank) to its answer, waiting behind other selections included.",
            ["task"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "lensllm_reconcile_errors_total",
            "Reconciliations that raised, by kind: transient (retried with backoff) or unexpected.",
            ["kind"],
            registry=registry,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._candidates: dict[tuple[str, str], set[str]] = {}
        self._accounted: dict[tuple[str, str], dict[str, float]] = {}
        self._namespaces: set[str] = set()
        self._server: WSGIServer | None = None
        for phase in PHASES:
            self.selections.labels(phase=phase).set(0)
        for kind in ("transient", "unexpected"):
            self.reconcile_errors.labels(kind=kind)

    def serve(self, port: int) -> None:
        self._server, _ = start_http_server(port, registry=self.registry)

    def stop_serving(self) -> None:
        """Close the metrics port: an operator stopped in-process (tests, embedding) must not keep it bound."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set_phase(self, namespace: str, name: str, phase: str) -> None:
        self._phases[namespace, name] = phase
        self._refresh_phases()
        self.start_counters(namespace)

    def start_counters(self, namespace: str) -> None:
        """Every outcome and known reason of a namespace at 0, so that the first trial to end is an increase.

        Prometheus sees no increase in a series whose first sample is already 1: the sooner the zeros are
        served, the likelier a scrape finds them before the namespace's first trial ends.
        """
        if namespace in self._namespaces:
            return
        self._namespaces.add(namespace)
        for outcome, reason in (("succeeded", "Succeeded"), *(("failed", r) for r in FAILURE_REASONS)):
            self.trials.labels(namespace=namespace, outcome=outcome, reason=reason)
            self.trial_gpu_seconds.labels(namespace=namespace, outcome=outcome, reason=reason)
        for outcome in ("succeeded", "failed"):
            self.trial_duration.labels(outcome=outcome)
        self.gpu_seconds.labels(namespace=namespace)

    def record_trial(self, namespace: str, outcome: str, reason: str, seconds: float, gpu_seconds: float) -> None:
        self.trials.labels(namespace=namespace, outcome=outcome, reason=reason).inc()
        self.trial_duration.labels(outcome=outcome).observe(seconds)
        self.trial_gpu_seconds.labels(namespace=namespace, outcome=outcome, reason=reason).inc(gpu_seconds)

    def accrue_gpu_time(self, namespace: str, selection: str, pod: str, gpu_seconds: float, *, seen_before_start: bool) -> None:
        """Add what a trial pod's GPU time grew by since it was last seen.

        A pod first seen by this process but created before it started has been counted by
        the previous operator process: its time so far becomes the baseline, not an increase.
        """
        accounted = self._accounted.setdefault((namespace, selection), {})
        if pod not in accounted and seen_before_start:
            accounted[pod] = gpu_seconds
            return
        grown = gpu_seconds - accounted.get(pod, 0.0)
        if grown > 0:
            self.gpu_seconds.labels(namespace=namespace).inc(grown)
            accounted[pod] = gpu_seconds

    def set_costs(self, namespace: str, name: str, spent_gpu_seconds: float, full_gpu_seconds: float | None) -> None:
        self.selection_gpu_seconds.labels(namespace=namespace, selection=name).set(spent_gpu_seconds)
        if full_gpu_seconds is not None:
            self.full_finetune_gpu_seconds.labels(namespace=namespace, selection=name).set(full_gpu_seconds)

    def set_progress(self, namespace: str, name: str, compute_fraction: float, rounds: int) -> None:
        self.compute_fraction.labels(namespace=namespace, selection=name).set(compute_fraction)
        self.rounds.labels(namespace=namespace, selection=name).set(rounds)

    def set_laws_agree(self, namespace: str, name: str, agree: bool | None) -> None:
        """`agree` None (a fixed budget, or a race before its first decided round) exports no series."""
        if agree is None:
            _remove(self.laws_agree, namespace, name)
        else:
            self.laws_agree.labels(namespace=namespace, selection=name).set(int(agree))

    def set_trials(self, namespace: str, name: str, queued: int, running: int) -> None:
        self.trials_current.labels(namespace=namespace, selection=name, state="queued").set(queued)
        self.trials_current.labels(namespace=namespace, selection=name, state="running").set(running)

    def set_predictions(self, namespace: str, name: str, predicted: dict[str, float]) -> None:
        for candidate in self._candidates.get((namespace, name), set()) - set(predicted):
            self.predicted_loss.remove(namespace, name, candidate)
        for candidate, loss in predicted.items():
            self.predicted_loss.labels(namespace=namespace, selection=name, candidate=candidate).set(loss)
        self._candidates[namespace, name] = set(predicted)

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted selection.

        The phase counts change first: a scrape (another thread) that no longer finds the selection's series must
        not find it counted either.
        """
        self._phases.pop((namespace, name), None)
        self._refresh_phases()
        self._accounted.pop((namespace, name), None)
        self.set_predictions(namespace, name, {})
        self._candidates.pop((namespace, name), None)
        for state in TRIAL_STATES:
            _remove(self.trials_current, namespace, name, state)
        for gauge in (self.selection_gpu_seconds, self.full_finetune_gpu_seconds, self.compute_fraction, self.rounds,
                      self.laws_agree):
            _remove(gauge, namespace, name)

    def _refresh_phases(self) -> None:
        for phase in PHASES:
            self.selections.labels(phase=phase).set(sum(1 for p in self._phases.values() if p == phase))


def _remove(gauge: Gauge, *labels: str) -> None:
    """Drop the series of `gauge` with these label values, if it has one."""
    try:
        gauge.remove(*labels)
    except KeyError:
        pass
