"""The one reader of YAML and JSON documents that users hand to lensllm (selections, trial specs).

Every manifest reader goes through here (`select --local`, `report`, `run-trial`), so each
refuses the same hostile inputs with one line instead of a hang or a traceback: an alias
"bomb" (a few lines whose aliases expand to billions of nodes) and nesting deep enough to
exhaust the parser's recursion. Numbers read as YAML 1.2 reads them (`1e-4` is a float, as
kubectl sends it), so a manifest means the same here as on a cluster.
"""

import json
import re
from typing import Any

import yaml

from lensllm.errors import LensLLMError

MAX_DEPTH = 64
MAX_NODES = 100_000


class UnsafeDocument(LensLLMError):
    """The document is nested too deeply or its aliases expand too far to be read safely."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (1e-4, 5E+3)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(text: str) -> Any:
    """The document in `text`; UnsafeDocument (or yaml.YAMLError for a syntax error) otherwise."""
    _check_events(text)
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _check_events(text: str) -> None:
    """Walk the event stream (iterative, no recursion) and measure the document as aliases expand it."""
    frames: list[list[Any]] = [[None, 0, 0]]  # per open collection: anchor, nodes before it, deepest level inside
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (nodes it expands to, levels it spans)
    nodes = 0
    for event in yaml.parse(text, Loader=_Loader):
        level = len(frames) - 1
        if isinstance(event, yaml.AliasEvent):
            size, levels = sizes.get(event.anchor, (1, 0))
            nodes += size
            frames[-1][2] = max(frames[-1][2], level + levels)
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor:
                sizes[event.anchor] = (1, 0)
        elif isinstance(event, yaml.CollectionStartEvent):
            nodes += 1
            frames.append([event.anchor, nodes - 1, level + 1])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before, deepest = frames.pop()
            frames[-1][2] = max(frames[-1][2], deepest)
            if anchor:
                sizes[anchor] = (nodes - before, deepest - level + 1)
        if frames[-1][2] > MAX_DEPTH:
            raise UnsafeDocument(f"nested more than {MAX_DEPTH} levels deep")
        if nodes > MAX_NODES:
            raise UnsafeDocument(f"more than {MAX_NODES} values once its aliases are expanded (an alias bomb?)")


def load_json(text: str) -> Any:
    """The JSON document in `text`; UnsafeDocument when nested too deeply (json.JSONDecodeError on bad syntax)."""
    depth = deepest = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        char = token.group()
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    if deepest > MAX_DEPTH:
        raise UnsafeDocument(f"nested more than {MAX_DEPTH} levels deep")
    return json.loads(text)
