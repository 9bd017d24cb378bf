"""What a real API server refuses in a pod spec (a Pod's, or a Job's template): the checks an operator that builds pod
specs from user input trips over.

Used by tests/support/kube_emulator.py on every Pod and Job write. Two kinds of refusal, as on a real server:
- `Undecodable` (400 BadRequest, "... cannot be handled as a Job: ..."): the body cannot even be decoded, e.g. a
  resource quantity such as `cpu: lots` that does not parse, or a field of the wrong JSON type.
- a list of field errors (422 Invalid), worded as the server words them: negative quantities, requests above limits,
  extended resources (GPUs) that are fractional or whose request differs from their limit, duplicate or unknown
  volumes, duplicate mount paths, malformed tolerations and environment variable names.
"""

import functools
import json
import re
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

import jsonschema
from api_objects import json_type
from referencing import Registry, Resource

Body = dict[str, Any]

QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
QUANTITY_FORMAT = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
           "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
           "E": Decimal(10**18)}
STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage", "storage", "pods"}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# The built-in kinds' OpenAPI schemas, as JSON Schema, shipped by kubernetes-validate (a dev dependency).
SCHEMAS = resources.files("kubernetes_validate") / "kubernetes-json-schema" / "v1.33.0-local"
GO_TYPES = {"integer": "int64", "number": "float64", "string": "string", "boolean": "bool", "object": "struct",
            "array": "slice"}


class Undecodable(Exception):
    """The body does not decode into the kind's Go type: the server answers 400 before any validation."""


def parse_quantity(value: Any) -> Decimal:
    """A resource quantity's value (`500m` -> 0.5, `1Gi` -> 1073741824); Undecodable as the server words it."""
    text = str(value).strip() if not isinstance(value, bool) else str(value).lower()
    match = QUANTITY.match(text)
    if match is None:
        raise Undecodable(QUANTITY_FORMAT)
    number, suffix = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation:
        raise Undecodable("unable to parse numeric part of quantity") from None
    if suffix in BINARY:
        return amount * BINARY[suffix]
    if suffix in DECIMAL:
        return amount * DECIMAL[suffix]
    exponent = re.fullmatch(r"[eE]([-+]?[0-9]+)", suffix)
    if exponent is None:
        raise Undecodable("unable to parse quantity's suffix")
    return amount * Decimal(10) ** int(exponent[1])


def decode(body: Body) -> None:
    """Fail as the server's JSON decoder does on a field of the wrong type (a string where an integer belongs)."""
    validator = _typed_validator(body["kind"], body["apiVersion"])
    if validator is None:
        return
    for error in validator.iter_errors(body):
        if error.validator != "type":
            continue  # required fields, enums and formats are the validation's business, not the decoder's
        path = ".".join(str(part) for part in error.absolute_path if not isinstance(part, int))
        wanted = error.validator_value[0] if isinstance(error.validator_value, list) else error.validator_value
        found = json_type(error.instance)
        raise Undecodable(f"json: cannot unmarshal {found} into Go struct field {path} of type "
                          f"{GO_TYPES.get(wanted, wanted)}")


