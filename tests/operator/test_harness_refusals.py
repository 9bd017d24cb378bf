"""The emulated API server refuses what a real one refuses, worded as the real one words it.

Pod specs (tests/support/pod_validation.py): unparsable quantities and wrongly typed fields cannot be decoded (400),
negative or inconsistent quantities, fractional GPUs, mount-path clashes, unknown volumes and malformed tolerations
are invalid (422). Custom objects: `spec: null` (422, not a 500), a value twice in a set list, and the CRD's CEL rules
(tests/support/cel_rules.py), transition rules such as `self == oldSelf` included.
"""

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster
from harness_tools import crd_file, error_of, job_body
from kubernetes import client

GROUP, VERSION, PLURAL = "rules.example.com", "v1", "gadgets"
GADGET_SPEC: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-validations": [
        {"rule": "self.min <= self.max", "message": "min must not exceed max"},
        {"rule": "!has(self.parts) || self.parts.all(p, p.size() <= 8)", "fieldPath": ".parts",
         "messageExpression": "'parts are at most 8 characters: ' + self.parts.filter(p, p.size() > 8)[0]"},
    ],
    "properties": {
        "min": {"type": "integer", "default": 0},
        "max": {"type": "integer", "default": 10},
        "parts": {"type": "array", "items": {"type": "string"}},
        "model": {"type": "string",
                  "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "model is immutable"}]},
        "size": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
    },
}


@pytest.fixture
def gadgets(kube: Cluster, tmp_path: Path) -> client.CustomObjectsApi:
    kube.load_crds(crd_file(tmp_path, GROUP, "Gadget", GADGET_SPEC))
    return client.CustomObjectsApi(kube.api)


def create_raw(kube: Cluster, namespace: str, job: dict[str, Any]) -> Any:
    """POST a Job as it is, with no client-side checks (the kubernetes client refuses wrong types itself)."""
    request = urllib.request.Request(f"{kube.url}/apis/batch/v1/namespaces/{namespace}/jobs", method="POST",
                                     data=json.dumps(job).encode(), headers={"Content-Type": "application/json"})
    return lambda: urllib.request.urlopen(request, timeout=5)


def raw_error(call: Any) -> tuple[int, str, str]:
    with pytest.raises(urllib.error.HTTPError) as caught:
        call()
    body = json.loads(caught.value.read())
    return caught.value.code, body["reason"], body["message"]


def runner_job(**container: Any) -> dict[str, Any]:
    job = job_body("runner", ["true"])
    job["spec"]["template"]["spec"]["containers"][0].update(container)
    return job


