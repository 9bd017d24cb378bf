"""A CRD's `x-kubernetes-validations` (CEL rules), evaluated on every create and update as a real API server does.

tests/support/kube_emulator.py compiles the rules of each registered CRD version with `CelRules(schema)` and asks
`CelRules.errors(new, old)` on every write of a custom object. The evaluator is cel-python (`celpy`, pinned in the dev
extra). Semantics followed: `self` is the value at the schema node holding the rule; a rule that mentions `oldSelf`
is a transition rule, checked only on updates where the old object has that value; on updates a value that did not
change is not re-checked (validation ratcheting, on by default since Kubernetes 1.30); `message`,
`messageExpression`, `reason` and `fieldPath` shape the error as the server does:
`spec.candidates: Invalid value: "array": candidates are immutable`.

Not emulated: the Kubernetes CEL libraries beyond the standard ones (quantity, url, ip, extended lists and strings),
`optionalOldSelf`, cost limits, and list correlation for `oldSelf` inside arrays (transition rules under an array
item are only checked when the array is a `listType: map`).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import celpy

Body = dict[str, Any]
Path = tuple[str | int, ...]
REASONS = {"FieldValueInvalid": "Invalid value", "FieldValueForbidden": "Forbidden",
           "FieldValueRequired": "Required value", "FieldValueDuplicate": "Duplicate value"}


class RuleCompileError(ValueError):
    """A rule that does not compile: the server refuses the CRD."""


@dataclass(frozen=True)
class Rule:
    """One compiled rule and where in the schema it sits (`*` stands for every item of an array or map)."""

    schema_path: tuple[str, ...]
    schema: Body
    rule: Body
    program: celpy.Runner
    message_program: celpy.Runner | None
    transition: bool


class CelRules:
    """Every x-kubernetes-validations rule of one structural schema, compiled once."""

    def __init__(self, schema: Body) -> None:
        self._environment = celpy.Environment()
        self.rules = list(self._compile(schema, ()))

    def _compile(self, schema: Body, path: tuple[str, ...]) -> Iterator[Rule]:
        for index, rule in enumerate(schema.get("x-kubernetes-validations") or []):
            where = ".".join(path) or "<root>"
            program = self._program(rule.get("rule", ""), f"{where}.x-kubernetes-validations[{index}].rule")
            message = rule.get("messageExpression")
            message_program = self._program(message, f"{where}.x-kubernetes-validations[{index}].messageExpression") \
                if message else None
            yield Rule(path, schema, rule, program, message_program, "oldSelf" in rule.get("rule", ""))
        for name, sub in (schema.get("properties") or {}).items():
            yield from self._compile(sub, (*path, name))
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from self._compile(schema[key], (*path, "*"))

    def _program(self, text: str, where: str) -> celpy.Runner:
        try:
            return self._environment.program(self._environment.compile(text))
        except celpy.CELParseError as err:
            raise RuleCompileError(f"{where}: Invalid value: {text!r}: compilation failed: {err}") from None

    def errors(self, new: Body, old: Body | None = None) -> list[str]:
        """The field errors of writing `new` over `old` (None on create), worded as the server words them."""
        errors = []
        for rule in self.rules:
            for path, value in _values_at(new, rule.schema_path):
                previous = _value_at(old, path) if old is not None else _MISSING
                if rule.transition and previous is _MISSING:
                    continue
                if previous is not _MISSING and previous == value and not rule.transition:
                    continue  # ratcheting: an unchanged value is not re-validated
                errors += self._check(rule, path, value, previous)
        return errors

    def _check(self, rule: Rule, path: Path, value: Any, previous: Any) -> list[str]:
        activation = {"self": celpy.json_to_cel(value)}
        if previous is not _MISSING:
            activation["oldSelf"] = celpy.json_to_cel(previous)
        try:
            result = rule.program.evaluate(activation)
        except celpy.CELEvalError as err:
            result = err
        if result is True or (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            return []
        field = _field(path) + (rule.rule.get("fieldPath") or "")
        reason = REASONS.get(rule.rule.get("reason", "FieldValueInvalid"), "Invalid value")
        if isinstance(result, celpy.CELEvalError):
            message = f"{result.args[0] if result.args else result} evaluating rule: {rule.rule['rule']}"
        else:
            message = self._message(rule, activation)
        if reason == "Invalid value":
            return [f'{field or "<root>"}: Invalid value: "{rule.schema.get("type", "object")}": {message}']
        return [f"{field or '<root>'}: {reason}: {message}"]

    @staticmethod
    def _message(rule: Rule, activation: dict[str, Any]) -> str:
        if rule.message_program is not None:
            try:
                return str(rule.message_program.evaluate(activation))
            except celpy.CELEvalError:
                pass  # the server falls back to the static message, then to the rule itself
        return rule.rule.get("message") or f"failed rule: {rule.rule['rule']}"


class _Missing:
    pass


_MISSING: Any = _Missing()


def _values_at(value: Any, schema_path: tuple[str, ...], path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every value the schema path reaches, with its concrete path (array indexes, map keys filled in)."""
    if not schema_path:
        yield path, value
        return
    head, rest = schema_path[0], schema_path[1:]
    if head != "*":
        if isinstance(value, dict) and head in value:
            yield from _values_at(value[head], rest, (*path, head))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _values_at(item, rest, (*path, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _values_at(item, rest, (*path, key))


def _value_at(value: Any, path: Path) -> Any:
    for part in path:
        if isinstance(part, int) or not isinstance(value, dict) or part not in value:
            return _MISSING  # old values inside arrays are not correlated (see the module docstring)
        value = value[part]
    return value


def _field(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text
