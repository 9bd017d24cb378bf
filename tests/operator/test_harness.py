"""The end-to-end harness behaves like a cluster wherever the operator depends on it.

Each test drives the emulated API server (tests/support/kube_emulator.py) and kubelet (tests/support/kubelet.py)
only through the kubernetes client, kubectl or a throw-away kopf operator, and checks what a real cluster would
answer. A throw-away CRD (`widgets.harness.example.com`) keeps these tests independent of the project's own CRD.
"""

import contextlib
import json
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
from cluster import Cluster, OperatorProcess, free_port, wait_for
from harness_tools import crd_file, error_of, finished, job_body, kopf_operator, pods_of
from kube_emulator import ApiCall
from kubelet import Kubelet
from kubernetes import client, watch

GROUP, VERSION, PLURAL = "harness.example.com", "v1", "widgets"
WIDGET_SPEC = {"type": "object", "required": ["size"], "properties": {
    "size": {"type": "integer", "minimum": 1},
    "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
}}
SLEEP = ["python", "-c", "import time; time.sleep(60)"]



@pytest.fixture
def widgets(kube: Cluster, tmp_path: Path) -> client.CustomObjectsApi:
    """The throw-away CRD, loaded from a file as the project's CRDs are."""
    kube.load_crds(crd_file(tmp_path, GROUP, "Widget", WIDGET_SPEC, shortNames=["wdg"]))
    return client.CustomObjectsApi(kube.api)


def create_widget(api: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name}, "spec": spec}
    return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def patch_widget(api: client.CustomObjectsApi, namespace: str, patch: dict[str, Any], status: bool = False) -> Any:
    """Patch the widget `w`, through /status if asked."""
    method = api.patch_namespaced_custom_object_status if status else api.patch_namespaced_custom_object
    return method(GROUP, VERSION, namespace, PLURAL, "w", patch)






def test_create_answers_201_with_server_set_metadata(core: client.CoreV1Api, batch: client.BatchV1Api,
                                                     namespace: str) -> None:
    config_map, status, _ = core.create_namespaced_config_map_with_http_info(namespace, {"metadata": {"name": "c"}})
    assert status == 201
    assert uuid.UUID(config_map.metadata.uid) and config_map.metadata.creation_timestamp is not None
    job = batch.create_namespaced_job(namespace, job_body("j", ["true"], suspend=True))
    assert job.metadata.generation == 1
    assert int(job.metadata.resource_version) > int(config_map.metadata.resource_version)
    assert job.spec.backoff_limit == 6 and job.spec.template.metadata.labels["job-name"] == "j"

    labelled = batch.patch_namespaced_job("j", namespace, {"metadata": {"labels": {"a": "b"}}})
    assert labelled.metadata.generation == 1 and labelled.metadata.uid == job.metadata.uid
    resized = batch.patch_namespaced_job("j", namespace, {"spec": {"backoffLimit": 2}})
    assert resized.metadata.generation == 2
    assert int(resized.metadata.resource_version) > int(labelled.metadata.resource_version)


def test_generate_name_gives_each_object_its_own_name(core: client.CoreV1Api, namespace: str) -> None:
    names = {core.create_namespaced_config_map(namespace, {"metadata": {"generateName": "cfg-"}}).metadata.name
             for _ in range(5)}
    assert len(names) == 5 and all(name.startswith("cfg-") and len(name) == 9 for name in names)


def test_failures_carry_standard_status_reasons(core: client.CoreV1Api, namespace: str) -> None:
    created = core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}})
    core.patch_namespaced_config_map("c", namespace, {"data": {"k": "v"}})
    stale = {"metadata": {"name": "c", "resourceVersion": created.metadata.resource_version}}
    bad_label = {"metadata": {"name": "d", "labels": {"model": "org/model"}}}

    assert error_of(lambda: core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}}))[:2] == (
        409, "AlreadyExists")
    assert error_of(lambda: core.read_namespaced_config_map("missing", namespace)) == (
        404, "NotFound", 'configmaps "missing" not found')
    assert error_of(lambda: core.replace_namespaced_config_map("c", namespace, stale))[:2] == (409, "Conflict")
    assert error_of(lambda: core.create_namespaced_config_map(namespace, bad_label))[:2] == (422, "Invalid")
    assert error_of(lambda: core.create_namespaced_config_map("nowhere", {"metadata": {"name": "e"}}))[:2] == (
        404, "NotFound")


