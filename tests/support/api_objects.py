"""What a Kubernetes API server does to the objects and queries it is given, as pure functions: merge and JSON
patches, label and field selectors, CRD structural schemas (pruning, defaults, validation messages), metadata and Job
validation, defaulting, and the Status errors it answers with.

tests/support/kube_emulator.py applies them on every request; they hold no state.
"""

import base64
import copy
import json
import re
from collections.abc import Callable
from typing import Any

import jsonpatch
import jsonpointer
import jsonschema
import kmock

Body = dict[str, Any]
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_TERM = re.compile(
    r"(?P<absent>!)?(?P<key>[\w./-]+)"
    r"(?:\s*(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?"
)


def quoted(value: object) -> str:
    """A value in an error message as Go's %q writes it: in double quotes, control characters escaped."""
    return json.dumps(str(value), ensure_ascii=False)


def api_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    """A failure shaped like a real API server's Status, with one of its standard reasons."""
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif not key.startswith("$"):  # strategic-merge directives ($patch, $setElementOrder/...) have no effect here
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Body, ops: Any) -> Body:
    """RFC 6902; a failed `test` (kopf's optimistic lock) or an unreachable path answers 422 as a real server does."""
    if not isinstance(ops, list):
        raise api_error(400, "BadRequest", "a JSON patch must be a list of operations")
    try:
        return jsonpatch.apply_patch(target, ops)
    except jsonpatch.InvalidJsonPatch as exc:
        raise api_error(400, "BadRequest", str(exc)) from exc
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        message = f"the server rejected our request due to an error in our request: {exc}"
        raise api_error(422, "Invalid", message) from exc


def label_matcher(selector: str) -> Callable[[dict[str, str]], bool]:
    """A predicate over labels for a labelSelector: `a=b`, `a==b`, `a!=b`, `a in (b,c)`, `a notin (b)`, `a`, `!a`."""
    tests = [_label_test(term.strip()) for term in re.split(r",(?![^(]*\))", selector) if term.strip()]
    return lambda labels: all(test(labels) for test in tests)


def _label_test(term: str) -> Callable[[dict[str, str]], bool]:
    match = LABEL_TERM.fullmatch(term)
    if match is None or (match["absent"] and (match["op"] or match["set"])):
        raise api_error(400, "BadRequest", f"unable to parse requirement: {term!r}")
    key, op = match["key"], match["op"] or match["set"]
    values = {value.strip() for value in match["values"].split(",")} if match["set"] else {match["value"]}
    if match["absent"]:
        return lambda labels: key not in labels
    if op is None:
        return lambda labels: key in labels
    if op in ("=", "==", "in"):
        return lambda labels: labels.get(key) in values
    return lambda labels: labels.get(key) not in values  # != and notin also match objects without the label


def field_matcher(selector: str) -> Callable[[Body], bool]:
    """A predicate over objects for a fieldSelector (`metadata.name=x,status.phase!=Running`); any field is allowed."""
    tests: list[tuple[list[str], bool, str]] = []
    for term in filter(None, (part.strip() for part in selector.split(","))):
        match = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", term)
        if match is None:
            raise api_error(400, "BadRequest", f"invalid field selector: {term!r}")
        tests.append((match[1].split("."), match[2] == "!=", match[3]))
    return lambda body: all((_field(body, path) == value) != negated for path, negated, value in tests)


def _field(body: Any, path: list[str]) -> str:
    for part in path:
        body = body.get(part) if isinstance(body, dict) else None
    return "" if body is None else json.dumps(body) if isinstance(body, bool) else str(body)


def field_path(parts: Any) -> str:
    """The server's notation for a field: `spec.items[0].name`."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def to_json_schema(schema: Body) -> Body:
    """A CRD's OpenAPI v3 schema as JSON Schema draft 4 (which shares its boolean exclusiveMinimum/Maximum)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: to_json_schema(sub) for name, sub in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = to_json_schema(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [to_json_schema(sub) for sub in out[key]]
    if out.pop("x-kubernetes-int-or-string", False):
        out["type"] = ["integer", "string"]
    if out.pop("x-kubernetes-list-type", None) == "set":
        out["uniqueItems"] = True
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]  # null is valid where nullable, whatever the enum says
    return out


def prune_and_default(value: Any, schema: Body) -> Any:
    """Drop fields the structural schema does not declare and fill in its defaults, as the server does on writes."""
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_and_default(item, schema["items"]) for item in value]
    if not isinstance(value, dict):
        return value
    properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
    keep_unknown = extra is True or schema.get("x-kubernetes-preserve-unknown-fields", False)
    result = {}
    for key, item in value.items():
        if item is None and not (properties.get(key) or {}).get("nullable"):
            continue  # a null where the schema allows none is pruned, as the server does before defaulting
        if key in properties:
            result[key] = prune_and_default(item, properties[key])
        elif isinstance(extra, dict):
            result[key] = prune_and_default(item, extra)
        elif keep_unknown:
            result[key] = item
    for key, sub in properties.items():
        if key not in result and "default" in sub:
            result[key] = prune_and_default(copy.deepcopy(sub["default"]), sub)
    return result


