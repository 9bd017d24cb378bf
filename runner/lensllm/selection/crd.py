"""Generate the LLMSelection CustomResourceDefinition from the pydantic models.

`crds/llmselection.yaml` is this module's output (`lensllm crd > crds/llmselection.yaml`);
a test fails when the file drifts from the models. Pydantic emits JSON Schema 2020-12;
Kubernetes wants a structural OpenAPI v3.0 schema, so references are inlined, optional
fields become `nullable`, free-form objects keep unknown fields, and keywords Kubernetes
does not accept are dropped.
"""

from typing import Any

import yaml

from lensllm.selection.spec import GROUP, IMMUTABLE_FIELDS, KIND, PLURAL, SHORT_NAME, VERSION, LLMSelectionSpec
from lensllm.selection.status import LLMSelectionStatus

# propertyNames (dict keys with a pattern) has no place in a structural schema: pydantic checks keys.
_DROPPED_KEYWORDS = ("title", "default", "additionalProperties", "$defs", "propertyNames")


def openapi_schema(model: type) -> dict[str, Any]:
    """A structural OpenAPI v3.0 schema for a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = dict(defs[node["$ref"].split("/")[-1]])
        target.update({k: v for k, v in node.items() if k != "$ref"})
        return _structural(target, defs)
    options = node.get("anyOf")
    if options is not None:
        non_null = [o for o in options if o.get("type") != "null"]
        if len(non_null) == 1:
            merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **non_null[0]}
            return {**_structural(merged, defs), "nullable": True}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYWORDS:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = value
    extra = node.get("additionalProperties")
    if out.get("type") == "object" and "properties" not in out:
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def immutability_rules() -> list[dict[str, str]]:
    """CEL transition rules that refuse a change of IMMUTABLE_FIELDS once the selection exists.

    On the spec object rather than on each field: a rule on a field runs only when the old and
    the new object both have it, so adding or removing an optional field would slip through.
    """
    required = set(LLMSelectionSpec.model_json_schema(by_alias=True).get("required", []))
    rules = []
    for name in IMMUTABLE_FIELDS:
        field = LLMSelectionSpec.model_fields[name].alias or name
        if field in required:
            rule = f"self.{field} == oldSelf.{field}"
        else:
            rule = f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
        rules.append({"rule": rule, "message": f"spec.{field} is immutable: create a new LLMSelection instead"})
    return rules


def spec_schema() -> dict[str, Any]:
    return {**openapi_schema(LLMSelectionSpec), "x-kubernetes-validations": immutability_rules()}


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["lensllm"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Best", "type": "string", "jsonPath": ".status.best"},
                        {"name": "Done", "type": "string", "jsonPath": ".status.progress", "description": "candidates finished / total"},
                        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "description": "why it failed or is degraded"},
                        {"name": "GPU-h", "type": "number", "jsonPath": ".status.compute.gpuHours", "description": "GPU hours spent"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Predict which candidate LLM fine-tunes best from learning curves on small subsets.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": openapi_schema(LLMSelectionStatus),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `lensllm crd` from lensllm.selection models; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
