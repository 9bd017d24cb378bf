"""Read an LLMSelection manifest (the YAML a user would `kubectl apply`) without a cluster."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lensllm.errors import LensLLMError
from lensllm.safe_load import UnsafeDocument, load_yaml
from lensllm.selection.formats import DNS_SUBDOMAIN
from lensllm.selection.spec import GROUP, KIND, VERSION, LLMSelectionSpec
from lensllm.trial.spec import validation_message


class ManifestError(LensLLMError):
    """The selection file is missing, not YAML, not an LLMSelection, or its spec is invalid."""


@dataclass(frozen=True)
class Manifest:
    name: str
    namespace: str
    spec: LLMSelectionSpec
    folder: Path


def read_manifest(path: Path) -> Manifest:
    return parse_manifest(load_document(path), path)


def load_document(path: Path, stdin_text: str | None = None) -> Any:
    """The YAML (or JSON) document in `path`, or in `stdin_text` when path is '-'."""
    try:
        text = stdin_text if str(path) == "-" else path.read_text(encoding="utf-8")
        return load_yaml(text)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: cannot read ({type(err).__name__})") from None
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except UnsafeDocument as err:
        raise ManifestError(f"{path}: refused: {err}") from None


def parse_manifest(doc: Any, path: Path, started: bool = False) -> Manifest:
    """Check that `doc` is an LLMSelection with a valid spec (its status, if any, is not looked at); `started`:
    one whose work ran, so that checks added since do not refuse it."""
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: expected one LLMSelection object, got {type(doc).__name__}")
    if doc.get("apiVersion") != f"{GROUP}/{VERSION}" or doc.get("kind") != KIND:
        raise ManifestError(
            f"{path}: expected apiVersion {GROUP}/{VERSION} and kind {KIND}, "
            f"got {doc.get('apiVersion')!r} and {doc.get('kind')!r}"
        )
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise ManifestError(f"{path}: metadata.name is required")
    if len(metadata["name"]) > 253 or not re.fullmatch(DNS_SUBDOMAIN, metadata["name"]):
        raise ManifestError(f"{path}: metadata.name {metadata['name']!r} is not a valid object name (a DNS subdomain)")
    if not isinstance(doc.get("spec"), dict):
        raise ManifestError(f"{path}: spec: expected an object, got {type(doc.get('spec')).__name__}")
    try:
        # Strict, as the CRD's types are: "204045" is not a number and "yes" is not a boolean.
        spec = LLMSelectionSpec.from_wire(doc["spec"], started=started)
    except ValidationError as err:
        raise ManifestError(f"{path}: spec.{validation_message(err)}") from None
    return Manifest(
        name=str(metadata["name"]), namespace=str(metadata.get("namespace", "default")), spec=spec, folder=path.parent
    )


def selection_object(manifest: Manifest, status: dict) -> dict:
    """The whole resource, as `kubectl get llmsel NAME -o json` shows it on a cluster."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": manifest.name, "namespace": manifest.namespace},
        "spec": manifest.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "status": status,
    }
