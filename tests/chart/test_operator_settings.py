"""The Deployment starts the operator the way its own code expects.

Its command and args go through the real `lensllm` argument parser and its environment through
`OperatorConfig.from_env`, exactly as in the pod; only the final call that would start kopf is
replaced by one that keeps the configuration.
"""

import os
from typing import Any

import pytest

from lensllm.cli.main import main
from lensllm_operator import run as operator_run
from lensllm_operator.config import OperatorConfig


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment variables (not the valueFrom ones)."""
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def started_config(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> OperatorConfig:
    """Run the container's command line as the pod would, and return the config the operator gets."""
    command, subcommand = container["command"]
    assert (command, subcommand) == ("lensllm", "operator")
    for name in [n for n in os.environ if n.startswith("LENSLLM_")]:
        monkeypatch.delenv(name)
    for name, value in plain_env(container).items():
        monkeypatch.setenv(name, value)
    started: list[OperatorConfig] = []
    monkeypatch.setattr(operator_run, "run_operator", started.append)
    assert main([subcommand, *container["args"]]) == 0
    (config,) = started
    return config


def test_default_install_watches_every_namespace_with_the_documented_defaults(render, monkeypatch) -> None:
    config = started_config(render().operator_container(), monkeypatch)
    assert config == OperatorConfig(namespaces=())


def test_default_runner_image_is_the_one_the_operator_defaults_to(render) -> None:
    assert plain_env(render().operator_container())["LENSLLM_RUNNER_IMAGE"] == OperatorConfig().runner_image


def test_watch_namespaces_reach_the_operator(render, options: dict, monkeypatch) -> None:
    container = render(options["namespaced"]).operator_container()
    assert started_config(container, monkeypatch).namespaces == ("team-a", "team-b")
    assert OperatorConfig.from_env(plain_env(container)).namespaces == ("team-a", "team-b")


def test_custom_runner_settings_and_ports_reach_the_operator(render, options: dict, monkeypatch) -> None:
    container = render(options["custom-runner"]).operator_container()
    config = started_config(container, monkeypatch)
    assert config.runner_image == "registry.example.com/ml/lensllm-runner:2024.06"
    assert config.runner_pull_policy == "Always"
    assert config.job_ttl_seconds == 3600
    assert config.allowed_runner_images == ("registry.example.com/ml/",) and config.allow_writable_model_cache
    assert config.allowed_toleration_keys == ("nvidia.com/gpu", "example.com/spot")
    assert config.allowed_token_secrets == ("hub-token",)
    assert (config.pending_timeout_seconds, config.resync_seconds) == (600, 5.0)
    assert (config.metrics_port, config.liveness_port) == (9100, 9101)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == config.metrics_port
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == config.liveness_port


def test_job_ttl_of_zero_is_kept(render, monkeypatch) -> None:
    container = render({"runner": {"jobTTLSeconds": 0}}).operator_container()
    assert started_config(container, monkeypatch).job_ttl_seconds == 0


def test_every_variable_the_chart_sets_is_read_by_the_operator(render, options: dict) -> None:
    """With every value away from its default, dropping any one variable changes the config."""
    values = {**options["custom-runner"], **options["namespaced"]}
    env = plain_env(render(values).operator_container())
    assert len(env) == 12
    full = OperatorConfig.from_env(env)
    for name in env:
        assert OperatorConfig.from_env({k: v for k, v in env.items() if k != name}) != full, f"{name} is not read"


def test_kopf_gets_the_pod_name_as_its_identity(render) -> None:
    (pod_id,) = [e for e in render().operator_container()["env"] if e["name"] == "POD_ID"]
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
