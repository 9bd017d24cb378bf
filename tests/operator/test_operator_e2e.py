"""The real operator process against the emulated API server, with a kubelet that runs the real
`lensllm run-trial` for every Job the operator creates."""

import io
import json
import sys
import urllib.request
from pathlib import Path

import kubernetes
import pytest
import yaml
from cluster import free_port, wait_for
from demo_selection import demo_models, selection_manifest
from kubernetes.client.rest import ApiException

from lensllm.cli.main import main
from lensllm.selection.status import LLMSelectionStatus

GROUP, VERSION, PLURAL = "lensllm.io", "v1alpha1", "llmselections"
SELECTION_TIMEOUT = 240


class Operator:
    """The operator subprocess and what a test reads from it."""

    def __init__(self, process, metrics_port: int) -> None:
        self.process = process
        self.metrics_port = metrics_port

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of one series in the exposition, or None when it is absent."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and found == wanted:
                return float(value)
        return None


@pytest.fixture
def start_operator(operator_process, namespace):
    def start() -> Operator:
        metrics, liveness = free_port(), free_port()
        command = [sys.executable, "-m", "lensllm.cli.main", "operator", "--namespace", namespace,
                   "--metrics-port", str(metrics), "--liveness-port", str(liveness)]
        process = operator_process(command, ready=f"http://127.0.0.1:{liveness}/healthz", timeout=30)
        return Operator(process, metrics)

    return start


@pytest.fixture
def custom(kube):
    return kubernetes.client.CustomObjectsApi(kube.api)


@pytest.fixture
def batch(kube):
    return kubernetes.client.BatchV1Api(kube.api)


def create(custom, namespace: str, doc: dict) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)


def selection_status(custom, namespace: str, name: str) -> LLMSelectionStatus | None:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    raw = obj.get("status") or {}
    return LLMSelectionStatus.model_validate(raw) if raw.get("phase") else None


def wait_for_phase(custom, namespace: str, name: str, *phases: str, timeout: float = SELECTION_TIMEOUT) -> LLMSelectionStatus:
    def ended():
        status = selection_status(custom, namespace, name)
        return status if status and status.phase in phases else None

    return wait_for(ended, f"selection {name} to reach {phases}", timeout=timeout, interval=0.2)


def events_of(kube, namespace: str, name: str) -> list[dict]:
    events = kubernetes.client.CoreV1Api(kube.api).list_namespaced_event(namespace)
    return [e for e in events.items if e.involved_object and e.involved_object.name == name]


def test_three_tiny_candidates_are_ranked_as_local_mode_ranks_them(
    demo_world, kube, namespace, kubelet, start_operator, custom, tmp_path
):
    operator = start_operator()
    # One GPU requested per trial (the emulated kubelet runs them on the CPU): GPU seconds are then counted.
    doc = selection_manifest(demo_world, demo_models(demo_world), name="trio", resources={"nvidia.com/gpu": 1})
    create(custom, namespace, doc)
    status = wait_for_phase(custom, namespace, "trio", "Complete", "Failed")
    assert status.phase == "Complete", status.conditions
    for name, entry in status.candidates.items():
        assert entry.state == "Succeeded" and [p.size for p in entry.points] == [16, 32, 64, 128], name
        assert entry.fit and entry.rank and entry.predicted_loss and entry.ntk and entry.zero_shot
    assert status.progress == "3/3" and status.compute.flops > 0

    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump(doc))
    assert main(["select", str(local), "--local", "--out", str(tmp_path / "out")]) == 0
    local_status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert [r.candidate for r in status.ranking] == [r["candidate"] for r in local_status["ranking"]]
    assert status.best == local_status["best"]

    assert any(e.reason == "Complete" and status.best in e.message for e in events_of(kube, namespace, "trio"))
    assert operator.sample("lensllm_trials_total", outcome="succeeded") == 3
    assert operator.sample("lensllm_selections_current", phase="Complete") == 1
    for name, entry in status.candidates.items():
        predicted = operator.sample("lensllm_candidate_predicted_loss", namespace=namespace, selection="trio", candidate=name)
        assert predicted == pytest.approx(entry.predicted_loss)
    assert status.compute.gpu_seconds > 0
    assert operator.sample("lensllm_selection_gpu_seconds", namespace=namespace, selection="trio") == pytest.approx(
        status.compute.gpu_seconds
    )
    assert operator.sample("lensllm_gpu_seconds_total") == pytest.approx(status.compute.gpu_seconds)
    assert operator.sample("lensllm_reconcile_errors_total") == 0