def test_failed_json_patch_test_is_422(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}})
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
           {"op": "add", "path": "/data", "value": {"k": "v"}}]
    assert error_of(lambda: core.patch_namespaced_config_map("c", namespace, ops))[:2] == (422, "Invalid")
    assert core.read_namespaced_config_map("c", namespace).data is None


def test_status_and_spec_are_written_through_separate_endpoints(widgets: client.CustomObjectsApi,
                                                                namespace: str) -> None:
    create_widget(widgets, namespace, "w", {"size": 1})
    main = patch_widget(widgets, namespace, {"spec": {"size": 2}, "status": {"phase": "Ignored"}})
    assert main["spec"]["size"] == 2 and "status" not in main and main["metadata"]["generation"] == 2

    status = patch_widget(widgets, namespace, {"spec": {"size": 9}, "status": {"phase": "Ready"}}, status=True)
    assert status["spec"]["size"] == 2 and status["status"] == {"phase": "Ready"}
    assert status["metadata"]["generation"] == 2


@pytest.mark.parametrize(("spec", "field"), [
    ({}, "spec.size: Required value"),
    ({"size": "big"}, "spec.size: Invalid value"),
    ({"size": 0}, "spec.size: Invalid value"),
    ({"size": 1, "mode": "warp"}, "spec.mode: Invalid value"),
])
def test_crd_schema_violations_are_422_naming_the_field(widgets: client.CustomObjectsApi, namespace: str,
                                                        spec: dict[str, Any], field: str) -> None:
    code, reason, message = error_of(lambda: create_widget(widgets, namespace, "bad", spec))
    assert (code, reason) == (422, "Invalid") and field in message, message


def test_crd_schema_prunes_defaults_and_checks_updates(widgets: client.CustomObjectsApi, namespace: str) -> None:
    widget = create_widget(widgets, namespace, "w", {"size": 1, "colour": "red"})
    assert widget["spec"] == {"size": 1, "mode": "fast"}  # unknown field pruned, default filled in
    code, reason, message = error_of(lambda: patch_widget(widgets, namespace, {"spec": {"size": -1}}))
    assert (code, reason) == (422, "Invalid") and "spec.size" in message


def test_label_and_field_selectors_filter_lists_and_watches(core: client.CoreV1Api, namespace: str) -> None:
    for name, labels in (("a", {"app": "x", "tier": "web"}), ("b", {"app": "x"}), ("c", {"app": "y"})):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name, "labels": labels}})

    def names(**selectors: str) -> list[str]:
        return sorted(item.metadata.name for item in core.list_namespaced_config_map(namespace, **selectors).items)

    assert names(label_selector="app=x") == ["a", "b"] and names(label_selector="app!=x") == ["c"]
    assert names(label_selector="app in (x,y),!tier") == ["b", "c"] and names(label_selector="tier") == ["a"]
    assert names(label_selector="app notin (x)") == ["c"] and names(field_selector="metadata.name=b") == ["b"]

    listed = core.list_namespaced_config_map(namespace)
    assert listed.kind == "ConfigMapList" and listed.api_version == "v1"
    since = listed.metadata.resource_version
    core.patch_namespaced_config_map("b", namespace, {"metadata": {"labels": {"app": "y"}}})  # leaves app=x
    core.patch_namespaced_config_map("c", namespace, {"metadata": {"labels": {"app": "x"}}})  # enters app=x
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "z", "labels": {"app": "z"}}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "last", "labels": {"app": "x"}}})
    seen = []
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_config_map, namespace, label_selector="app=x",
                               resource_version=since, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name))
        if event["object"].metadata.name == "last":
            stream.stop()
    assert seen == [("DELETED", "b"), ("ADDED", "c"), ("ADDED", "last")]  # replayed after `since`, nothing before



