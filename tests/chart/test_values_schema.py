"""values.schema.json turns bad values away at install time, naming the field at fault."""

import helm_python
import pytest

BAD_VALUES = [
    # (values, the field the message must name)
    ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
    ({"metrics": {"port": "8000"}}, "at '/metrics/port': got string, want integer"),
    ({"metrics": {"port": 70000}}, "at '/metrics/port'"),
    ({"liveness": {"port": 0}}, "at '/liveness/port'"),
    ({"liveness": {"port": 8080.5}}, "at '/liveness/port'"),
    ({"image": {"pullPolicy": "always"}}, "at '/image/pullPolicy'"),
    ({"runner": {"pullPolicy": "Sometimes"}}, "at '/runner/pullPolicy'"),
    ({"runner": {"image": {"repository": ""}}}, "at '/runner/image/repository'"),
    ({"runner": {"jobTTLSeconds": -5}}, "at '/runner/jobTTLSeconds'"),
    ({"runner": {"jobTTLSeconds": "1h"}}, "at '/runner/jobTTLSeconds'"),
    ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
    ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
    ({"watchNamespaces": ["team-a", "team-a"]}, "at '/watchNamespaces'"),
    ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "at '/metrics/serviceMonitor/enabled'"),
    ({"metrics": {"serviceMonitor": {"labels": {"release": 1}}}}, "at '/metrics/serviceMonitor/labels/release'"),
    ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "at '/metrics/serviceMonitor/interval'"),
    ({"dashboard": {"namespace": "Monitoring"}}, "at '/dashboard/namespace'"),
    ({"dashboard": {"labels": {"grafana_dashboard": 1}}}, "at '/dashboard/labels/grafana_dashboard'"),
    ({"rbac": {"enable": False}}, "additional properties 'enable' not allowed"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m.split("'")[1] for _, m in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_field(render, values: dict, message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as raised:
        render(values)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "values",
    [
        {"watchNamespaces": ["team-a", "a" * 63]},
        {"runner": {"jobTTLSeconds": 0}},
        {"runner": {"jobTTLSeconds": None}},
        {"metrics": {"serviceMonitor": {"interval": "1m30s", "scrapeTimeout": "500ms"}}},
        {"dashboard": {"namespace": "", "labels": {}}},
    ],
)
def test_edge_values_are_accepted(render, values: dict) -> None:
    assert render(values).one("Deployment")


def test_metrics_and_liveness_ports_must_differ(render) -> None:
    with pytest.raises(helm_python.HelmRenderError, match="metrics.port and liveness.port must differ"):
        render({"metrics": {"port": 8080}})
