"""An emulated Kubernetes API server for end-to-end tests, served over real HTTP on 127.0.0.1.

The operator's end-to-end tests run the real operator process against it: tests/support/cluster.py starts it
(the `kube` fixture) and tests/support/kubelet.py plays the Job controller and the kubelet through its API.

`kmock.KubernetesEmulator` 0.8 keeps objects in memory and serves discovery, but differs from a real API server
in ways kopf, the kubernetes client and kubectl trip over (docs/TESTING.md, items 1-12). `KubeEmulator` keeps
kmock's HTTP layer, discovery and object store, and takes over how objects are written, listed and watched:
server-set metadata, 201 on create, generateName, the /status subresource, label and field selectors, JSON and
merge patches (422 when a `test` op fails), standard Status reasons, garbage collection through ownerReferences,
CRDs that become served kinds whose schema prunes, defaults and validates objects, name, label and Job
validation, Job defaulting, Secret `stringData`, pod logs (written by the kubelet), and watches that start
without a race and resume from a resourceVersion. Every resource request is recorded as an RBAC-style `ApiCall`,
so a test can compare the operator's requests with the Helm chart's Role.

Approximated: strategic-merge patches are applied as merge patches (lists are replaced, not merged), garbage
collection is immediate, any field may be used in a fieldSelector. Not emulated: dry-run (400), protobuf bodies
(415: kubectl's typed commands such as `create configmap` send them; `apply -f` works), server-side apply (415),
CEL rules, Table output, RBAC, admission webhooks, graceful deletion, namespace deletion cascades, `/openapi`,
and every controller but the garbage collector.
"""

import asyncio
import base64
import bisect
import copy
import datetime
import gzip
import json
import random
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import jsonschema
import kmock
from kmock._internal import parsing

Body = dict[str, Any]
Key = tuple[kmock.resource, str | None, str]
T = TypeVar("T")

NAMESPACES = kmock.resource("", "v1", "namespaces")
PODS = kmock.resource("", "v1", "pods")
JOBS = kmock.resource("batch", "v1", "jobs")
SECRETS = kmock.resource("", "v1", "secrets")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
ALL_VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp")
ENVELOPE = ("apiVersion", "kind", "metadata")  # never pruned by a CRD schema
NAME_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet a real server uses for generateName
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_TERM = re.compile(
    r"(?P<absent>!)?(?P<key>[\w./-]+)"
    r"(?:\s*(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?"
)


class ApiCall(NamedTuple):
    """One request as an RBAC rule sees it; `namespace` is None for cluster-wide requests."""

    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    user_agent: str = ""


class Change(NamedTuple):
    """One entry of the change log that watches replay from a resourceVersion."""

    rv: int
    resource: kmock.resource
    type: str
    body: Body
    old: Body | None


def now() -> str:
    """A timestamp in the format the API server writes (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    """A failure shaped like a real API server's Status, with one of its standard reasons."""
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


def qualified(resource: kmock.resource) -> str:
    """How the server names a resource in messages: `pods`, `jobs.batch`."""
    return f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)


def rbac_verb(request: kmock.Request) -> str | None:
    """The verb an RBAC rule must grant for this request."""
    method, named = request.method.upper(), request.name is not None
    if method == "GET":
        return "watch" if request.params.get("watch") in ("true", "1") else "get" if named else "list"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method)


def content_type(request: kmock.Request) -> str:
    return next((value for key, value in request.headers.items() if key.lower() == "content-type"), "")


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
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
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
    return f"{field or '<root>'}: Invalid value: {json.dumps(error.instance)}: {error.message}"