@functools.cache
def _typed_validator(kind: str, api_version: str) -> jsonschema.Draft202012Validator | None:
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = SCHEMAS / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    registry = Resource.from_contents(json.loads((SCHEMAS / "_definitions.json").read_text())) @ (
        Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def decode_pod_spec(pod_spec: Body) -> None:
    """Fail as the decoder would on quantities that do not parse or resource lists that are not objects."""
    for container in _containers(pod_spec):
        resources = container.get("resources") or {}
        if not isinstance(resources, dict):
            raise Undecodable("json: cannot unmarshal into Go struct field Container.resources of type "
                              "v1.ResourceRequirements")
        for kind in ("requests", "limits"):
            quantities = resources.get(kind) or {}
            if not isinstance(quantities, dict):
                raise Undecodable(f"json: cannot unmarshal into Go struct field ResourceRequirements.{kind} of "
                                  "type v1.ResourceList")
            for value in quantities.values():
                parse_quantity(value)


def pod_spec_errors(pod_spec: Body, path: str) -> list[str]:
    """The 422 field errors of a decodable pod spec found at `path` (e.g. `spec.template.spec`)."""
    volumes = pod_spec.get("volumes") or []
    errors = _volume_errors(volumes, path)
    names = {volume.get("name") for volume in volumes if isinstance(volume, dict)}
    for index, container in enumerate(pod_spec.get("containers") or []):
        where = f"{path}.containers[{index}]"
        errors += _resource_errors(container.get("resources") or {}, f"{where}.resources")
        errors += _mount_errors(container.get("volumeMounts") or [], names, where)
        errors += _env_errors(container.get("env") or [], where)
    for index, toleration in enumerate(pod_spec.get("tolerations") or []):
        errors += _toleration_errors(toleration, f"{path}.tolerations[{index}]")
    return errors


def _containers(pod_spec: Body) -> list[Body]:
    return [c for key in ("initContainers", "containers") for c in pod_spec.get(key) or [] if isinstance(c, dict)]


def _volume_errors(volumes: list[Any], path: str) -> list[str]:
    errors, seen = [], set()
    for index, volume in enumerate(volumes):
        name = volume.get("name") if isinstance(volume, dict) else None
        where = f"{path}.volumes[{index}].name"
        if not name:
            errors.append(f"{where}: Required value")
        elif name in seen:
            errors.append(f'{where}: Duplicate value: "{name}"')
        elif len(name) > 63 or not DNS_LABEL.fullmatch(name):
            errors.append(f'{where}: Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case '
                          "alphanumeric characters or '-', and must start and end with an alphanumeric character")
        seen.add(name)
    return errors


def _resource_errors(resources: Body, where: str) -> list[str]:
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    errors = []
    for kind, quantities in (("limits", limits), ("requests", requests)):
        for name, value in quantities.items():
            field = f"{where}.{kind}[{name}]"
            amount = parse_quantity(value)
            if "/" not in name and name not in STANDARD_RESOURCES and not name.startswith("hugepages-"):
                errors.append(f'{field}: Invalid value: "{name}": must be a standard resource type or fully '
                              "qualified")
            elif amount < 0:
                errors.append(f'{field}: Invalid value: "{value}": must be greater than or equal to 0')
            elif _is_extended(name) and amount != amount.to_integral_value():
                errors.append(f'{field}: Invalid value: "{value}": must be an integer')
    for name, value in requests.items():
        field = f"{where}.requests[{name}]"
        if _is_extended(name):
            if name not in limits:
                errors.append(f"{where}.limits: Required value: Limit must be set for non overcommitable resources")
            elif parse_quantity(value) != parse_quantity(limits[name]):
                errors.append(f'{field}: Invalid value: "{value}": must be equal to {name} limit of {limits[name]}')
        elif name in limits and parse_quantity(value) > parse_quantity(limits[name]):
            errors.append(f'{field}: Invalid value: "{value}": must be less than or equal to {name} limit of '
                          f"{limits[name]}")
    return errors


def _is_extended(name: str) -> bool:
    """GPUs and other device resources: not overcommitable, whole units only."""
    return "/" in name and not name.startswith(("kubernetes.io/", "requests.", "hugepages-"))


def _mount_errors(mounts: list[Body], volumes: set[Any], where: str) -> list[str]:
    errors, paths = [], set()
    for index, mount in enumerate(mounts):
        field = f"{where}.volumeMounts[{index}]"
        if mount.get("name") not in volumes:
            errors.append(f'{field}.name: Not found: "{mount.get("name")}"')
        path = mount.get("mountPath")
        if not path:
            errors.append(f"{field}.mountPath: Required value")
        elif path in paths:
            errors.append(f'{field}.mountPath: Invalid value: "{path}": must be unique')
        paths.add(path)
    return errors


def _env_errors(env: list[Body], where: str) -> list[str]:
    return [f'{where}.env[{index}].name: Invalid value: "{var.get("name")}": a valid environment variable name must '
            "consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit"
            for index, var in enumerate(env) if not ENV_NAME.fullmatch(str(var.get("name") or ""))]


def _toleration_errors(toleration: Body, where: str) -> list[str]:
    errors = []
    key, operator = toleration.get("key", ""), toleration.get("operator", "Equal")
    effect, value = toleration.get("effect", ""), toleration.get("value", "")
    if key and not QUALIFIED_NAME.fullmatch(key.rpartition("/")[2]):
        errors.append(f'{where}.key: Invalid value: "{key}": name part must consist of alphanumeric characters, '
                      "'-', '_' or '.', and must start and end with an alphanumeric character")
    if operator not in TOLERATION_OPERATORS:
        errors.append(f'{where}.operator: Unsupported value: "{operator}": supported values: "Equal", "Exists"')
    elif operator == "Exists" and value:
        errors.append(f"{where}.operator: Invalid value: \"{value}\": value must be empty when `operator` is "
                      "'Exists'")
    elif not key and operator != "Exists":
        errors.append(f'{where}.operator: Invalid value: "{operator}": operator must be Exists when `key` is empty, '
                      "which means \"match all values and all keys\"")
    if effect and effect not in TAINT_EFFECTS:
        errors.append(f'{where}.effect: Unsupported value: "{effect}": supported values: "NoSchedule", '
                      '"PreferNoSchedule", "NoExecute"')
    if toleration.get("tolerationSeconds") is not None and effect != "NoExecute":
        errors.append(f"{where}.effect: Invalid value: \"{effect}\": effect must be 'NoExecute' when "
                      "`tolerationSeconds` is set")
    return errors
