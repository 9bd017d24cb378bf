"""The chart lints clean and renders valid Kubernetes objects, whatever the option set."""

import copy
import json
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml

# The chart's floor (Chart.yaml kubeVersion) and the newest release kubernetes-validate knows.
KUBE_VERSIONS = ("1.31", "1.37")
# Kinds the chart renders that are not built into Kubernetes: checked by the tests below instead.
CUSTOM_API_GROUPS = {"monitoring.coreos.com"}
WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_chart_lints_without_warnings(chart_dir: Path, each_options: dict, kube_version: str) -> None:
    report = helm_python.lint(chart_dir, each_options, strict=True, kube_version=f"v{kube_version}.0")
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert not problems and not report["errors"], problems or report["errors"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_builtin_object_is_valid_kubernetes(render, each_options: dict, kube_version: str) -> None:
    builtin = [o for o in render(each_options).objects if o["apiVersion"].split("/")[0] not in CUSTOM_API_GROUPS]
    assert builtin
    for obj in builtin:
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {err.message} at {list(err.path)}")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_the_chart_crd_is_a_valid_custom_resource_definition(chart: helm_python.Chart, kube_version: str) -> None:
    (crd_file,) = chart.crds
    crd = yaml.safe_load(crd_file["data"])
    kubernetes_validate.validate(crd, kube_version, strict=True)
    assert crd["metadata"]["name"] == "llmselections.lensllm.io"


def test_strict_validation_rejects_an_unknown_field(render) -> None:
    deployment = copy.deepcopy(render().one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_defaults_render_the_cluster_wide_install(render) -> None:
    kinds = sorted(obj["kind"] for obj in render().objects)
    # The operator's ClusterRole, and the two aggregated into admin/edit/view for the people who use it.
    assert kinds == ["ClusterRole"] * 3 + ["ClusterRoleBinding", "ConfigMap", "Deployment", "Service", "ServiceAccount"]


def test_every_namespaced_object_names_its_namespace(render, each_options: dict) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for obj in render(each_options).objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace"), f"{obj['kind']} {obj['metadata']['name']} has no namespace"


def test_operator_runs_once_hardened_and_probed(render, chart: helm_python.Chart) -> None:
    rendered = render()
    deployment = rendered.one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = rendered.operator_container()
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container["image"] == f"ghcr.io/lensllm/operator:{chart.metadata['appVersion']}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    assert "emptyDir" in tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert probe["port"] in {p["name"] for p in container["ports"]}


def test_metrics_service_selects_the_operator_pod_on_its_metrics_port(render, options: dict) -> None:
    rendered = render(options["custom-runner"])
    service = rendered.one("Service")
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in rendered.operator_container()["ports"]}
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert port["port"] == 9100
    assert container_ports[port["targetPort"]] == 9100


def test_service_monitor_is_opt_in(render) -> None:
    assert render().of_kind("ServiceMonitor") == []


def test_service_monitor_scrapes_the_metrics_service_with_extra_labels(render, options: dict) -> None:
    rendered = render(options["service-monitor"])
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == "lensllm"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["scrapeTimeout"] == "10s"
    # The series' own `namespace` label (the selection's) must survive the scrape.
    assert endpoint["honorLabels"] is True


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard_file(render, chart_dir: Path) -> None:
    configmap = render().one("ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "lensllm-system"
    assert json.loads(configmap["data"]["lensllm.json"]) == json.loads(
        (chart_dir / "dashboards" / "lensllm.json").read_text()
    )


def test_dashboard_configmap_takes_a_custom_label_and_namespace(render, options: dict) -> None:
    configmap = render(options["dashboard"]).one("ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "lensllm"
    assert configmap["metadata"]["namespace"] == "monitoring"


def test_dashboard_can_be_left_out(render) -> None:
    assert render({"dashboard": {"enabled": False}}).of_kind("ConfigMap") == []


def test_notes_tell_how_to_start_a_selection_and_where_to_look(render, options: dict) -> None:
    notes = " ".join(render(options["dashboard"]).notes.split())
    assert "kubectl apply -f examples/cluster-selection.yaml" in notes
    assert "kubectl get llmsel" in notes
    assert "http://lensllm-metrics.lensllm-system.svc:8000/metrics" in notes
    assert "ConfigMap lensllm-dashboard in namespace monitoring, labelled grafana_dashboard=lensllm" in notes
    assert "never upgrades" in notes
    assert "kubectl apply --server-side --force-conflicts -f charts/lensllm/crds/llmselection.yaml" in notes
