from prometheus_client import CollectorRegistry, generate_latest

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
    metrics.set_running("ns", "a", 0)
    assert 'candidate="gpt2"' in exposition(metrics)
    metrics.forget("ns", "a")
    text = exposition(metrics)
    assert 'selection="a"' not in text
    assert 'lensllm_selections_current{phase="Complete"} 0.0' in text


def test_trials_feed_the_counters_and_the_duration_histogram():
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.record_trial("succeeded", 42.0, 84.0)
    metrics.record_trial("failed", 5.0, 5.0)
    text = exposition(metrics)
    assert 'lensllm_trials_total{outcome="succeeded"} 1.0' in text
    assert "lensllm_gpu_seconds_total 89.0" in text
    assert "lensllm_trial_duration_seconds_count 2.0" in text