def schema_error(error: jsonschema.ValidationError) -> str:
    """A schema violation worded like the server's: `spec.size: Required value`."""
    field = field_path(error.absolute_path)
    if error.validator == "required":
        missing = next(name for name in error.validator_value if name not in error.instance)
        return f"{field_path([*error.absolute_path, missing])}: Required value"
    if error.validator == "uniqueItems":
        again = next(i for i, item in enumerate(error.instance) if item in error.instance[:i])
        return f"{field_path([*error.absolute_path, again])}: Duplicate value: {json.dumps(error.instance[again])}"
    return f"{field or '<root>'}: Invalid value: {json.dumps(error.instance)}: {error.message}"


def metadata_decode_error(body: Body) -> str | None:
    """Why the object's metadata cannot be decoded into an ObjectMeta (a 400 before any validation), if it can't."""
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        return f"json: cannot unmarshal {json_type(meta)} into Go struct field .metadata of type v1.ObjectMeta"
    for field in ("name", "generateName", "namespace"):
        if field in meta and not isinstance(meta[field], str):
            return (f"json: cannot unmarshal {json_type(meta[field])} into Go struct field ObjectMeta.metadata."
                    f"{field} of type string")
    for field in ("labels", "annotations"):
        values = meta.get(field)
        if values is not None and (not isinstance(values, dict)
                                   or not all(isinstance(v, str) for v in values.values())):
            return f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{field} of type map[string]string"
    return None


def json_type(value: Any) -> str:
    """How Go's JSON decoder names a JSON value's type in its errors."""
    return {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), "null")


def metadata_errors(body: Body) -> list[str]:
    """The checks every kind gets: the name's format, label syntax, and complete ownerReferences."""
    meta = body["metadata"]
    errors = []
    if len(meta["name"]) > 253 or not DNS_SUBDOMAIN.fullmatch(meta["name"]):
        errors.append(f'metadata.name: Invalid value: {quoted(meta["name"])}: a lowercase RFC 1123 subdomain must '
                      "consist of lower case alphanumeric characters, '-' or '.'")
    template_labels = ((body.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels", {})
    for where, labels in (("metadata.labels", meta.get("labels") or {}),
                          ("spec.template.metadata.labels", template_labels)):
        errors += [f"{where}: Invalid value: {quoted(f'{key}={value}')}: not a valid label"
                   for key, value in labels.items() if not _valid_label(key, value)]
    for index, ref in enumerate(meta.get("ownerReferences") or []):
        errors += [f"metadata.ownerReferences[{index}].{field}: Required value"
                   for field in ("apiVersion", "kind", "name", "uid") if not ref.get(field)]
    return errors


def _valid_label(key: str, value: Any) -> bool:
    prefix, _, name = key.rpartition("/")
    prefix_ok = not prefix or bool(DNS_SUBDOMAIN.fullmatch(prefix))
    key_ok = prefix_ok and len(name) <= 63 and bool(LABEL_VALUE.fullmatch(name))
    return key_ok and isinstance(value, str) and len(value) <= 63 and (not value or bool(LABEL_VALUE.fullmatch(value)))


def job_errors(job: Body) -> list[str]:
    """The Job validation an operator most often trips over: restart policy and container basics."""
    pod = job.get("spec", {}).get("template", {}).get("spec", {})
    policy = pod.get("restartPolicy", "Always")
    errors = []
    if policy not in ("Never", "OnFailure"):
        errors.append(f'spec.template.spec.restartPolicy: Unsupported value: "{policy}": '
                      'supported values: "OnFailure", "Never"')
    if job["spec"].get("podFailurePolicy") and policy != "Never":
        errors.append('spec.podFailurePolicy: Invalid value: only "Never" is supported as '
                      "spec.template.spec.restartPolicy")
    if not pod.get("containers"):
        errors.append("spec.template.spec.containers: Required value")
    for index, container in enumerate(pod.get("containers") or []):
        errors += [f"spec.template.spec.containers[{index}].{field}: Required value"
                   for field in ("name", "image") if not container.get(field)]
    return errors


def without_nulls(value: Any) -> Any:
    """A built-in object as Go decodes it: a JSON null leaves a field at its zero value, as if it were absent."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def encode_string_data(secret: Body) -> None:
    """A Secret's write-only `stringData` is merged into `data`, base64-encoded, and never stored."""
    plain = secret.pop("stringData", None) or {}
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in plain.items()}
    if encoded:
        secret["data"] = {**(secret.get("data") or {}), **encoded}


def default_job(job: Body) -> None:
    """What the server fills into a new Job: limits, the controller-uid selector, job-name labels, containers."""
    spec, meta = job.setdefault("spec", {}), job["metadata"]
    for field, value in (("backoffLimit", 6), ("completions", 1), ("parallelism", 1), ("suspend", False),
                         ("completionMode", "NonIndexed")):
        spec.setdefault(field, value)
    spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}})
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {}).setdefault("labels", {}).update({
        "batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"],
        "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"],
    })
    default_containers(template.get("spec", {}))


def default_containers(pod_spec: Body) -> None:
    """Container defaults the kubelet relies on: where and how the termination message is read."""
    for container in pod_spec.get("containers") or []:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
