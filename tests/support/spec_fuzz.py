"""Hypothesis strategies for LLMSelection manifests: plausible ones built from the pydantic models' JSON schema, then
made hostile where a user, a YAML parser or an attacker would.

Used by tests/reliability/test_fuzz.py. `manifests()` draws a `Case`: the manifest as a document (what the API
server gets as JSON) and the YAML text the CLIs read, which may differ from a dump of the document where only YAML
can express the hostility (an alias bomb, 10,000 levels of nesting, unquoted `yes` and `204045`).
"""

import json
import random
from dataclasses import dataclass
from typing import Any

import yaml
from hypothesis import strategies as st
from lensllm.selection.spec import LLMSelectionSpec

SCHEMA = LLMSelectionSpec.model_json_schema(by_alias=True)
DNS_LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
# Paths into the manifest and values no one should be able to get past validation with a traceback.
HOSTILE: list[tuple[tuple[Any, ...], Any]] = [
    (("metadata", "name"), "trailing-newline\n"), (("metadata", "name"), "n" * 64),
    (("metadata", "name"), "s" * 63), (("metadata", "name"), "dots.in.name." + "d" * 50),
    (("spec", "candidates"), []), (("spec", "candidates", 0, "name"), "cand\n"),
    (("spec", "candidates", 0, "name"), "c" * 41), (("spec", "candidates", 0, "name"), "c" * 64),
    (("spec", "candidates", 0, "name"), "Upper_Case"), (("spec", "candidates", 0, "model"), ""),
    (("spec", "candidates", 0, "model"), 204045), (("spec", "candidates", 0, "resources"), {"cpu": "lots"}),
    (("spec", "budget"), {"subsetSizes": [], "targetSize": 100}),
    (("spec", "budget"), {"subsetSizes": [16, 32], "targetSize": 100}),
    (("spec", "budget"), {"subsetSizes": [32, 16, 64], "targetSize": 100}),
    (("spec", "budget"), {"subsetSizes": list(range(1, 5001)), "targetSize": 10_000}),
    (("spec", "budget"), {"baseSize": 1, "doublings": 20, "targetSize": 2**21}),
    (("spec", "budget", "targetSize"), "204045"), (("spec", "budget", "targetSize"), 2**63),
    (("spec", "resources", "cpu"), "lots"), (("spec", "resources", "memory"), "-1Gi"),
    (("spec", "resources", "memory"), "1Mii"), (("spec", "resources", "nvidia.com/gpu"), -1),
    (("spec", "resources", "shmSize"), "big"),
    (("spec", "tolerations"), [{"key": 1}]), (("spec", "tolerations"), [{"operator": "Maybe"}]),
    (("spec", "tolerations"), [{"key": "gpu", "tolerationSeconds": "soon", "effect": "NoExecute"}]),
    (("spec", "tolerations"), ["just-a-string"]), (("spec", "tolerations"), [{"unexpected": "key"}]),
    (("spec", "affinity"), {"nodeAffinity": ["zone-a"]}), (("spec", "affinity"), {"bogus": 1}),
    (("spec", "nodeSelector"), {"gpu": "x" * 70}), (("spec", "nodeSelector"), {"bad key!": "v"}),
    (("spec", "queue"), "not a label!"), (("spec", "queue"), "q" * 64),
    (("spec", "parallelism"), 0), (("spec", "parallelism"), "many"), (("spec", "parallelism"), True),
    (("spec", "modelCache"), {"claimName": ""}), (("spec", "modelCache"), {"claimName": "c", "mountPath": "/work"}),
    (("spec", "modelCache"), {"claimName": "c", "mountPath": "relative/path"}),
    (("spec", "hfTokenSecretRef"), {"name": "s", "key": "bad key/"}),
    (("spec", "runner", "image"), "Registry/UPPER:tag\n"),
    (("spec", "training", "learningRate"), "yes"), (("spec", "training", "learningRate"), -1),
    (("spec", "training", "batchSize"), 10**12), (("spec", "dataset", "promptTemplate"), "no placeholder"),
    (("spec", "dataset", "textField"), "text"), (("spec", "ntk", "probeSize"), 0),
    (("spec", "activeDeadlineSeconds"), "soon"), (("spec", "unknownField"), {"x": 1}),
    (("spec",), None), (("spec", "method"), "oracle"), (("spec", "seed"), -3),
    # The race, the default strategy: settings its rounds cannot run with.
    (("spec", "strategy"), "sprint"), (("spec", "strategy"), None), (("spec", "race", "initialSizes"), 1),
    (("spec", "race", "initialSizes"), 99), (("spec", "race", "laws"), ["vanilla", "vanilla"]),
    (("spec", "race", "laws"), []), (("spec", "race", "laws"), ["oracle"]), (("spec", "race", "epsilon"), 0),
    (("spec", "race", "delta"), "sure"), (("spec", "budget", "maxComputeFraction"), 1e-9),
    (("spec", "budget", "maxComputeFraction"), -0.5), (("spec", "budget", "maxComputeFraction"), "half"),
]
YAML_ONLY = ("alias-bomb", "deep-nesting", "unquoted-yes", "unquoted-number", "not-a-mapping", "empty")


@dataclass
class Case:
    """One fuzzed manifest: the document the API server gets, the YAML the CLIs read, and how it was made."""

    document: Any  # what the API server gets (None: nothing sensible, e.g. an alias bomb)
    text: str
    hostility: str
    isolated: bool = False  # feed the CLIs in a memory-limited subprocess: the YAML itself is the attack