def test_deleting_an_owner_collects_its_jobs_and_their_pods(core: client.CoreV1Api, batch: client.BatchV1Api,
                                                            widgets: client.CustomObjectsApi, kubelet: Kubelet,
                                                            namespace: str) -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def start_job(body: kopf.Body, **_: Any) -> None:
        job = job_body(f"{body.metadata.name}-run", SLEEP)
        kopf.adopt(job, owner=body)
        batch.create_namespaced_job(namespace, job)
        kopf.info(body, reason="Started", message="the job runs")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def let_go(body: kopf.Body, **_: Any) -> None:
        """Any delete handler makes kopf put a finalizer on the widget, released with a JSON patch."""
        kopf.info(body, reason="Deleting", message="letting go")

    with kopf_operator(registry, namespace):
        create_widget(widgets, namespace, "w", {"size": 1})
        wait_for(lambda: kubelet.running == 1, "the Job's pod to run")
        widgets.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w")
        wait_for(lambda: not widgets.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"],
                 "kopf to release the widget")
    wait_for(lambda: not batch.list_namespaced_job(namespace).items and not core.list_namespaced_pod(namespace).items,
             "the garbage collector to delete the Job and its pod")
    wait_for(lambda: kubelet.running == 0, "the pod's process to stop")
    events = core.list_namespaced_event(namespace).items
    assert len({event.metadata.name for event in events}) == len(events) >= 2  # kopf's events, via generateName


def test_deleting_a_job_orphans_its_pod_unless_asked_to_cascade(core: client.CoreV1Api, batch: client.BatchV1Api,
                                                                kubelet: Kubelet, namespace: str) -> None:
    for name in ("orphaning", "cascading"):
        batch.create_namespaced_job(namespace, job_body(name, SLEEP))
    wait_for(lambda: kubelet.running == 2, "both pods to run")

    batch.delete_namespaced_job("orphaning", namespace)  # batch/v1 still defaults to Orphan
    batch.delete_namespaced_job("cascading", namespace, propagation_policy="Background")
    wait_for(lambda: not pods_of(core, namespace, "cascading") and kubelet.running == 1, "the cascading pod to go")
    (orphan,) = pods_of(core, namespace, "orphaning")
    assert orphan.metadata.owner_references in (None, []) and orphan.status.phase == "Running"


def test_kubelet_runs_a_job_and_reports_its_termination_message(core: client.CoreV1Api, batch: client.BatchV1Api,
                                                                kubelet: Kubelet, namespace: str) -> None:
    core.create_namespaced_secret(namespace, {"metadata": {"name": "hub"}, "stringData": {"token": "s3cret"}})
    # The output file lies on an emptyDir mount that exists nowhere on this machine: only a mapped mount works.
    code = ("import os, sys; open(sys.argv[1], 'w').write('saved')\n"
            "open(sys.argv[3], 'w').write(f\"done: {os.environ['TOKEN']} {open(sys.argv[1]).read()}\"); print('hello')")
    job = job_body("ok", ["python", "-c", code])
    pod_spec = job["spec"]["template"]["spec"]
    pod_spec["volumes"] = [{"name": "work", "emptyDir": {}}]
    pod_spec["containers"][0].update(
        args=["/lensllm-harness-work/out.txt", "--termination-log", "/dev/termination-log"],
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}],
        volumeMounts=[{"name": "work", "mountPath": "/lensllm-harness-work"}])
    batch.create_namespaced_job(namespace, job)

    done = wait_for(lambda: finished(batch, namespace, "ok"), "the Job to finish")
    assert [c.type for c in done.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    assert done.status.succeeded == 1 and done.status.start_time and done.status.completion_time
    (pod,) = pods_of(core, namespace, "ok")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.exit_code, terminated.reason) == ("Succeeded", 0, "Completed")
    assert terminated.message == "done: s3cret saved" and terminated.started_at and terminated.finished_at
    assert pod.metadata.owner_references[0].uid == done.metadata.uid
    assert core.read_namespaced_pod_log(pod.metadata.name, namespace) == "hello\n"
    assert kubelet.runs == {"ok": 1} and kubelet.jobs_seen == ["ok"]


