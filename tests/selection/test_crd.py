from pathlib import Path

import jsonschema
import pytest
import yaml

from lensllm.selection.crd import build_crd, crd_yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "llmselection.yaml"


def test_the_crd_file_is_generated_from_the_current_models():
    assert CRD_FILE.read_text() == crd_yaml(), "crds/ is stale: run `lensllm crd > crds/llmselection.yaml`"


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_the_schema_is_structural():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in _walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "$defs", "title"} & set(node)
        assert node.get("additionalProperties") is not False


def test_printer_columns_show_phase_best_progress_failure_reason_compute_and_age():
    columns = build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["jsonPath"] for c in columns] == [
        ".status.phase", ".status.best", ".status.progress", ".status.reason", ".status.compute.gpuHours",
        ".metadata.creationTimestamp",
    ]


@pytest.mark.parametrize("example", ["local-selection.yaml", "cluster-selection.yaml"])
def test_the_examples_satisfy_the_crd_schema(example):
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # OpenAPI v3.0 schemas use draft-4 semantics (boolean exclusiveMinimum).
    jsonschema.Draft4Validator(schema).validate(yaml.safe_load((REPO / "examples" / example).read_text()))


def test_the_crd_schema_rejects_a_wrong_type():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    doc = yaml.safe_load((REPO / "examples" / "local-selection.yaml").read_text())
    doc["spec"]["parallelism"] = "many"
    with pytest.raises(jsonschema.ValidationError, match="'many' is not of type 'integer'"):
        jsonschema.Draft4Validator(schema).validate(doc)