def metadata_errors(body: Body) -> list[str]:
    """The checks every kind gets: the name's format, label syntax, and complete ownerReferences."""
    meta = body["metadata"]
    errors = []
    if len(meta["name"]) > 253 or not DNS_SUBDOMAIN.fullmatch(meta["name"]):
        errors.append(f'metadata.name: Invalid value: "{meta["name"]}": a lowercase RFC 1123 subdomain must '
                      "consist of lower case alphanumeric characters, '-' or '.'")
    template_labels = body.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    for where, labels in (("metadata.labels", meta.get("labels") or {}),
                          ("spec.template.metadata.labels", template_labels)):
        errors += [f'{where}: Invalid value: "{key}={value}": not a valid label'
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


_kmock_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 reads /api/v1/namespaces[/NAME[/status]] as a namespace prefix (or fails); parse it as the resource."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (len(parts) <= 4 or parts[4:] in (["status"], ["finalize"])):
        return parsing.ParsedPath("", "v1", "namespaces", None, *[*parts[3:5], None, None][:2])
    return _kmock_parse_path(path)


parsing.parse_path = _parse_path  # kmock pinned at 0.8: its request parser looks this function up on every request


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with a real API server's write, list and watch semantics (see the module docstring)."""

    api_calls: list[ApiCall] = attrs.field(factory=list, init=False)
    pod_logs: dict[tuple[str, str], Path] = attrs.field(factory=dict, init=False)  # filled by the kubelet
    _rv: int = attrs.field(default=0, init=False)
    _changes: list[Change] = attrs.field(factory=list, init=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _schemas: dict[kmock.resource, tuple[Body, jsonschema.Draft4Validator]] = attrs.field(factory=dict, init=False)
    _deletion_policies: dict[str, str] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # discovery, and fallbacks that call the _serve_* methods overridden below
        # Built-in kinds are served before any object of theirs exists (kmock's load_bundled(), minus its warning).
        bundled = resources.files("kmock._internal") / "resources.json.gz"
        self.resources.load_data(gzip.decompress(bundled.read_bytes()))
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback[self._is_collection_delete] << self._serve_delete_collection
        first = self.fallback ** 1  # tried before the other fallbacks: lists and plain fetches
        pod_logs = first[kmock.action.FETCH, PODS, kmock.subresource("log")]
        pod_logs << {"Content-Type": "text/plain"} << self._serve_pod_log
        # Discovery as the kubernetes client asks for it, with a trailing slash (/api/v1/) that kmock does not expect.
        first["get /version/"] << self._serve_server_version
        first["get /api/"] << self._serve_api
        first["get /apis/"] << self._serve_apis
        first["get", re.compile(r"/apis/[^/]+/")] << self._serve_group
        first["get", re.compile(r"/api/[^/]+/|/apis/[^/]+/[^/]+/")] << self._serve_version
        self._create(NAMESPACES, None, {"metadata": {"name": "default"}})

    def close_watches(self) -> None:
        """End every open watch stream, so that the HTTP server can shut down at once (call in the server's loop)."""
        self._closing = True
        self._wake_watchers()

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.plural and (verb := rbac_verb(request)):
            group, plural = str(request.resource.group), str(request.resource.plural)
            agent = request.headers.get("User-Agent", "")
            self.api_calls.append(ApiCall(verb, group, plural, request.subresource, request.namespace, agent))
            if "dryRun" in request.params:
                raise api_error(400, "BadRequest", "dry-run is not emulated")
            if "protobuf" in content_type(request):  # kubectl's typed commands (create configmap, ...) send it
                raise api_error(415, "UnsupportedMediaType", "protobuf is not emulated; use application/json")
        # Skip KubernetesEmulator._handle: it writes objects before any reaction runs; the fallbacks here write them.
        return await kmock.RawHandler._handle(self, request)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if not isinstance(exc, kmock.KubernetesError):
            return await super()._render_error(exc)  # a bug in the emulator: 500 with the traceback
        reason = "NotFound" if isinstance(exc, kmock.KubernetesNotFoundError) else exc.reason  # kmock's own 404s
        return aiohttp.web.json_response({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": exc.status, "reason": reason, "message": exc.message, "details": exc.details or {},
        }, status=exc.status)

    async def _serve_server_version(self, request: kmock.Request) -> Body:
        return {**await super()._serve_server_version(request), "major": "1", "minor": "33", "gitVersion": "v1.33.0"}

    async def _serve_api(self, request: kmock.Request) -> Body:
        address = {"clientCIDR": "0.0.0.0/0", "serverAddress": request.url.host_port_subcomponent}
        return {**await super()._serve_api(request), "apiVersion": "v1", "serverAddressByClientCIDRs": [address]}

    async def _serve_version(self, request: kmock.Request) -> Body:
        payload = await super()._serve_version(request)
        payload["groupVersion"] = payload["groupVersion"].lstrip("/")  # the core group is "v1", not "/v1"
        return payload

    @staticmethod
    def _is_collection_delete(request: kmock.Request) -> bool:
        return request.method == kmock.method.DELETE and request.resource is not None and request.name is None

    # Reads.

    def _serve_list(self, request: kmock.Request) -> Body:
        return self._list_of(request.resource, self._select(request))

    def _serve_fetch(self, request: kmock.Request) -> Body:
        return self._existing(request)

    def _serve_pod_log(self, request: kmock.Request) -> bytes:
        """A pod's output as the kubelet captured it; `tailLines` is honoured."""
        pod = self._existing(request)
        path = self.pod_logs.get((pod["metadata"]["namespace"], pod["metadata"]["name"]))
        text = path.read_text(errors="replace") if path is not None and path.exists() else ""
        tail = request.params.get("tailLines")
        return "".join(text.splitlines(keepends=True)[-int(tail):] if tail else [text]).encode()

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Body | bytes]:
        self._info(request.resource)  # an unknown resource, or a bad selector, fails before the stream starts
        matches = self._matcher(request)
        cursor, initial = self._watch_start(request, matches)
        yield b""  # send the headers now: a watch with nothing to report yet is still an open stream
        for event in initial:
            yield event
        timeout = request.params.get("timeoutSeconds")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + float(timeout)
        while not self._closing:
            wakeup = self._changed  # taken before draining: a change made while yielding sets it
            while cursor < len(self._changes):
                event = self._event_for(self._changes[cursor], request.resource, matches)
                cursor += 1
                if event is not None:
                    yield event
            try:
                await asyncio.wait_for(wakeup.wait(), None if deadline is None else deadline - loop.time())
            except TimeoutError:
                return

    def _watch_start(self, request: kmock.Request, matches: Callable[[Body], bool]) -> tuple[int, list[Body]]:
        """Where a watch starts in the change log, and the synthetic ADDED events it begins with."""
        since = request.params.get("resourceVersion", "")
        if since not in ("", "0"):
            if not since.isdigit():
                raise api_error(400, "BadRequest", f"invalid resourceVersion: {since!r}")
            return bisect.bisect_right(self._changes, int(since), key=lambda change: change.rv), []
        initial = [{"type": "ADDED", "object": body} for body in self._select(request, matches)]
        if request.params.get("sendInitialEvents") == "true":
            initial.append({"type": "BOOKMARK", "object": {
                "apiVersion": self._api_version(request.resource), "kind": self._info(request.resource).kind,
                "metadata": {"resourceVersion": str(self._rv), "annotations": {"k8s.io/initial-events-end": "true"}},
            }})
        return len(self._changes), initial

    @staticmethod
    def _event_for(change: Change, resource: kmock.resource, matches: Callable[[Body], bool]) -> Body | None:
        """The event a selective watch sees: an object entering or leaving the selection is ADDED or DELETED."""
        if change.resource != resource:
            return None
        is_in, was_in = matches(change.body), change.old is not None and matches(change.old)
        if change.type == "MODIFIED" and is_in != was_in:
            return {"type": "ADDED" if is_in else "DELETED", "object": change.body}
        return {"type": change.type, "object": change.body} if is_in else None

    # Writes.

    def _serve_create(self, request: kmock.Request) -> kmock.Response:
        if request.subresource:
            raise api_error(405, "MethodNotAllowed", f"create is not emulated for {request.subresource}")
        created = self._create(request.resource, request.namespace, self._body(request))
        return kmock.Response(status=201, payload=created)

    def _serve_update(self, request: kmock.Request) -> Body:  # kmock's UPDATE action is PATCH
        old = self._existing(request)
        match content_type(request).split(";")[0].strip():
            case "application/json-patch+json":
                new = json_patch(old, request.data)
            case "application/merge-patch+json" | "application/strategic-merge-patch+json":
                new = merge_patch(old, request.data)
            case _:
                raise api_error(415, "UnsupportedMediaType", f"{content_type(request)!r} is not emulated")
        return self._update(request, new, old)

    def _serve_replace(self, request: kmock.Request) -> Body:  # PUT
        return self._update(request, self._body(request), self._existing(request))

    def _serve_delete(self, request: kmock.Request) -> Body:
        body = self._existing(request)
        options = request.data if isinstance(request.data, dict) else {}
        for field in ("uid", "resourceVersion"):
            wanted = (options.get("preconditions") or {}).get(field)
            if wanted and wanted != body["metadata"][field]:
                raise self._conflict(request.resource, body, f"precondition failed for {field}")
        return self._delete(self._key(request.resource, body), body, self._propagation(request, options))

    def _serve_delete_collection(self, request: kmock.Request) -> Body:
        options = request.data if isinstance(request.data, dict) else {}
        policy = self._propagation(request, options)
        return self._list_of(request.resource, [self._delete(self._key(request.resource, body), body, policy)
                                                for body in self._select(request)])

    def _create(self, resource: kmock.resource, namespace: str | None, body: Body) -> Body:
        info = self._info(resource)
        meta = body.setdefault("metadata", {})
        namespace = self._namespace_for(info.namespaced, namespace, meta)
        if not meta.get("name") and not meta.get("generateName"):
            raise self._invalid(resource, body, ["metadata.name: Required value: name or generateName is required"])
        if not meta.get("name"):
            meta["name"] = meta["generateName"][:58] + "".join(random.choices(NAME_SUFFIX, k=5))
        key = (resource, namespace, meta["name"])
        if self._get(key) is not None:
            raise api_error(409, "AlreadyExists", f'{qualified(resource)} "{meta["name"]}" already exists',
                            name=meta["name"], group=resource.group, kind=resource.plural)
        for field in SERVER_FIELDS:
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        if "status" in info.subresources:
            body.pop("status", None)  # status is written through /status only
        if resource == NAMESPACES:
            body["status"] = {"phase": "Active"}
        if resource == JOBS:
            default_job(body)
        if resource == PODS:
            default_containers(body.get("spec", {}))
        if "spec" in body:
            meta["generation"] = 1
        return self._commit(key, "ADDED", self._admitted(resource, body))

    def _namespace_for(self, namespaced: bool | None, namespace: str | None, meta: Body) -> str | None:
        if not namespaced:
            meta.pop("namespace", None)
            return None
        if namespace and meta.get("namespace", namespace) != namespace:
            raise api_error(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                            "sent on the request")
        namespace = namespace or meta.get("namespace")
        if not namespace or self._get((NAMESPACES, None, namespace)) is None:
            raise api_error(404, "NotFound", f'namespaces "{namespace}" not found', name=namespace, kind="namespaces")
        meta["namespace"] = namespace
        return namespace

    def _update(self, request: kmock.Request, new: Any, old: Body) -> Body:
        if not isinstance(new, dict):
            raise api_error(400, "BadRequest", "the body must be an object")
        wanted = (new.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise self._conflict(request.resource, old, "the object has been modified; please apply your changes "
                                 "to the latest version and try again")
        new = self._admitted(request.resource, self._keep_server_fields(request, copy.deepcopy(new), old))
        if request.resource == JOBS and new["spec"]["template"] != old["spec"]["template"] \
                and not old["spec"].get("suspend"):  # a suspended Job's template may change: that is how Kueue works
            raise self._invalid(JOBS, old, ["spec.template: Invalid value: field is immutable"])
        if new == old:
            return old  # a write that changes nothing leaves the resourceVersion alone and wakes no watch
        key = self._key(request.resource, old)
        self._commit(key, "MODIFIED", new, old)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(key, new, self._deletion_policies.pop(new["metadata"]["uid"], "Background"))
        return new

    def _keep_server_fields(self, request: kmock.Request, new: Body, old: Body) -> Body:
        """Undo what a client may not change: server-set metadata, and spec or status depending on the endpoint."""
        meta = new.setdefault("metadata", {})
        for field in ("name", "namespace", *SERVER_FIELDS):
            meta.pop(field, None)
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        if "status" in self._info(request.resource).subresources:
            # /status changes the status only; the main endpoint changes everything but the status.
            source, status_source = (old, new) if request.subresource == "status" else (new, old)
            new = {k: v for k, v in source.items() if k != "status"}
            if "status" in status_source:
                new["status"] = status_source["status"]
        spec_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")}
        if spec_changed and "generation" in old["metadata"]:
            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
        return new

    def _admitted(self, resource: kmock.resource, body: Body) -> Body:
        """Apply the CRD schema (pruning, defaults) and every validation; 422 Invalid names each failing field."""
        body["apiVersion"], body["kind"] = self._api_version(resource), self._info(resource).kind
        if resource == SECRETS:
            encode_string_data(body)
        errors = metadata_errors(body) + (job_errors(body) if resource == JOBS else [])
        if resource in self._schemas:
            schema, validator = self._schemas[resource]
            content = prune_and_default({k: v for k, v in body.items() if k not in ENVELOPE}, schema)
            body = {**{k: body[k] for k in ENVELOPE}, **content}
            errors += sorted(schema_error(error) for error in validator.iter_errors(body))
        if errors:
            raise self._invalid(resource, body, errors)
        if resource == CRDS:
            self._register_crd(body)
        return body

    def _delete(self, key: Key, body: Body, policy: str) -> Body:
        """Delete now, or, while finalizers remain, mark the object and let their owners release it."""
        meta = body["metadata"]
        if not meta.get("finalizers"):
            return self._remove(key, body, policy)
        if meta.get("deletionTimestamp"):
            return body
        self._deletion_policies[meta["uid"]] = policy
        marked = copy.deepcopy(body)
        marked["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
        return self._commit(key, "MODIFIED", marked, body)

    def _remove(self, key: Key, body: Body, policy: str) -> Body:
        self._commit(key, "DELETED", copy.deepcopy(body), body)
        self._collect_dependents(key[1], body["metadata"]["uid"], policy)
        return body

    def _collect_dependents(self, namespace: str | None, owner_uid: str, policy: str) -> None:
        """The garbage collector: dependents left without a live owner go too, unless the owner orphaned them."""
        for key in [key for key, body in self._live() if namespace in (None, key[1])]:
            body = self._get(key)  # fresh: collecting an earlier dependent may have changed or removed this one
            refs = (body or {}).get("metadata", {}).get("ownerReferences") or []
            if body is None or not any(ref["uid"] == owner_uid for ref in refs):
                continue
            others = [ref for ref in refs if ref["uid"] != owner_uid]
            live_uids = {live["metadata"]["uid"] for _, live in self._live()}
            if policy == "Orphan" or any(ref["uid"] in live_uids for ref in others):
                released = copy.deepcopy(body)
                released["metadata"]["ownerReferences"] = others
                self._commit(key, "MODIFIED", released, body)
            else:
                self._delete(key, body, "Background")

    @staticmethod
    def _propagation(request: kmock.Request, options: Body) -> str:
        policy = request.params.get("propagationPolicy") or options.get("propagationPolicy")
        if policy or options.get("orphanDependents") is None:
            # batch/v1 Jobs still orphan their Pods by default: an operator must ask for Background itself.
            return policy or ("Orphan" if request.resource == JOBS else "Background")
        return "Orphan" if options["orphanDependents"] else "Background"

    def _register_crd(self, crd: Body) -> None:
        """Serve the CRD's kinds in discovery and keep each version's schema for pruning and validation."""
        try:
            spec, names = crd["spec"], crd["spec"]["names"]
            for version in (version for version in spec["versions"] if version.get("served", True)):
                resource = kmock.resource(spec["group"], version["name"], names["plural"])
                self.resources[resource] = kmock.ResourceInfo(
                    kind=names["kind"], singular=names.get("singular", names["kind"].lower()),
                    namespaced=spec["scope"] == "Namespaced", verbs=ALL_VERBS, shortnames=names.get("shortNames", []),
                    categories=names.get("categories", []), subresources=set(version.get("subresources") or {}))
                if schema := version.get("schema", {}).get("openAPIV3Schema"):
                    self._schemas[resource] = (schema, jsonschema.Draft4Validator(to_json_schema(schema)))
        except (KeyError, TypeError) as exc:
            raise self._invalid(CRDS, crd, [f"spec: Required value: {exc}"]) from exc
        conditions = [{"type": kind, "status": "True", "lastTransitionTime": now(), "reason": kind}
                      for kind in ("NamesAccepted", "Established")]
        stored = [version["name"] for version in spec["versions"] if version.get("storage")]
        crd["status"] = {"acceptedNames": names, "storedVersions": stored, "conditions": conditions}

    def _commit(self, key: Key, event: str, body: Body, old: Body | None = None) -> Body:
        """Store a new version with the next resourceVersion and tell the watches."""
        self._rv += 1
        body["metadata"]["resourceVersion"] = str(self._rv)
        if key in self.objects:
            self.objects[key].history.append(body)
        else:
            self.objects[key] = body
        if event == "DELETED":
            self.objects[key].delete()
        self._changes.append(Change(self._rv, key[0], event, copy.deepcopy(body), old))
        self._wake_watchers()
        return body

    def _wake_watchers(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # Helpers.

    def _info(self, resource: kmock.resource | None) -> kmock.ResourceInfo:
        if resource is None or resource not in self.resources:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        return self.resources[resource]

    def _list_of(self, resource: kmock.resource | None, items: list[Body]) -> Body:
        """A list as the server sends it: with its kind (kubectl needs it) and the current resourceVersion."""
        return {"apiVersion": self._api_version(resource), "kind": f"{self._info(resource).kind}List",
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    @staticmethod
    def _api_version(resource: kmock.resource | None) -> str:
        assert resource is not None
        return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)

    @staticmethod
    def _key(resource: kmock.resource | None, body: Body) -> Key:
        assert resource is not None
        return resource, body["metadata"].get("namespace"), body["metadata"]["name"]

    def _get(self, key: Key) -> Body | None:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _live(self) -> Iterator[tuple[Key, Body]]:
        for key, obj in list(self.objects.items()):
            if not obj.deleted:
                yield key, obj.raw

    def _existing(self, request: kmock.Request) -> Body:
        info = self._info(request.resource)
        if request.subresource not in (None, *info.subresources):
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        body = self._get((request.resource, request.namespace if info.namespaced else None, str(request.name)))
        if body is None:
            raise api_error(404, "NotFound", f'{qualified(request.resource)} "{request.name}" not found',
                            name=request.name, group=request.resource.group, kind=request.resource.plural)
        return body

    def _select(self, request: kmock.Request, matches: Callable[[Body], bool] | None = None) -> list[Body]:
        matches = matches or self._matcher(request)
        return [copy.deepcopy(body) for key, body in self._live() if key[0] == request.resource and matches(body)]

    @staticmethod
    def _matcher(request: kmock.Request) -> Callable[[Body], bool]:
        labels = label_matcher(request.params.get("labelSelector", ""))
        fields = field_matcher(request.params.get("fieldSelector", ""))
        namespace, name = request.namespace, request.name
        return lambda body: (
            namespace in (None, body["metadata"].get("namespace")) and name in (None, body["metadata"]["name"])
            and labels(body["metadata"].get("labels") or {}) and fields(body)
        )

    @staticmethod
    def _body(request: kmock.Request) -> Body:
        if not isinstance(request.data, dict):
            raise api_error(400, "BadRequest", "the body of the request must be a JSON object")
        return copy.deepcopy(request.data)

    def _invalid(self, resource: kmock.resource, body: Body, errors: list[str]) -> kmock.KubernetesError:
        kind, name = self._info(resource).kind, body.get("metadata", {}).get("name", "")
        listed = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
        causes = [{"reason": "FieldValueInvalid", "message": error, "field": error.split(":")[0]} for error in errors]
        qualified_kind = f"{kind}.{resource.group}" if resource.group else str(kind)
        return api_error(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {listed}',
                         name=name, group=resource.group, kind=kind, causes=causes)

    @staticmethod
    def _conflict(resource: kmock.resource | None, body: Body, why: str) -> kmock.KubernetesError:
        assert resource is not None
        name = body["metadata"]["name"]
        return api_error(409, "Conflict", f'Operation cannot be fulfilled on {qualified(resource)} "{name}": {why}',
                         name=name, group=resource.group, kind=resource.plural)


class BackgroundLoop:
    """An asyncio loop in a daemon thread: the emulator and the kubelet each get one, as docs/TESTING.md advises."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine in the loop and wait for its result from the calling thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class EmulatorServer:
    """A `KubeEmulator` serving HTTP on 127.0.0.1 with a free port, in its own thread and loop."""

    def __init__(self) -> None:
        self._thread = BackgroundLoop("kube-emulator")
        self.emulator, self._server = self._thread.run(self._start())
        self.url = f"http://127.0.0.1:{self._server.port}"

    @staticmethod
    async def _start() -> tuple[KubeEmulator, kmock.Server]:
        emulator = KubeEmulator()
        await emulator.__aenter__()
        server = kmock.Server(emulator, host="127.0.0.1")
        await server.__aenter__()
        return emulator, server

    def call(self, fn: Callable[[], T]) -> T:
        """Run a function in the server's loop, where the emulator's state may be read and changed safely."""
        async def call() -> T:
            return fn()
        return self._thread.run(call())

    def internal_errors(self) -> list[Exception]:
        """Exceptions that were not API errors: bugs in the emulator, answered with a 500."""
        return self.call(lambda: [e for e in self.emulator.errors if not isinstance(e, kmock.KubernetesError)])

    def stop(self) -> None:
        async def stop() -> None:
            self.emulator.close_watches()
            await self._server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)
        self._thread.run(stop(), timeout=30)
        self._thread.close()