def test_failing_job_is_retried_then_failed_with_the_log_tail(core: client.CoreV1Api, batch: client.BatchV1Api,
                                                              kubelet: Kubelet, namespace: str) -> None:
    job = job_body("bad", ["python", "-c", "for i in range(100): print('line', i)\nraise SystemExit(3)"],
                   backoffLimit=1)
    job["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    batch.create_namespaced_job(namespace, job)

    done = wait_for(lambda: finished(batch, namespace, "bad"), "the Job to fail")
    assert [(c.type, c.reason) for c in done.status.conditions][-1] == ("Failed", "BackoffLimitExceeded")
    assert done.status.failed == 2 and kubelet.runs["bad"] == 2
    for pod in pods_of(core, namespace, "bad"):
        terminated = pod.status.container_statuses[0].state.terminated
        assert (pod.status.phase, terminated.exit_code, terminated.reason) == ("Failed", 3, "Error")
        lines = terminated.message.splitlines()
        assert (len(lines), lines[0], lines[-1]) == (80, "line 20", "line 99")  # the last 80 lines of the log


def test_fail_job_exit_code_rule_stops_retries(batch: client.BatchV1Api, kubelet: Kubelet, namespace: str) -> None:
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]}
    batch.create_namespaced_job(namespace, job_body("fatal", ["python", "-c", "raise SystemExit(42)"],
                                                    podFailurePolicy=policy))

    done = wait_for(lambda: finished(batch, namespace, "fatal"), "the Job to fail")
    assert [(c.type, c.reason) for c in done.status.conditions][-1] == ("Failed", "PodFailurePolicy")
    assert kubelet.runs["fatal"] == 1


def test_suspended_job_starts_only_when_resumed(core: client.CoreV1Api, batch: client.BatchV1Api,
                                                kubelet: Kubelet, namespace: str) -> None:
    batch.create_namespaced_job(namespace, job_body("later", ["true"], suspend=True))
    suspended = wait_for(lambda: batch.read_namespaced_job("later", namespace).status, "the Suspended condition")
    assert [(c.type, c.status) for c in suspended.conditions] == [("Suspended", "True")]
    assert "later" in kubelet.jobs_seen and not pods_of(core, namespace, "later") and kubelet.runs["later"] == 0

    batch.patch_namespaced_job("later", namespace, {"spec": {"suspend": False}})
    done = wait_for(lambda: finished(batch, namespace, "later"), "the resumed Job to finish")
    assert done.status.succeeded == 1 and kubelet.runs["later"] == 1


def test_kubelet_runs_jobs_concurrently_and_counts_it(batch: client.BatchV1Api, kubelet: Kubelet, namespace: str,
                                                      tmp_path: Path) -> None:
    # Each process waits until both have started: run one after the other, neither would succeed.
    barrier = ("import pathlib, sys, time; d = pathlib.Path(sys.argv[1]); (d / sys.argv[2]).touch()\n"
               "deadline = time.time() + 10\n"
               "while len(list(d.iterdir())) < 2 and time.time() < deadline: time.sleep(0.01)\n"
               "sys.exit(len(list(d.iterdir())) < 2)")
    meeting_point = tmp_path / "barrier"
    meeting_point.mkdir()
    for name in ("left", "right"):
        command = ["python", "-c", barrier, str(meeting_point), name]
        batch.create_namespaced_job(namespace, job_body(name, command, backoffLimit=0))
    for name in ("left", "right"):
        done = wait_for(lambda job=name: finished(batch, namespace, job), f"{name} to finish", timeout=15)
        assert done.status.succeeded == 1
    assert kubelet.max_concurrency == 2