@pytest.mark.parametrize(("resources", "message"), [
    ({"requests": {"cpu": "lots"}}, "Job in version \"v1\" cannot be handled as a Job: quantities must match the "
                                    "regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
    ({"limits": {"memory": "1Mii"}}, "unable to parse quantity's suffix"),
    ({"requests": {"cpu": "1.2.3"}}, "unable to parse numeric part of quantity"),
])
def test_quantities_that_do_not_parse_cannot_be_decoded(batch: client.BatchV1Api, namespace: str,
                                                        resources: dict[str, Any], message: str) -> None:
    code, reason, said = error_of(lambda: batch.create_namespaced_job(namespace, runner_job(resources=resources)))
    assert (code, reason) == (400, "BadRequest") and message in said


@pytest.mark.parametrize(("resources", "message"), [
    ({"requests": {"memory": "-1Gi"}},
     'spec.template.spec.containers[0].resources.requests[memory]: Invalid value: "-1Gi": must be greater than or '
     "equal to 0"),
    ({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
     'spec.template.spec.containers[0].resources.requests[memory]: Invalid value: "2Gi": must be less than or equal '
     "to memory limit of 1Gi"),
    ({"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "2"}},
     'requests[nvidia.com/gpu]: Invalid value: "1": must be equal to nvidia.com/gpu limit of 2'),
    ({"requests": {"nvidia.com/gpu": "0.5"}, "limits": {"nvidia.com/gpu": "0.5"}},
     'limits[nvidia.com/gpu]: Invalid value: "0.5": must be an integer'),
    ({"requests": {"nvidia.com/gpu": "1"}},
     "resources.limits: Required value: Limit must be set for non overcommitable resources"),
    ({"requests": {"gpu": "1"}}, 'requests[gpu]: Invalid value: "gpu": must be a standard resource type or fully '
                                 "qualified"),
])
def test_invalid_quantities_are_422_naming_the_field(batch: client.BatchV1Api, namespace: str,
                                                     resources: dict[str, Any], message: str) -> None:
    code, reason, said = error_of(lambda: batch.create_namespaced_job(namespace, runner_job(resources=resources)))
    assert (code, reason) == (422, "Invalid") and message in said, said


def test_valid_quantities_pass(kube: Cluster, namespace: str) -> None:
    resources = {"requests": {"cpu": "3500m", "memory": "1.5Gi", "nvidia.com/gpu": 1, "ephemeral-storage": "1e9"},
                 "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"}}
    with create_raw(kube, namespace, runner_job(resources=resources))() as response:
        assert response.status == 201


def test_mount_path_clashes_unknown_volumes_and_duplicates_are_422(batch: client.BatchV1Api, namespace: str) -> None:
    job = runner_job(volumeMounts=[{"name": "work", "mountPath": "/work"}, {"name": "cache", "mountPath": "/work"},
                                   {"name": "ghost", "mountPath": "/ghost"}])
    job["spec"]["template"]["spec"]["volumes"] = [{"name": "work", "emptyDir": {}}, {"name": "cache", "emptyDir": {}},
                                                  {"name": "work", "emptyDir": {}}]
    code, _, said = error_of(lambda: batch.create_namespaced_job(namespace, job))
    assert code == 422
    for message in ('spec.template.spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/work": must be '
                    "unique", 'spec.template.spec.containers[0].volumeMounts[2].name: Not found: "ghost"',
                    'spec.template.spec.volumes[2].name: Duplicate value: "work"'):
        assert message in said, said


@pytest.mark.parametrize(("toleration", "message"), [
    ({"key": "gpu", "operator": "Maybe"}, 'tolerations[0].operator: Unsupported value: "Maybe"'),
    ({"key": "gpu", "operator": "Exists", "value": "x"}, "value must be empty when `operator` is 'Exists'"),
    ({"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}, "effect must be 'NoExecute'"),
])
def test_malformed_tolerations_are_422(batch: client.BatchV1Api, namespace: str, toleration: dict[str, Any],
                                       message: str) -> None:
    job = runner_job()
    job["spec"]["template"]["spec"]["tolerations"] = [toleration]
    code, _, said = error_of(lambda: batch.create_namespaced_job(namespace, job))
    assert code == 422 and message in said, said


@pytest.mark.parametrize(("pod_spec", "message"), [
    ({"tolerations": [{"key": "gpu", "tolerationSeconds": "soon"}]},
     "json: cannot unmarshal string into Go struct field spec.template.spec.tolerations.tolerationSeconds of type "
     "int64"),
    ({"affinity": {"nodeAffinity": ["zone-a"]}},
     "cannot unmarshal array into Go struct field spec.template.spec.affinity.nodeAffinity of type struct"),
    ({"nodeSelector": {"gpu": True}}, "cannot unmarshal bool into Go struct field spec.template.spec.nodeSelector"),
])
def test_fields_of_the_wrong_type_cannot_be_decoded(kube: Cluster, namespace: str, pod_spec: dict[str, Any],
                                                    message: str) -> None:
    job = runner_job()
    job["spec"]["template"]["spec"].update(pod_spec)
    code, reason, said = raw_error(create_raw(kube, namespace, job))
    assert (code, reason) == (400, "BadRequest") and message in said, said


def test_spec_null_is_refused_as_invalid_not_a_server_error(batch: client.BatchV1Api,
                                                            gadgets: client.CustomObjectsApi, namespace: str) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Gadget", "metadata": {"name": "g"}, "spec": None}
    code, reason, said = error_of(lambda: gadgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                                  body))
    assert (code, reason) == (422, "Invalid") and "spec: Required value" in said
    code, _, said = error_of(lambda: batch.create_namespaced_job(namespace, {"metadata": {"name": "j"}, "spec": None}))
    assert code == 422 and "spec.template.spec.containers: Required value" in said


def create_gadget(api: client.CustomObjectsApi, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Gadget", "metadata": {"name": "g"}, "spec": spec}
    return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def patch_gadget(api: client.CustomObjectsApi, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "g", {"spec": spec})


def test_cel_rules_refuse_violating_creates_with_their_message(gadgets: client.CustomObjectsApi,
                                                               namespace: str) -> None:
    code, reason, said = error_of(lambda: create_gadget(gadgets, namespace, {"min": 5, "max": 1}))
    assert (code, reason) == (422, "Invalid")
    assert said == 'Gadget.rules.example.com "g" is invalid: spec: Invalid value: "object": min must not exceed max'
    _, _, said = error_of(lambda: create_gadget(gadgets, namespace, {"parts": ["ok", "far-too-long"]}))
    assert 'spec.parts: Invalid value: "object": parts are at most 8 characters: far-too-long' in said
    assert create_gadget(gadgets, namespace, {"min": 1, "model": "a"})["spec"] == {"min": 1, "max": 10, "model": "a"}


def test_a_set_list_with_a_value_twice_is_422_naming_the_repeat(gadgets: client.CustomObjectsApi, namespace: str) -> None:
    code, reason, said = error_of(lambda: create_gadget(gadgets, namespace, {"tags": ["a", "b", "a"]}))
    assert (code, reason) == (422, "Invalid") and 'spec.tags[2]: Duplicate value: "a"' in said
    assert create_gadget(gadgets, namespace, {"tags": ["a", "b"]})["spec"]["tags"] == ["a", "b"]


def test_cel_transition_rules_make_fields_immutable(gadgets: client.CustomObjectsApi, namespace: str) -> None:
    create_gadget(gadgets, namespace, {"model": "a", "size": 1})
    code, _, said = error_of(lambda: patch_gadget(gadgets, namespace, {"model": "b"}))
    assert code == 422 and 'spec.model: Invalid value: "string": model is immutable' in said
    assert patch_gadget(gadgets, namespace, {"size": 2})["spec"]["size"] == 2  # other fields stay mutable
    status = gadgets.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "g",
                                                           {"status": {"phase": "Ready"}})
    assert status["status"] == {"phase": "Ready"}


def test_a_crd_whose_rule_does_not_compile_is_refused(kube: Cluster, tmp_path: Path) -> None:
    broken = {**GADGET_SPEC, "x-kubernetes-validations": [{"rule": "self.min <= "}]}
    code, reason, said = error_of(lambda: kube.load_crds(crd_file(tmp_path, GROUP, "Gadget", broken)))
    assert (code, reason) == (422, "Invalid") and "compilation failed" in said
