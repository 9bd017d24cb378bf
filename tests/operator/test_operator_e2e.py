"""The real operator process against the emulated API server, with a kubelet that runs the real
`lensllm run-trial` for every Job the operator creates: on the demo's models where the ranking is checked against
local mode, around the stand-in's synthetic curves (tests/support/stand_in_trial.py) where only the operator's
handling of Jobs is (one size in tenths of a second instead of seconds of training)."""

import io
import sys

import pytest
import yaml
from cluster import wait_for
from demo_selection import demo_models, selection_manifest
from kubernetes.client.rest import ApiException
from selections import (
    GROUP, PLURAL, SELECTION_TIMEOUT, VERSION, comparable, create, events_of, run_locally, selection_status,
    stand_in_selection, wait_for_phase,
)

from lensllm.cli.main import main
from lensllm.selection.plan import Trial
from lensllm_operator.names import job_name


def test_three_tiny_candidates_are_ranked_as_local_mode_ranks_them_with_the_same_status(
    demo_world, kube, namespace, kubelet, start_operator, custom, tmp_path
):
    operator = start_operator()
    # One GPU requested per trial (the emulated kubelet runs them on the CPU): GPU seconds are then counted.
    # A 64-example NTK probe (asked for: the default method does not use it): its spectrum no longer fits a 4 KiB
    # termination message whole.
    doc = selection_manifest(demo_world, demo_models(demo_world), name="trio", resources={"nvidia.com/gpu": 1},
                             ntk={"enabled": True, "probeSize": 64})
    create(custom, namespace, doc)
    status = wait_for_phase(custom, namespace, "trio", "Complete", "Failed")
    assert status.phase == "Complete", status.conditions
    for name, entry in status.candidates.items():
        assert entry.state == "Succeeded" and [p.size for p in entry.points] == [16, 32, 64, 128], name
        assert entry.fit and entry.rank and entry.predicted_loss and entry.ntk and entry.zero_shot
    assert status.progress == "3/3" and status.compute.flops > 0

    assert all(entry.ntk.n == 64 for entry in status.candidates.values())
    cluster_status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "trio")["status"]
    assert comparable(run_locally(doc, tmp_path)) == comparable(cluster_status)

    assert any(e.reason == "Complete" and status.best in e.message for e in events_of(kube, namespace, "trio"))
    assert operator.sample("lensllm_trials_total", namespace=namespace, outcome="succeeded", reason="Succeeded") == 3
    assert operator.sample("lensllm_selections_current", phase="Complete") == 1
    for name, entry in status.candidates.items():
        predicted = operator.sample("lensllm_candidate_predicted_loss", namespace=namespace, selection="trio", candidate=name)
        assert predicted == pytest.approx(entry.predicted_loss)
    assert status.compute.gpu_seconds > 0
    assert operator.sample("lensllm_selection_gpu_seconds", namespace=namespace, selection="trio") == pytest.approx(
        status.compute.gpu_seconds
    )
    # Accrued while running to the sub-second, booked at the end from the pods' whole-second timestamps.
    accrued = operator.sample("lensllm_gpu_seconds_total", namespace=namespace)
    assert accrued == pytest.approx(status.compute.gpu_seconds, abs=3)
    assert operator.sample("lensllm_reconcile_errors_total", kind="unexpected") == 0


def test_kubectl_apply_of_a_manifest_file_starts_a_selection_and_reports_it(
    namespace, stand_in, start_operator, kubectl, tmp_path, custom, monkeypatch, capsys
):
    start_operator()
    path = tmp_path / "selection.yaml"
    doc = stand_in_selection("applied", "model-a")
    doc["metadata"]["namespace"] = namespace
    path.write_text(yaml.safe_dump(doc))
    kubectl("apply", "-f", str(path))
    status = wait_for_phase(custom, namespace, "applied", "Complete", "Failed")
    assert status.phase == "Complete", status.conditions
    shown = kubectl("get", "llmsel", "applied", "-n", namespace, "-o", "jsonpath={.status.phase} {.status.best} {.status.progress}")
    assert shown.stdout == "Complete model-a 1/1"

    as_json = kubectl("get", "llmsel", "applied", "-n", namespace, "-o", "json").stdout
    monkeypatch.setattr(sys, "stdin", io.StringIO(as_json))  # kubectl get ... -o json | lensllm report -
    assert main(["report", "-"]) == 0
    assert "model-a" in capsys.readouterr().out


def test_parallelism_one_runs_one_job_at_a_time_and_a_missing_model_degrades_the_selection(
    namespace, stand_in, start_operator, custom
):
    start_operator()
    doc = stand_in_selection("careful", "model-a", "missing", "model-b", parallelism=1, maxFailedCandidates=1)
    create(custom, namespace, doc)
    status = wait_for_phase(custom, namespace, "careful", "Complete", "Failed")
    assert status.phase == "Complete"
    assert {c.type for c in status.conditions} == {"Complete", "Degraded"}
    assert status.candidates["missing"].state == "Failed" and status.candidates["missing"].reason == "ModelNotFound"
    assert sorted(r.candidate for r in status.ranking) == ["model-a", "model-b"]
    assert stand_in.max_concurrency == 1


def test_an_invalid_spec_is_refused_by_the_schema_or_fails_with_invalid_spec(
    demo_world, kube, namespace, kubelet, start_operator, custom, batch
):
    start_operator()
    wrong_type = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"), name="typo", parallelism="many")
    with pytest.raises(ApiException) as refused:
        create(custom, namespace, wrong_type)
    assert refused.value.status == 422 and "parallelism" in refused.value.body
    same_law_twice = selection_manifest(demo_world, demo_models(demo_world, "tiny-opt"), name="laws", strategy="race",
                                        race={"laws": ["vanilla", "vanilla"]})
    with pytest.raises(ApiException) as refused:
        create(custom, namespace, same_law_twice)
    assert refused.value.status == 422 and 'spec.race.laws[1]: Duplicate value: \\"vanilla\\"' in refused.value.body

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
    namespace, stand_in, start_operator, custom, batch
):
    operator = start_operator()
    models = ("model-a", "model-b", "model-c")
    create(custom, namespace, stand_in_selection("phoenix", *models, parallelism=1))

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
    uid = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "phoenix")["metadata"]["uid"]
    assert sorted(jobs) == sorted(job_name("phoenix", uid, Trial(c, 0, ())) for c in models)
    assert all(count == 1 for count in stand_in.runs.values()), stand_in.runs


def test_deleting_a_selection_collects_its_jobs_and_its_metric_series(
    namespace, stand_in, start_operator, custom, batch
):
    operator = start_operator()
    create(custom, namespace, stand_in_selection("ephemeral", "model-a", "model-b"))
    wait_for_phase(custom, namespace, "ephemeral", "Complete")
    # The metrics follow the status write (a reconciliation's effects run once its status is written).
    wait_for(lambda: operator.sample("lensllm_candidate_predicted_loss", namespace=namespace, selection="ephemeral",
                                     candidate="model-a"), "the candidate's predicted loss series")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ephemeral")
    wait_for(lambda: not batch.list_namespaced_job(namespace).items, "the Jobs to be garbage-collected")
    wait_for(lambda: 'selection="ephemeral"' not in operator.metrics(), "the selection's series to disappear")
    assert operator.sample("lensllm_selections_current", phase="Complete") == 0
