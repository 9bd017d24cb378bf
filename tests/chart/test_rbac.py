"""The operator's RBAC: exactly the access its code and kopf use, cluster-wide or per namespace.

The expected grants below were derived by reading operator/lensllm_operator (kube.py, reconcile.py,
handlers.py) and kopf 1.45.2's clients (watching, patching, events, scanning), then checked against
the requests the real operator sent to the emulated API server of tests/support while it ran a
selection to completion, restarted and saw it deleted, in both scopes: the same set, but for the one
documented exception. The reason for each is in charts/lensllm/rbac/rules.yaml. Any broadening of
the chart's rules fails here.
"""

from pathlib import Path

import helm_python
import pytest
import yaml

# (apiGroup, resource, verb)
EXPECTED_GRANTS = {
    ("lensllm.io", "llmselections", "get"),
    ("lensllm.io", "llmselections", "list"),
    ("lensllm.io", "llmselections", "watch"),
    ("lensllm.io", "llmselections", "patch"),
    ("lensllm.io", "llmselections/status", "patch"),
    ("lensllm.io", "llmselections/finalizers", "update"),  # documented exception (rules.yaml)
    ("batch", "jobs", "create"),
    ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"),
    ("batch", "jobs", "get"),  # documented exception
    ("batch", "jobs", "patch"),  # documented exception
    ("batch", "jobs", "delete"),  # documented exception
    ("", "pods", "list"),
    ("kueue.x-k8s.io", "workloads", "list"),  # documented exception
    ("", "events", "create"),
}


AGGREGATION = "rbac.authorization.k8s.io/aggregate-to-"


def aggregated(role: dict) -> bool:
    """A ClusterRole for people (picked up by admin/edit/view), not the operator's own."""
    return any(label.startswith(AGGREGATION) for label in role["metadata"].get("labels", {}))


def operator_cluster_roles(rendered) -> list[dict]:
    return [r for r in rendered.of_kind("ClusterRole") if not aggregated(r)]


def grants(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_cluster_wide_by_default(render) -> None:
    rendered = render()
    (role,) = operator_cluster_roles(rendered)
    binding = rendered.one("ClusterRoleBinding")
    account = rendered.one("ServiceAccount")
    assert rendered.of_kind("Role") == [] and rendered.of_kind("RoleBinding") == []
    assert grants(role["rules"]) == EXPECTED_GRANTS
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": account["metadata"]["namespace"]}
    ]
    assert rendered.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_watch_namespaces_get_a_role_each_and_nothing_cluster_wide(render, options: dict) -> None:
    rendered = render(options["namespaced"])
    account = rendered.one("ServiceAccount")
    assert operator_cluster_roles(rendered) == [] and rendered.of_kind("ClusterRoleBinding") == []
    roles = {r["metadata"]["namespace"]: r for r in rendered.of_kind("Role")}
    bindings = {b["metadata"]["namespace"]: b for b in rendered.of_kind("RoleBinding")}
    assert sorted(roles) == sorted(bindings) == ["team-a", "team-b"]
    for namespace, role in roles.items():
        assert grants(role["rules"]) == EXPECTED_GRANTS
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "lensllm-system"}
        ]


def test_no_role_grants_anything_on_secrets_or_wildcards(render, each_options: dict) -> None:
    rendered = render(each_options)
    roles = rendered.of_kind("Role") + rendered.of_kind("ClusterRole")
    assert roles
    for role in roles:
        for group, resource, verb in grants(role["rules"]):
            assert resource.split("/")[0] != "secrets", role["metadata"]
            assert "*" not in (group, resource, verb), role["metadata"]


def test_rendered_rules_are_the_documented_list(render, chart_dir: Path) -> None:
    documented = yaml.safe_load((chart_dir / "rbac" / "rules.yaml").read_text())["rules"]
    assert all(rule["reason"].strip() for rule in documented)
    without_docs = [{k: rule[k] for k in ("apiGroups", "resources", "verbs")} for rule in documented]
    (role,) = operator_cluster_roles(render())
    assert role["rules"] == without_docs


def test_namespace_editors_and_viewers_get_selections_through_the_built_in_roles(render, options: dict) -> None:
    for values in ({}, options["namespaced"]):
        roles = {r["metadata"]["name"].rsplit("-", 1)[-1]: r for r in render(values).of_kind("ClusterRole") if aggregated(r)}
        assert set(roles) == {"edit", "view"}
        edit, view = roles["edit"], roles["view"]
        assert {AGGREGATION + "admin", AGGREGATION + "edit"} <= set(edit["metadata"]["labels"])
        assert AGGREGATION + "view" in view["metadata"]["labels"]
        assert ("lensllm.io", "llmselections", "create") in grants(edit["rules"])
        assert grants(view["rules"]) == {("lensllm.io", r, v) for r in ("llmselections", "llmselections/status")
                                         for v in ("get", "list", "watch")}
        assert {resource for _, resource, _ in grants(edit["rules"]) | grants(view["rules"])} <= {
            "llmselections", "llmselections/status"}
    assert not [r for r in render({"rbac": {"aggregateToDefaultRoles": False}}).of_kind("ClusterRole") if aggregated(r)]


def test_rbac_can_be_left_to_the_cluster_admin(render) -> None:
    rendered = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "lensllm-operator"}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"} & {
        o["kind"] for o in rendered.objects
    }
    assert rendered.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "lensllm-operator"


def test_an_existing_service_account_must_be_named(chart) -> None:
    with pytest.raises(helm_python.HelmRenderError, match="serviceAccount.name is required"):
        chart.render({"serviceAccount": {"create": False}}, name="lensllm", namespace="lensllm-system")
