"""The chart's operator Deployment, run as a process against the emulated API server: it must run
a selection to completion, and the RBAC rules the chart renders must match the requests it makes."""

from pathlib import Path

import helm_python
import kubernetes
import yaml
from cluster import free_port, wait_for
from selections import stand_in_selection

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lensllm"
GROUP, VERSION, PLURAL = "lensllm.io", "v1alpha1", "llmselections"


def render(values: dict) -> list[dict]:
    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="lensllm", namespace="lensllm-system")
    return [doc for key, text in manifests.items() if not key.endswith("NOTES.txt") for doc in yaml.safe_load_all(text) if doc]


def granted(objects: list[dict], kind: str) -> set[tuple[str, str, str]]:
    """(verb, apiGroup, resource[/subresource]) of every rule in the operator's rendered Roles or ClusterRoles
    (not the ones aggregated into admin/edit/view, which are for people)."""
    return {
        (verb, group, resource)
        for role in objects
        if role["kind"] == kind
        and not any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"].get("labels", {}))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def documented_exceptions() -> set[tuple[str, str, str]]:
    rules = yaml.safe_load((CHART / "rbac" / "rules.yaml").read_text())["rules"]
    return {(v, g, r) for rule in rules if rule.get("exception") for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def process_of(deployment: dict) -> tuple[list[str], dict[str, str]]:
    """The container's command line and environment, as the kubelet would start it (fieldRefs filled in)."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", var
            env[var["name"]] = "lensllm-operator-0"
    return [*container["command"], *container.get("args", [])], env


def test_the_charts_operator_runs_a_selection_using_exactly_the_access_its_rbac_grants(
    kube, namespace, stand_in, operator_process
):
    metrics, liveness = free_port(), free_port()
    objects = render({"watchNamespaces": [namespace], "metrics": {"port": metrics}, "liveness": {"port": liveness}})
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    argv, env = process_of(deployment)
    operator = operator_process(argv, env=env, ready=f"http://127.0.0.1:{liveness}/healthz", timeout=30)

    custom = kubernetes.client.CustomObjectsApi(kube.api)
    good = stand_in_selection("wired", "model-a")
    twins = stand_in_selection("twins", "model-a")
    twins["spec"]["candidates"] *= 2
    for doc in (good, twins):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)

    def phase(name: str) -> str | None:
        return (custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}).get("phase")

    wait_for(lambda: phase("wired") == "Complete" and phase("twins") == "Failed", "the selections to end", timeout=240, interval=0.2)
    operator.kill()
    operator.start()  # resume handlers run for both selections
    operator.wait_for_log("Resuming", timeout=20)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "wired")
    batch = kubernetes.client.BatchV1Api(kube.api)
    wait_for(lambda: not batch.list_namespaced_job(namespace).items, "the Jobs to be garbage-collected")

    used = {
        (c.verb, c.group, c.resource + (f"/{c.subresource}" if c.subresource else ""))
        for c in kube.operator_calls()
    }
    assert all(c.namespace == namespace for c in kube.operator_calls())
    rules = granted(objects, "Role")
    assert used <= rules, f"the chart misses {sorted(used - rules)}"
    assert rules - used <= documented_exceptions(), f"the chart grants unused {sorted(rules - used - documented_exceptions())}"
    assert not any(resource == "secrets" for _, _, resource in rules)
    cluster_wide = granted(render({}), "ClusterRole")
    assert cluster_wide == rules
