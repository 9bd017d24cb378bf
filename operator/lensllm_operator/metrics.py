"""Prometheus metrics of the operator, served on `/metrics` by prometheus-client.

Names follow Prometheus conventions (base units, `_total` for counters). Per-selection
series are removed when the selection is deleted so dashboards never show ghosts.
"""

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "Running", "Complete", "Failed")


class OperatorMetrics:
    """All series the operator exports, on one registry (tests use a private one)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.selections = Gauge(
            "lensllm_selections_current", "LLMSelections currently known, by phase.", ["phase"], registry=registry
        )
        self.trials = Counter(
            "lensllm_trials_total", "Finished trials (runner Jobs), by outcome.", ["outcome"], registry=registry
        )
        self.trial_duration = Histogram(
            "lensllm_trial_duration_seconds",
            "Wall time of finished trials.",
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
            registry=registry,
        )
        self.trials_running = Gauge(
            "lensllm_trials_running", "Runner Jobs currently running or queued.", ["namespace", "selection"], registry=registry
        )
        self.gpu_seconds = Counter(
            "lensllm_gpu_seconds_total", "GPU seconds spent by finished trials (wall time x GPUs).", registry=registry
        )
        self.selection_gpu_seconds = Gauge(
            "lensllm_selection_gpu_seconds",
            "GPU seconds a selection has spent so far.",
            ["namespace", "selection"],
            registry=registry,
        )
        self.full_finetune_gpu_seconds = Gauge(
            "lensllm_selection_full_finetune_gpu_seconds_estimate",
            "Estimated GPU seconds to fully fine-tune every candidate of a selection on targetSize examples.",
            ["namespace", "selection"],
            registry=registry,
        )
        self.predicted_loss = Gauge(
            "lensllm_candidate_predicted_loss",
            "Predicted loss of a candidate at the selection's target size.",
            ["namespace", "selection", "candidate"],
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "lensllm_reconcile_errors_total", "Reconciliations that raised an unexpected error.", registry=registry
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._candidates: dict[tuple[str, str], set[str]] = {}
        for phase in PHASES:
            self.selections.labels(phase=phase).set(0)

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)

    def set_phase(self, namespace: str, name: str, phase: str) -> None:
        self._phases[namespace, name] = phase
        self._refresh_phases()

    def record_trial(self, outcome: str, seconds: float, gpu_seconds: float) -> None:
        self.trials.labels(outcome=outcome).inc()
        self.trial_duration.observe(seconds)
        self.gpu_seconds.inc(gpu_seconds)

    def set_costs(self, namespace: str, name: str, spent_gpu_seconds: float, full_gpu_seconds: float | None) -> None:
        self.selection_gpu_seconds.labels(namespace=namespace, selection=name).set(spent_gpu_seconds)
        if full_gpu_seconds is not None:
            self.full_finetune_gpu_seconds.labels(namespace=namespace, selection=name).set(full_gpu_seconds)

    def set_running(self, namespace: str, name: str, running: int) -> None:
        self.trials_running.labels(namespace=namespace, selection=name).set(running)

    def set_predictions(self, namespace: str, name: str, predicted: dict[str, float]) -> None:
        for candidate in self._candidates.get((namespace, name), set()) - set(predicted):
            self.predicted_loss.remove(namespace, name, candidate)
        for candidate, loss in predicted.items():
            self.predicted_loss.labels(namespace=namespace, selection=name, candidate=candidate).set(loss)
        self._candidates[namespace, name] = set(predicted)

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted selection."""
        self.set_predictions(namespace, name, {})
        self._candidates.pop((namespace, name), None)
        self._phases.pop((namespace, name), None)
        for gauge in (self.trials_running, self.selection_gpu_seconds, self.full_finetune_gpu_seconds):
            try:
                gauge.remove(namespace, name)
            except KeyError:
                pass
        self._refresh_phases()

    def _refresh_phases(self) -> None:
        for phase in PHASES:
            self.selections.labels(phase=phase).set(sum(1 for p in self._phases.values() if p == phase))