def from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy for values of a (pydantic-made) JSON schema, kept small: short lists, few map entries."""
    if "$ref" in schema:
        return from_schema(SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[-1]], depth)
    if "anyOf" in schema:
        return st.one_of([from_schema(sub, depth) for sub in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", []))
        props = {name: from_schema(sub, depth + 1) for name, sub in schema["properties"].items()}
        return st.fixed_dictionaries({k: v for k, v in props.items() if k in required},
                                     optional={k: v for k, v in props.items() if k not in required})
    if kind == "object":
        values = from_schema(schema["additionalProperties"], depth + 1) \
            if isinstance(schema.get("additionalProperties"), dict) else st.sampled_from(["a", 1, True])
        return st.dictionaries(DNS_LABEL, values, max_size=2)
    if kind == "array":
        return st.lists(from_schema(schema["items"], depth + 1), min_size=schema.get("minItems", 0), max_size=3)
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return st.integers(low, schema.get("maximum", low + 300))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return st.floats(low, schema.get("maximum", schema.get("exclusiveMaximum", low + 1)), allow_nan=False,
                         exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return DNS_LABEL if depth else st.text(max_size=8)


# Built once (building it is a good part of drawing from it), without the settings whose drawn values are valid but
# slow to run (training, NTK, resources): plausible() sets those small, HOSTILE breaks them.
SPECS = from_schema({**SCHEMA, "properties": {name: sub for name, sub in SCHEMA["properties"].items()
                                              if name not in ("training", "ntk", "resources")}})


def candidates() -> st.SearchStrategy[list[dict[str, Any]]]:
    """One to three candidates with unique DNS-label names (the common case; hostile names come from HOSTILE)."""
    model = st.sampled_from(["/models/tiny-a", "/models/tiny-b", "org/model-c"])
    return st.lists(st.fixed_dictionaries({"name": DNS_LABEL, "model": model}), min_size=1, max_size=3,
                    unique_by=lambda candidate: candidate["name"])


@st.composite
def plausible(draw: st.DrawFn) -> dict[str, Any]:
    """A manifest whose spec comes from the schema, with the parts that matter most kept mostly sensible."""
    spec = draw(SPECS)
    spec["candidates"] = draw(candidates())
    spec["dataset"] = {"source": "/data/task", "inputField": "input", "targetField": "target",
                       **draw(st.sampled_from([{}, {"maxTestExamples": 8}, {"promptTemplate": "Q: {input}\n"}]))}
    sizes = draw(st.lists(st.integers(1, 64), min_size=3, max_size=4, unique=True).map(sorted))
    spec["budget"] = {"subsetSizes": sizes, "targetSize": draw(st.integers(sizes[-1], 4096))}
    spec["ntk"] = {"probeSize": 4}
    name = draw(DNS_LABEL)
    return {"apiVersion": "lensllm.io/v1alpha1", "kind": "LLMSelection", "metadata": {"name": name}, "spec": spec}


def put(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """Set a value deep in the document, creating what is missing on the way."""
    node: Any = document
    for part, following in zip(path, path[1:]):
        if isinstance(node, list):
            if not node:
                node.append({})
            node = node[min(part, len(node) - 1)]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = [] if isinstance(following, int) else {}
        node = node[part]
    if isinstance(node, list):
        node[min(path[-1], len(node) - 1) if node else 0:] = [value]
    else:
        node[path[-1]] = value


@st.composite
def manifests(draw: st.DrawFn) -> Case:
    """A plausible manifest, left alone, made hostile at one or two places, or hostile in a way only YAML can be."""
    document = draw(plausible())
    # Uniform picks seeded by the drawn manifest: hypothesis leans towards the first entries of sampled_from and
    # small numbers, which would leave most of HOSTILE untried in a few hundred examples.
    pick = random.Random(f"{draw(st.integers(0, 2**32))}:{json.dumps(document, sort_keys=True)}")
    choice = pick.randrange(10)
    if choice < 2:
        return Case(document, yaml.safe_dump(document), "none")
    if choice == 2:
        return yaml_only(document, pick.choice(YAML_ONLY))
    hostility = []
    for _ in range(pick.randint(1, 2)):
        path, value = pick.choice(HOSTILE)
        put(document, path, json.loads(json.dumps(value)))
        hostility.append(".".join(str(part) for part in path))
    return Case(document, yaml.safe_dump(document), "+".join(hostility))


def yaml_only(document: dict[str, Any], kind: str) -> Case:
    """Manifests whose hostility lives in the YAML text itself."""
    text = yaml.safe_dump(document)
    if kind == "alias-bomb":
        bomb = "x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
            f"x{i}: &x{i} [*x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}]\n"
            for i in range(1, 9))
        text = bomb + text.replace("spec:\n", "spec:\n  tolerations: *x8\n", 1)
    elif kind == "deep-nesting":
        text = text.replace("spec:\n", "spec:\n  affinity: " + "[" * 10_000 + "]" * 10_000 + "\n", 1)
    elif kind == "unquoted-yes":
        text = text.replace(f"- model: {document['spec']['candidates'][0]['model']}", "- model: yes", 1)
    elif kind == "unquoted-number":
        text = text.replace(f"name: {document['metadata']['name']}", "name: 204045", 1)
    elif kind == "not-a-mapping":
        text = "- just\n- a list\n"
    else:
        text = ""
    if kind in ("alias-bomb", "deep-nesting"):
        return Case(None, text, kind, isolated=True)
    loaded = yaml.safe_load(text)
    return Case(loaded if isinstance(loaded, dict) else None, text, kind)
