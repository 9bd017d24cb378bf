"""Reading spec and result files and writing results where Kubernetes and resumes find them.

Called by `lensllm run-trial`. No torch: a malformed spec must be reported without paying
for (or having) the training stack.
"""

import json
import os
import tempfile
from pathlib import Path

import yaml
from pydantic import ValidationError

from lensllm.safe_load import UnsafeDocument, load_json, load_yaml
from lensllm.trial.failures import InvalidSpec, first_line
from lensllm.trial.result import TrialResult
from lensllm.trial.spec import TrialSpec, validation_message

KUBERNETES_TERMINATION_LOG = Path("/dev/termination-log")


def read_spec(path: str) -> TrialSpec:
    """The spec in a YAML or JSON file; any problem is an InvalidSpec naming the file or field."""
    return _validated(_parse_mapping(_read_text(path, "--spec"), f"--spec {path}", json_only=path.endswith(".json")))


def read_spec_env(name: str) -> TrialSpec:
    """The spec as JSON in an environment variable (the operator's Jobs pass it this way)."""
    text = os.environ.get(name)
    if text is None:
        raise InvalidSpec(f"--spec-env {name}: the environment variable is not set")
    return _validated(_parse_mapping(text, f"--spec-env {name}", json_only=True))


def _validated(data: dict) -> TrialSpec:
    try:
        # Strict: a string is not read as a number or a boolean, as an LLMSelection's CRD refuses them too.
        return TrialSpec.model_validate(data, strict=True)
    except ValidationError as err:
        raise InvalidSpec(validation_message(err)) from None


def read_resume(path: str) -> TrialResult | None:
    """A result document of an earlier attempt; None when there is none yet (the first attempt)."""
    if not Path(path).exists():
        return None
    try:
        return TrialResult.model_validate_json(_read_text(path, "--resume"))
    except ValidationError as err:
        raise InvalidSpec(f"--resume {path}: not a trial result ({validation_message(err)})") from None


def _read_text(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidSpec(f"{flag} {path}: {first_line(err)}") from None


def _parse_mapping(text: str, where: str, *, json_only: bool) -> dict:
    try:
        data = load_json(text) if json_only else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise InvalidSpec(f"{where}: not valid {'JSON' if json_only else 'YAML'}: {first_line(err)}") from None
    except UnsafeDocument as err:
        raise InvalidSpec(f"{where}: refused: {err}") from None
    if not isinstance(data, dict):
        raise InvalidSpec(f"{where}: expected a mapping of spec fields, got {type(data).__name__}")
    return data


def termination_log_path(flag: str | None, spec: TrialSpec | None) -> Path | None:
    """--termination-log, else the spec's path, else Kubernetes' default file when it exists."""
    if flag:
        return Path(flag)
    if spec is not None and spec.output.termination_log_path:
        return Path(spec.output.termination_log_path)
    return KUBERNETES_TERMINATION_LOG if KUBERNETES_TERMINATION_LOG.exists() else None


def result_path(flag: str | None, spec: TrialSpec | None) -> Path | None:
    """--out, else the spec's result path."""
    if flag:
        return Path(flag)
    if spec is not None and spec.output.result_path:
        return Path(spec.output.result_path)
    return None


def write_result(path: Path | None, result: TrialResult) -> None:
    """Replace the file atomically: a pod killed mid-write must leave the previous, resumable document."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as tmp:
        tmp.write(result.to_json() + "\n")
    os.replace(tmp.name, path)


def write_termination_message(path: Path | None, result: TrialResult) -> None:
    if path is not None:
        path.write_text(result.to_termination_message(), encoding="utf-8")
