"""Fixtures of the Helm chart tests: the chart, rendered offline with helm-python-sdk (Helm's Go SDK).

Rendering is what `helm template` and `helm install` do (values merged with the defaults, checked
against values.schema.json), so a test sees exactly the objects a cluster would receive.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "lensllm"
RELEASE = "lensllm"
RELEASE_NAMESPACE = "lensllm-system"

# The option sets the chart is rendered with, besides its defaults.
OPTION_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "service-monitor": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}, "scrapeTimeout": "10s"}
        }
    },
    "dashboard": {"dashboard": {"namespace": "monitoring", "labels": {"grafana_dashboard": "lensllm"}}},
    "custom-runner": {
        "runner": {
            "image": {"repository": "registry.example.com/ml/lensllm-runner", "tag": "2024.06"},
            "pullPolicy": "Always",
            "jobTTLSeconds": 3600,
            "allowedImages": ["registry.example.com/ml/"],
            "allowWritableModelCache": True,
            "allowedTolerationKeys": ["nvidia.com/gpu", "example.com/spot"],
            "allowedTokenSecrets": ["hub-token"],
            "pendingTimeoutSeconds": 600,
        },
        "resyncSeconds": 5,
        "metrics": {"port": 9100},
        "liveness": {"port": 9101},
    },
}


@dataclass
class Rendered:
    """The objects of one rendering, and its NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
        return found[0]

    def operator_container(self) -> dict[str, Any]:
        (container,) = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        return container


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def chart_dir() -> Path:
    return CHART_DIR


@pytest.fixture(scope="session")
def options() -> dict[str, dict[str, Any]]:
    """The named option sets, for tests about one of them."""
    return OPTION_SETS


@pytest.fixture(scope="session", params=sorted(OPTION_SETS))
def each_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each option set in turn, for tests that must hold whatever the values."""
    return OPTION_SETS[request.param]


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm_python.Chart):
    """render(values) -> Rendered, as `helm template lensllm charts/lensllm -n lensllm-system` would."""

    def _render(values: dict[str, Any] | None = None) -> Rendered:
        manifests = chart.render(values or {}, name=RELEASE, namespace=RELEASE_NAMESPACE)
        notes = manifests.pop(f"{chart.name}/templates/NOTES.txt")
        objects = [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]
        return Rendered(objects=objects, notes=notes)

    return _render