def test_kubectl_apply_get_and_delete(kubectl: Callable[..., Any], core: client.CoreV1Api,
                                      widgets: client.CustomObjectsApi, namespace: str, tmp_path: Path) -> None:
    assert core.get_api_resources().group_version == "v1"  # discovery of the core group, which kubectl maps with
    manifest = tmp_path / "widget.yaml"
    manifest.write_text(f"apiVersion: {GROUP}/{VERSION}\nkind: Widget\n"
                        f"metadata:\n  name: w\n  namespace: {namespace}\nspec:\n  size: 3\n")
    assert "widget.harness.example.com/w created" in kubectl("apply", "-f", str(manifest)).stdout
    manifest.write_text(manifest.read_text().replace("size: 3", "size: 4"))
    assert "configured" in kubectl("apply", "-f", str(manifest)).stdout

    listed = json.loads(kubectl("get", "wdg", "-n", namespace, "-o", "json").stdout)
    assert listed["kind"] == "List" and [item["spec"] for item in listed["items"]] == [{"size": 4, "mode": "fast"}]
    assert namespace in kubectl("get", "namespaces").stdout
    config_map = {"kind": "ConfigMap", "apiVersion": "v1", "data": {"a": "1"},
                  "metadata": {"name": "settings", "namespace": namespace}}
    kubectl("create", "-f", "-", input=json.dumps(config_map))
    assert kubectl("get", "configmap", "settings", "-n", namespace, "-o", "jsonpath={.data.a}").stdout == "1"
    kubectl("delete", "-f", str(manifest))
    assert widgets.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []


def test_request_log_records_rbac_verbs(kube: Cluster, core: client.CoreV1Api, batch: client.BatchV1Api,
                                        widgets: client.CustomObjectsApi, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "c", "labels": {"x": "y"}}})
    core.read_namespaced_config_map("c", namespace)
    core.replace_namespaced_config_map("c", namespace, {"metadata": {"name": "c"}, "data": {"a": "b"}})
    create_widget(widgets, namespace, "w", {"size": 1})
    patch_widget(widgets, namespace, {"status": {"phase": "x"}}, status=True)
    batch.list_job_for_all_namespaces()
    watching = watch.Watch()
    for _ in watching.stream(core.list_namespaced_config_map, namespace, timeout_seconds=5):
        watching.stop()
    core.delete_namespaced_config_map("c", namespace)
    core.delete_collection_namespaced_config_map(namespace)

    assert {
        ApiCall("create", "", "configmaps", None, namespace), ApiCall("get", "", "configmaps", None, namespace),
        ApiCall("update", "", "configmaps", None, namespace), ApiCall("create", GROUP, PLURAL, None, namespace),
        ApiCall("patch", GROUP, PLURAL, "status", namespace), ApiCall("list", "batch", "jobs", None, None),
        ApiCall("watch", "", "configmaps", None, namespace), ApiCall("delete", "", "configmaps", None, namespace),
        ApiCall("deletecollection", "", "configmaps", None, namespace),
    } <= {call._replace(user_agent="") for call in kube.api_calls}
    rbac_verbs = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
    assert {call.verb for call in kube.api_calls} <= rbac_verbs


def test_operator_process_waits_until_ready_and_can_be_killed_and_restarted(
        kube: Cluster, operator_process: Callable[..., OperatorProcess]) -> None:
    port = free_port()
    serve = ("import http.server, os, sys; print('offline', os.environ['HF_HUB_OFFLINE'], os.environ['KUBECONFIG'])\n"
             "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
             ".serve_forever()")
    with pytest.raises(AssertionError, match="exited with 3 before it was ready"):
        operator_process([sys.executable, "-c", "raise SystemExit(3)"], ready=lambda: False)

    process = operator_process([sys.executable, "-c", serve, str(port)], ready=f"http://127.0.0.1:{port}/")
    process.wait_for_log(f"offline 1 {kube.kubeconfig}")
    assert process.kill() == -signal.SIGKILL and not port_open(port)
    process.restart()
    assert process.returncode is None and port_open(port) and process.log.count("--- starting") == 2


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False