def test_kubectl_apply_of_a_manifest_file_starts_a_selection_and_reports_it(
    demo_world, namespace, kubelet, start_operator, kubectl, tmp_path, custom, monkeypatch, capsys
):
    start_operator()
    path = tmp_path / "selection.yaml"
    doc = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"), name="applied", namespace=namespace,
                             budget={"subsetSizes": [16, 32, 64], "targetSize": 1024})
    path.write_text(yaml.safe_dump(doc))
    kubectl("apply", "-f", str(path))
    status = wait_for_phase(custom, namespace, "applied", "Complete", "Failed")
    assert status.phase == "Complete", status.conditions
    shown = kubectl("get", "llmsel", "applied", "-n", namespace, "-o", "jsonpath={.status.phase} {.status.best} {.status.progress}")
    assert shown.stdout == "Complete tiny-opt 1/1"

    as_json = kubectl("get", "llmsel", "applied", "-n", namespace, "-o", "json").stdout
    monkeypatch.setattr(sys, "stdin", io.StringIO(as_json))  # kubectl get ... -o json | lensllm report -
    assert main(["report", "-"]) == 0
    assert "tiny-opt" in capsys.readouterr().out


def test_parallelism_one_runs_one_job_at_a_time_and_a_missing_model_degrades_the_selection(
    demo_world, namespace, kubelet, start_operator, custom, tmp_path
):
    start_operator()
    models = {"tiny-opt": str(demo_world / "models" / "tiny-opt"), "ghost": str(tmp_path / "missing"),
              "tiny-llama": str(demo_world / "models" / "tiny-llama")}
    doc = selection_manifest(demo_world, models, name="careful", parallelism=1, maxFailedCandidates=1,
                             budget={"subsetSizes": [16, 32, 64], "targetSize": 1024})
    create(custom, namespace, doc)
    status = wait_for_phase(custom, namespace, "careful", "Complete", "Failed")
    assert status.phase == "Complete"
    assert {c.type for c in status.conditions} == {"Complete", "Degraded"}
    assert status.candidates["ghost"].state == "Failed" and status.candidates["ghost"].reason == "ModelNotFound"
    assert sorted(r.candidate for r in status.ranking) == ["tiny-llama", "tiny-opt"]
    assert kubelet.max_concurrency == 1


def test_an_invalid_spec_is_refused_by_the_schema_or_fails_with_invalid_spec(
    demo_world, kube, namespace, kubelet, start_operator, custom, batch
):
    start_operator()
    wrong_type = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"), name="typo", parallelism="many")
    with pytest.raises(ApiException) as refused:
        create(custom, namespace, wrong_type)
    assert refused.value.status == 422 and "parallelism" in refused.value.body

    twins = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"), name="twins")
    twins["spec"]["candidates"].append(dict(twins["spec"]["candidates"][0]))
    create(custom, namespace, twins)
    status = wait_for_phase(custom, namespace, "twins", "Failed", timeout=20)
    failed = status.conditions[-1]
    assert (failed.type, failed.reason) == ("Failed", "InvalidSpec")
    assert "candidate name 'tiny-opt' is used twice" in failed.message
    assert any(e.reason == "InvalidSpec" for e in events_of(kube, namespace, "twins"))
    assert batch.list_namespaced_job(namespace).items == []


def test_a_killed_operator_restarts_and_finishes_with_no_duplicate_job_and_no_lost_result(
    demo_world, namespace, kubelet, start_operator, custom, batch
):
    operator = start_operator()
    doc = selection_manifest(demo_world, demo_models(demo_world), name="phoenix", parallelism=1)
    create(custom, namespace, doc)

    def first_recorded():
        status = selection_status(custom, namespace, "phoenix")
        return status and sum(e.state == "Succeeded" for e in status.candidates.values()) >= 1 and status

    before = wait_for(first_recorded, "a first result in status", timeout=SELECTION_TIMEOUT, interval=0.2)
    operator.process.kill()
    operator.process.start()
    status = wait_for_phase(custom, namespace, "phoenix", "Complete")
    done_before = [n for n, e in before.candidates.items() if e.state == "Succeeded"]
    for name in done_before:
        assert status.candidates[name].points == before.candidates[name].points
    jobs = [j.metadata.name for j in batch.list_namespaced_job(namespace).items]
    assert sorted(jobs) == sorted(f"phoenix-{c}-r0" for c in ("tiny-gpt2", "tiny-opt", "tiny-llama"))
    assert all(count == 1 for count in kubelet.runs.values()), kubelet.runs


def test_deleting_a_selection_collects_its_jobs_and_its_metric_series(
    demo_world, namespace, kubelet, start_operator, custom, batch
):
    operator = start_operator()
    doc = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt", "tiny-llama"), name="ephemeral",
                             budget={"subsetSizes": [16, 32, 64], "targetSize": 1024})
    create(custom, namespace, doc)
    wait_for_phase(custom, namespace, "ephemeral", "Complete")
    assert operator.sample("lensllm_candidate_predicted_loss", namespace=namespace, selection="ephemeral", candidate="tiny-opt")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ephemeral")
    wait_for(lambda: not batch.list_namespaced_job(namespace).items, "the Jobs to be garbage-collected")
    wait_for(lambda: 'selection="ephemeral"' not in operator.metrics(), "the selection's series to disappear")
    assert operator.sample("lensllm_selections_current", phase="Complete") == 0
