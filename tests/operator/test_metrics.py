import asyncio
import logging
import urllib.error
import urllib.request

import kopf
from cluster import free_port
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from lensllm_operator import handlers
from lensllm_operator.config import OperatorConfig
from lensllm_operator.context import Context
from lensllm_operator.metrics import OperatorMetrics


def exposition(metrics: OperatorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_phases_are_counted_per_selection():
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.set_phase("ns", "a", "Running")
    metrics.set_phase("ns", "b", "Running")
    metrics.set_phase("ns", "a", "Complete")
    text = exposition(metrics)
    assert 'lensllm_selections_current{phase="Running"} 1.0' in text
    assert 'lensllm_selections_current{phase="Complete"} 1.0' in text


def test_a_deleted_selection_leaves_no_series_behind():
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.set_phase("ns", "a", "Complete")
    metrics.set_predictions("ns", "a", {"gpt2": 1.5, "opt": 1.2})
    metrics.set_costs("ns", "a", 100.0, 5000.0)
    metrics.set_trials("ns", "a", queued=1, running=2)
    metrics.set_progress("ns", "a", 0.03, 3)
    metrics.set_laws_agree("ns", "a", False)
    assert 'candidate="gpt2"' in exposition(metrics)
    assert 'lensllm_selection_rounds{namespace="ns",selection="a"} 3.0' in exposition(metrics)
    metrics.forget("ns", "a")
    text = exposition(metrics)
    assert 'selection="a"' not in text
    assert 'lensllm_selections_current{phase="Complete"} 0.0' in text


def test_a_scrape_while_a_selection_is_forgotten_never_counts_it_without_its_series(monkeypatch):
    """The exporter serves scrapes from its own thread, which can run between any two removals."""
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.set_phase("ns", "a", "Complete")
    metrics.set_predictions("ns", "a", {"gpt2": 1.5})
    metrics.set_trials("ns", "a", queued=0, running=0)
    metrics.set_laws_agree("ns", "a", True)
    scrapes = []
    remove = Gauge.remove

    def remove_then_scrape(gauge: Gauge, *labels: str) -> None:
        remove(gauge, *labels)
        scrapes.append(exposition(metrics))

    monkeypatch.setattr(Gauge, "remove", remove_then_scrape)
    metrics.forget("ns", "a")
    gone = [text for text in scrapes if 'selection="a"' not in text]
    assert gone and all('lensllm_selections_current{phase="Complete"} 0.0' in text for text in gone)


def test_laws_agree_is_exported_for_races_only():
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.set_laws_agree("ns", "race", True)
    metrics.set_laws_agree("ns", "split", False)
    metrics.set_laws_agree("ns", "fixed", None)
    text = exposition(metrics)
    assert 'lensllm_selection_laws_agree{namespace="ns",selection="race"} 1.0' in text
    assert 'lensllm_selection_laws_agree{namespace="ns",selection="split"} 0.0' in text
    assert 'selection="fixed"' not in text


def test_failed_trials_count_their_real_duration_and_gpu_time_by_reason():
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.record_trial("ns", "succeeded", "Succeeded", 42.0, 84.0)
    metrics.record_trial("ns", "failed", "OOMKilled", 5.0, 10.0)
    text = exposition(metrics)
    assert 'lensllm_trials_total{namespace="ns",outcome="failed",reason="OOMKilled"} 1.0' in text
    assert 'lensllm_trial_gpu_seconds_total{namespace="ns",outcome="failed",reason="OOMKilled"} 10.0' in text
    assert 'lensllm_trial_duration_seconds_sum{outcome="failed"} 5.0' in text
    assert 'lensllm_trial_duration_seconds_count{outcome="succeeded"} 1.0' in text


def test_gpu_time_accrues_while_trials_run_and_a_restart_counts_nothing_twice():
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.accrue_gpu_time("ns", "a", "pod-1", 30.0, seen_before_start=False)
    metrics.accrue_gpu_time("ns", "a", "pod-1", 90.0, seen_before_start=False)
    metrics.accrue_gpu_time("ns", "a", "pod-1", 90.0, seen_before_start=False)
    assert 'lensllm_gpu_seconds_total{namespace="ns"} 90.0' in exposition(metrics)

    restarted = OperatorMetrics(CollectorRegistry())  # the previous process counted pod-1's first 90 s
    restarted.accrue_gpu_time("ns", "a", "pod-1", 90.0, seen_before_start=True)
    restarted.accrue_gpu_time("ns", "a", "pod-1", 100.0, seen_before_start=True)
    assert 'lensllm_gpu_seconds_total{namespace="ns"} 10.0' in exposition(restarted)


def test_a_namespaces_trial_counters_exist_at_zero_before_its_first_trial_ends():
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.set_phase("ns", "a", "Running")
    text = exposition(metrics)
    assert 'lensllm_trials_total{namespace="ns",outcome="succeeded",reason="Succeeded"} 0.0' in text
    for reason in ("OOMKilled", "OutOfMemory", "PendingTimeout", "JobRejected"):
        assert f'lensllm_trials_total{{namespace="ns",outcome="failed",reason="{reason}"}} 0.0' in text
    assert 'lensllm_gpu_seconds_total{namespace="ns"} 0.0' in text


def test_the_counters_of_the_namespaces_the_operator_watches_are_at_zero_from_its_start():
    """A namespace's first trial can end before a scrape sees the zeros its first selection sets: Prometheus then
    takes the 1 for where the series began, and the dashboard counts no trial."""
    config = OperatorConfig(namespaces=("ml-team", "research"), metrics_port=free_port())
    memo = kopf.Memo(ctx=Context(config=config, metrics=OperatorMetrics(CollectorRegistry())))

    async def start_and_stop():
        await handlers.operator_startup(settings=kopf.OperatorSettings(), memo=memo, logger=logging.getLogger(__name__))
        await handlers.operator_cleanup(memo=memo)

    asyncio.run(start_and_stop())
    text = exposition(memo.ctx.metrics)
    for namespace in config.namespaces:
        assert f'lensllm_trials_total{{namespace="{namespace}",outcome="failed",reason="ModelNotFound"}} 0.0' in text
        assert f'lensllm_gpu_seconds_total{{namespace="{namespace}"}} 0.0' in text


def test_the_operator_serves_metrics_while_it_runs_and_closes_the_port_when_it_stops():
    config = OperatorConfig(metrics_port=free_port())
    memo = kopf.Memo(ctx=Context(config=config, metrics=OperatorMetrics(CollectorRegistry())))
    url = f"http://127.0.0.1:{config.metrics_port}/metrics"

    async def start_scrape_stop() -> str:
        await handlers.operator_startup(settings=kopf.OperatorSettings(), memo=memo, logger=logging.getLogger(__name__))
        scraped = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        await handlers.operator_cleanup(memo=memo)
        return scraped

    assert "lensllm_selections" in asyncio.run(start_scrape_stop())
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.URLError as err:
        assert isinstance(err.reason, ConnectionRefusedError)
    else:
        raise AssertionError("the metrics port still answers after the operator stopped")
