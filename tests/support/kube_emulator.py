"""An emulated Kubernetes API server for end-to-end tests, served over real HTTP on 127.0.0.1.

The operator's end-to-end tests run the real operator process against it: tests/support/cluster.py starts it
(the `kube` fixture) and tests/support/kubelet.py plays the kubelet and the Job controller through its API.

`kmock.KubernetesEmulator` 0.8 keeps objects in memory and serves discovery, but differs from a real API server
in ways kopf, the kubernetes client and kubectl trip over (docs/TESTING.md, items 1-12). `KubeEmulator` keeps
kmock's HTTP layer, discovery and object store, and takes over how objects are written, listed and watched:
server-set metadata, 201 on create, generateName, the /status subresource, label and field selectors, JSON and
merge patches (422 when a `test` op fails), standard Status reasons, garbage collection through ownerReferences
(Background, Foreground, Orphan), CRDs that become served kinds whose schema prunes, defaults and validates objects
and whose CEL rules are evaluated (tests/support/cel_rules.py), name, label, Job and pod spec validation
(tests/support/pod_validation.py), Job defaulting, Secret `stringData`, pod logs (written by the kubelet), the
Eviction API, and watches that start without a race, resume from a resourceVersion and expire (410) once their
resourceVersion left the history window. Every resource request is recorded as an RBAC-style `ApiCall`, so a test
can compare the operator's requests with the Helm chart's Role.

Faults a test switches on through `KubeEmulator.faults` (tests/support/api_faults.py): refused requests (409, 429,
5xx) by probability or schedule, lost answers of performed writes, compaction, dropped watches, a slow garbage
collector, graceful pod deletion.

Approximated: strategic-merge patches are applied as merge patches (lists are replaced, not merged), any field may
be used in a fieldSelector, Foreground deletion removes the owner right after its dependents. Not emulated: dry-run
(400), protobuf bodies (415: kubectl's typed commands such as `create configmap` send them; `apply -f` works),
server-side apply (415), Table output, RBAC, admission webhooks, namespace deletion cascades, `/openapi`, and every
controller but the garbage collector.
"""

import asyncio
import bisect
import copy
import datetime
import gzip
import json
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiohttp.test_utils
import aiohttp.web
import attrs
import jsonschema
import kmock
import pod_validation
from api_faults import REASONS, RETRY_AFTER_SECONDS, ApiFaults, FaultRule, RequestInfo
from api_objects import (
    api_error,
    default_containers,
    default_job,
    encode_string_data,
    field_matcher,
    job_errors,
    json_patch,
    label_matcher,
    merge_patch,
    metadata_decode_error,
    metadata_errors,
    prune_and_default,
    quoted,
    schema_error,
    to_json_schema,
    without_nulls,
)
from cel_rules import CelRules, RuleCompileError
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
class ApiCall(NamedTuple):
    """One request as an RBAC rule sees it; `namespace` is None for cluster-wide requests."""

    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    user_agent: str = ""


class JournalEntry(NamedTuple):
    """One write to an object of a journaled resource: when, what, and what the journal's extractor kept of it."""

    at: float  # time.monotonic()
    type: str  # ADDED, MODIFIED or DELETED
    resource: str
    namespace: str | None
    name: str
    data: Any


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


def fault_error(rule: FaultRule, request: RequestInfo) -> kmock.KubernetesError:
    """The Status a real server answers with when it fails a request the way `rule` says."""
    reason, message = REASONS[rule.code]
    details: dict[str, Any] = {"name": request.name or "", "kind": request.resource}
    if rule.code == 409:
        message = f'Operation cannot be fulfilled on {request.resource} "{request.name or ""}": {message}'
    if rule.code == 403:
        message = f'{request.resource} "{request.name or ""}" is forbidden: {message}'
    if rule.code == 429:
        details["retryAfterSeconds"] = RETRY_AFTER_SECONDS
    return api_error(rule.code, reason, message, **details)


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
    faults: ApiFaults = attrs.field(factory=ApiFaults, init=False)
    # Resource plural -> what to keep of each write to its objects (e.g. a Job's conditions), in `journal`:
    # how a suite learns when things happened without watching (and without the watch history's window).
    journaled: dict[str, Callable[[Body], Any]] = attrs.field(factory=dict, init=False)
    journal: list[JournalEntry] = attrs.field(factory=list, init=False)
    pod_logs: dict[tuple[str, str], Path] = attrs.field(factory=dict, init=False)  # filled by the kubelet
    _rv: int = attrs.field(default=0, init=False)
    _changes: list[Change] = attrs.field(factory=list, init=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _schemas: dict[kmock.resource, tuple[Body, jsonschema.Draft4Validator, CelRules]] = attrs.field(
        factory=dict, init=False)
    _deletion_policies: dict[str, str] = attrs.field(factory=dict, init=False)
    _index: dict[kmock.resource, dict[Key, None]] = attrs.field(factory=dict, init=False)
    _names: random.Random = attrs.field(factory=random.Random, init=False)  # generateName suffixes
    _compacted_rv: int = attrs.field(default=0, init=False)  # watches from before this get 410 Expired
    _compactions_applied: int = attrs.field(default=0, init=False)

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
        first[kmock.method.POST, PODS, kmock.subresource("eviction")] << self._serve_eviction
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
        info = self._record(request)
        self._follow_compactions()
        try:
            rule = self.faults.refusal(info) if info is not None else None
            if rule is not None and rule.code == 410:
                return await self._expired_watch(request)
            if rule is not None and not rule.commit:
                raise fault_error(rule, info)
            # Skip KubernetesEmulator._handle: it writes objects before any reaction runs; the fallbacks here do.
            response = await kmock.RawHandler._handle(self, request)
            if rule is not None:  # served, but the client never hears it
                raise fault_error(rule, info)
            return response
        finally:
            self._forget(request)

    def _record(self, request: kmock.Request) -> RequestInfo | None:
        """Log a resource request as an RBAC-style `ApiCall`; refuse what the emulator does not serve."""
        if request.resource is None or not request.resource.plural or not (verb := rbac_verb(request)):
            return None
        group, plural = str(request.resource.group), str(request.resource.plural)
        agent = request.headers.get("User-Agent", "")
        self.api_calls.append(ApiCall(verb, group, plural, request.subresource, request.namespace, agent))
        if "dryRun" in request.params:
            raise api_error(400, "BadRequest", "dry-run is not emulated")
        if "protobuf" in content_type(request):  # kubectl's typed commands (create configmap, ...) send it
            raise api_error(415, "UnsupportedMediaType", "protobuf is not emulated; use application/json")
        name = None if request.name is None else str(request.name)
        return RequestInfo(verb, plural, request.subresource, request.namespace, name, agent)

    def _forget(self, request: kmock.Request) -> None:
        """kmock keeps every request and scans them all to route the next one (a quadratic slow-down in long runs):
        once routed, a request is dropped from kmock's lists; `api_calls` keeps what tests assert on."""
        for requests in (self._requests, *(payload._requests for payload in self._payloads)):
            for index in range(len(requests) - 1, -1, -1):
                if requests[index] is request:
                    del requests[index]
                    break

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if not isinstance(exc, kmock.KubernetesError):
            return await super()._render_error(exc)  # a bug in the emulator: 500 with the traceback
        reason = "NotFound" if isinstance(exc, kmock.KubernetesNotFoundError) else exc.reason  # kmock's own 404s
        details = exc.details or {}
        retry = details.get("retryAfterSeconds")
        return aiohttp.web.json_response({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": exc.status, "reason": reason, "message": exc.message, "details": details,
        }, status=exc.status, headers={"Retry-After": str(retry)} if retry else None)

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
        since, initial = self._watch_start(request, matches)
        yield b""  # send the headers now: a watch with nothing to report yet is still an open stream
        if since < self._compacted_rv:
            yield self._expired(since)
            return
        for event in initial:
            yield event
        timeout = request.params.get("timeoutSeconds")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + float(timeout)
        plural, opened = str(request.resource.plural), self.faults.drop_generation
        info = self._record_free_info(request)
        while not self._closing:
            wakeup = self._changed  # taken before draining: a change made while yielding sets it
            if since < self._compacted_rv:  # this watch fell behind the history the server keeps
                yield self._expired(since)
                return
            position = bisect.bisect_right(self._changes, since, key=lambda change: change.rv)
            for change in self._changes[position:]:
                since = change.rv
                if (event := self._event_for(change, request.resource, matches)) is not None:
                    yield event
            if self.faults.should_drop(plural, opened, info):
                return
            try:
                await asyncio.wait_for(wakeup.wait(), None if deadline is None else deadline - loop.time())
            except TimeoutError:
                return

    @staticmethod
    def _record_free_info(request: kmock.Request) -> RequestInfo:
        name = None if request.name is None else str(request.name)
        return RequestInfo("watch", str(request.resource.plural), request.subresource, request.namespace, name,
                           request.headers.get("User-Agent", ""))

    def _expired(self, since: int) -> Body:
        """The in-stream error a real server sends when a watch's resourceVersion is older than its history."""
        message = f"too old resource version: {since} ({self._compacted_rv + 1})"
        return {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                                            "message": message, "reason": "Expired", "code": 410}}

    async def _expired_watch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """A watch answered, as an injected fault, as if its resourceVersion had been compacted away."""
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        since = request.params.get("resourceVersion", "")
        await response.write(json.dumps(self._expired(int(since) if since.isdigit() else 0)).encode() + b"\n")
        await response.write_eof()
        return response

    def _watch_start(self, request: kmock.Request, matches: Callable[[Body], bool]) -> tuple[int, list[Body]]:
        """The resourceVersion a watch continues after, and the synthetic ADDED events it begins with."""
        since = request.params.get("resourceVersion", "")
        if since not in ("", "0"):
            if not since.isdigit():
                raise api_error(400, "BadRequest", f"invalid resourceVersion: {since!r}")
            return int(since), []
        initial = [{"type": "ADDED", "object": body} for body in self._select(request, matches)]
        if request.params.get("sendInitialEvents") == "true":
            initial.append({"type": "BOOKMARK", "object": {
                "apiVersion": self._api_version(request.resource), "kind": self._info(request.resource).kind,
                "metadata": {"resourceVersion": str(self._rv), "annotations": {"k8s.io/initial-events-end": "true"}},
            }})
        return self._rv, initial

    def _follow_compactions(self) -> None:
        """Apply the compactions a test asked for (from any thread) since the last request."""
        if self.faults.compactions != self._compactions_applied:
            self._compactions_applied = self.faults.compactions
            self._compact(self._rv)

    def _compact(self, rv: int) -> None:
        """Forget the changes up to `rv`: watches that would have to replay them get 410 Expired."""
        position = bisect.bisect_right(self._changes, rv, key=lambda change: change.rv)
        del self._changes[:position]
        self._compacted_rv = max(self._compacted_rv, rv)

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

    def _serve_eviction(self, request: kmock.Request) -> kmock.Response:
        pod = self._existing(request)
        grace = (self._body(request).get("deleteOptions") or {}).get("gracePeriodSeconds")
        self.evict(pod["metadata"]["namespace"], pod["metadata"]["name"], grace=grace)
        return kmock.Response(status=201, payload={"apiVersion": "v1", "kind": "Status", "metadata": {},
                                                   "status": "Success", "code": 201})

    def _serve_create(self, request: kmock.Request) -> kmock.Response:
        if request.subresource:
            raise api_error(405, "MethodNotAllowed", f"create is not emulated for {request.subresource}")
        created = self._create(request.resource, request.namespace, self._body(request))
        return kmock.Response(status=201, payload=created)

    def evict(self, namespace: str, name: str, reason: str = "EvictionByEvictionAPI", grace: int | None = None) -> None:
        """Evict a pod as the Eviction API (or, with reason PreemptionByScheduler, the scheduler) does: mark it with
        the DisruptionTarget condition, then delete it. Call it in the server's loop (`EmulatorServer.call`)."""
        key = (PODS, namespace, name)
        pod = self._get(key)
        if pod is None:
            raise api_error(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods")
        messages = {"EvictionByEvictionAPI": "Eviction API: evicting",
                    "PreemptionByScheduler": "Kubernetes Scheduler: preempting",
                    "TerminationByKubelet": "The node was low on resource: memory."}
        condition = {"type": "DisruptionTarget", "status": "True", "reason": reason,
                     "message": messages.get(reason, reason), "lastTransitionTime": now()}
        marked = copy.deepcopy(pod)
        status = marked.setdefault("status", {})
        status["conditions"] = [c for c in status.get("conditions") or [] if c["type"] != "DisruptionTarget"]
        status["conditions"].append(condition)
        self._commit(key, "MODIFIED", marked, pod)
        self._delete(key, marked, "Background", grace)

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
        grace = request.params.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        return self._delete(self._key(request.resource, body), body, self._propagation(request, options),
                            None if grace is None else int(grace))

    def _serve_delete_collection(self, request: kmock.Request) -> Body:
        options = request.data if isinstance(request.data, dict) else {}
        policy = self._propagation(request, options)
        return self._list_of(request.resource, [self._delete(self._key(request.resource, body), body, policy)
                                                for body in self._select(request)])

    def _create(self, resource: kmock.resource, namespace: str | None, body: Body) -> Body:
        info = self._info(resource)
        if resource not in self._schemas:
            body = without_nulls(body)
        meta = body.setdefault("metadata", {})
        namespace = self._namespace_for(info.namespaced, namespace, meta)
        if not meta.get("name") and not meta.get("generateName"):
            raise self._invalid(resource, body, ["metadata.name: Required value: name or generateName is required"])
        if not meta.get("name"):
            meta["name"] = meta["generateName"][:58] + "".join(self._names.choices(NAME_SUFFIX, k=5))
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
        uid = (new.get("metadata") or {}).get("uid")
        if uid and uid != old["metadata"]["uid"]:  # a write meant for an earlier object of the same name
            raise self._conflict(request.resource, old, f"Precondition failed: UID in precondition: {uid}, "
                                 f"UID in object meta: {old['metadata']['uid']}")
        new = self._admitted(request.resource, self._keep_server_fields(request, copy.deepcopy(new), old), old,
                             decode=request.subresource != "status")
        if request.resource == JOBS and new["spec"]["template"] != old["spec"]["template"] \
                and not old["spec"].get("suspend"):  # a suspended Job's template may change: that is how Kueue works
            raise self._invalid(JOBS, old, ["spec.template: Invalid value: field is immutable"])
        if new == old:
            return old  # a write that changes nothing leaves the resourceVersion alone and wakes no watch
        key = self._key(request.resource, old)
        self._commit(key, "MODIFIED", new, old)
        if new["metadata"].get("deletionTimestamp") and old["metadata"].get("finalizers") \
                and not new["metadata"].get("finalizers"):  # the last finalizer released it
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

    def _admitted(self, resource: kmock.resource, body: Body, old: Body | None = None, decode: bool = True) -> Body:
        """Apply the CRD schema (pruning, defaults) and every validation; 422 Invalid names each failing field, 400
        BadRequest says the body cannot be decoded (`decode`: a create or a write of more than the status)."""
        body["apiVersion"], body["kind"] = self._api_version(resource), self._info(resource).kind
        if resource not in self._schemas:
            body = without_nulls(body)
        if resource == SECRETS:
            encode_string_data(body)
        if undecodable := metadata_decode_error(body):
            kind = self._info(resource).kind
            raise api_error(400, "BadRequest", f'{kind} in version "{resource.version}" cannot be handled as a '
                            f"{kind}: {undecodable}")
        errors = metadata_errors(body) + (job_errors(body) if resource == JOBS else [])
        if resource in (JOBS, PODS):
            errors += self._pod_spec_errors(resource, body, decode)
        if resource in self._schemas:
            schema, validator, rules = self._schemas[resource]
            content = prune_and_default({k: v for k, v in body.items() if k not in ENVELOPE}, schema)
            body = {**{k: body[k] for k in ENVELOPE}, **content}
            errors += sorted(schema_error(error) for error in validator.iter_errors(body))
            errors += [] if errors else rules.errors(body, old)
        if errors:
            raise self._invalid(resource, body, errors)
        if resource == CRDS:
            self._register_crd(body)
        return body

    def _pod_spec_errors(self, resource: kmock.resource, body: Body, decode: bool) -> list[str]:
        """A Pod's or a Job template's pod spec as the server decodes and validates it."""
        path = "spec" if resource == PODS else "spec.template.spec"
        pod_spec = body.get("spec") or {}
        if resource == JOBS:
            pod_spec = (pod_spec.get("template") or {}).get("spec") or {}
        kind = self._info(resource).kind
        try:
            if decode:
                pod_validation.decode(body)
                pod_validation.decode_pod_spec(pod_spec)
            return pod_validation.pod_spec_errors(pod_spec, path)
        except pod_validation.Undecodable as err:
            raise api_error(400, "BadRequest", f'{kind} in version "{resource.version}" cannot be handled as a '
                            f"{kind}: {err}") from None

    def _delete(self, key: Key, body: Body, policy: str, grace: int | None = None) -> Body:
        """Delete now; or, while finalizers remain or a running pod shuts down gracefully, mark the object deleted
        and let its finalizers' owners (or the kubelet) release it."""
        meta = body["metadata"]
        if meta.get("deletionTimestamp") and grace == 0 and key[0] == PODS and not meta.get("finalizers"):
            return self._remove(key, body, policy)  # the kubelet confirms the pod has stopped
        if meta.get("deletionTimestamp"):
            return body
        if key[0] == PODS and self._terminates_gracefully(body, grace):
            return self._mark_terminating(key, body, policy, grace)
        if not meta.get("finalizers"):
            return self._remove(key, body, policy)
        self._deletion_policies[meta["uid"]] = policy
        marked = copy.deepcopy(body)
        marked["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
        return self._commit(key, "MODIFIED", marked, body)

    def _terminates_gracefully(self, pod: Body, grace: int | None) -> bool:
        """A pod bound to a node and still running is only marked: its kubelet stops it, then removes it."""
        running = (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        return self.faults.graceful_deletion and bool(pod["spec"].get("nodeName")) and running and grace != 0

    def _mark_terminating(self, key: Key, pod: Body, policy: str, grace: int | None) -> Body:
        seconds = pod["spec"].get("terminationGracePeriodSeconds", 30) if grace is None else grace
        marked = copy.deepcopy(pod)
        deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        marked["metadata"].update(deletionTimestamp=deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                  deletionGracePeriodSeconds=seconds)
        self._deletion_policies[pod["metadata"]["uid"]] = policy
        uid = pod["metadata"]["uid"]
        asyncio.get_running_loop().call_later(seconds, self._grace_expired, key, uid)
        return self._commit(key, "MODIFIED", marked, pod)

    def _grace_expired(self, key: Key, uid: str) -> None:
        """A pod whose kubelet never confirmed its end is removed when its grace period is over."""
        body = self._get(key)
        if body is not None and body["metadata"]["uid"] == uid and not body["metadata"].get("finalizers"):
            self._remove(key, body, self._deletion_policies.pop(uid, "Background"))

    def _remove(self, key: Key, body: Body, policy: str) -> Body:
        uid = body["metadata"]["uid"]
        if policy == "Foreground":  # dependents first (the TTL controller deletes Jobs this way)
            self._collect_dependents(key[1], uid, "Background")
        self._commit(key, "DELETED", copy.deepcopy(body), body)
        if policy != "Foreground" and self.faults.gc_delay > 0:
            asyncio.get_running_loop().call_later(self.faults.gc_delay, self._collect_dependents, key[1], uid, policy)
        elif policy != "Foreground":
            self._collect_dependents(key[1], uid, policy)
        return body

    def _collect_dependents(self, namespace: str | None, owner_uid: str, policy: str) -> None:
        """The garbage collector: dependents left without a live owner go too, unless the owner orphaned them."""
        dependents = [key for key, body in self._live() if namespace in (None, key[1])
                      and any(ref.get("uid") == owner_uid for ref in body["metadata"].get("ownerReferences") or [])]
        for key in dependents:
            body = self._get(key)  # fresh: collecting an earlier dependent may have changed or removed this one
            refs = (body or {}).get("metadata", {}).get("ownerReferences") or []
            if body is None or not any(ref["uid"] == owner_uid for ref in refs):
                continue
            others = [ref for ref in refs if ref["uid"] != owner_uid]
            live_uids = {live["metadata"]["uid"] for _, live in self._live()} if others else set()
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
                    validator = jsonschema.Draft4Validator(to_json_schema(schema))
                    self._schemas[resource] = (schema, validator, CelRules(schema))
        except (KeyError, TypeError) as exc:
            raise self._invalid(CRDS, crd, [f"spec: Required value: {exc}"]) from exc
        except RuleCompileError as exc:
            raise self._invalid(CRDS, crd, [f"spec.validation.openAPIV3Schema.{exc}"]) from exc
        conditions = [{"type": kind, "status": "True", "lastTransitionTime": now(), "reason": kind}
                      for kind in ("NamesAccepted", "Established")]
        stored = [version["name"] for version in spec["versions"] if version.get("storage")]
        crd["status"] = {"acceptedNames": names, "storedVersions": stored, "conditions": conditions}

    def _commit(self, key: Key, event: str, body: Body, old: Body | None = None) -> Body:
        """Store a new version with the next resourceVersion and tell the watches."""
        self._rv += 1
        body["metadata"]["resourceVersion"] = str(self._rv)
        # Only the latest version is kept (kmock would keep every one): long runs stay flat in memory.
        if event == "DELETED":
            del self.objects[key]
            self._index[key[0]].pop(key, None)
        else:
            self.objects[key] = body
            self._index.setdefault(key[0], {})[key] = None  # lists scan one resource, not every object
        self._changes.append(Change(self._rv, key[0], event, copy.deepcopy(body), old))
        if (extract := self.journaled.get(str(key[0].plural))) is not None:
            self.journal.append(JournalEntry(time.monotonic(), event, str(key[0].plural), key[1], key[2],
                                             extract(body)))
        limit = self.faults.history_limit
        if limit is not None and len(self._changes) > limit + limit // 10:  # trimmed in batches, as etcd compacts
            self._compact(self._changes[-limit - 1].rv)
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
        if key not in self.objects:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _live(self) -> Iterator[tuple[Key, Body]]:
        for key, obj in list(self.objects.items()):
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
        keys = list(self._index.get(request.resource, {}))
        return [copy.deepcopy(body) for key in keys if matches(body := self.objects[key].raw)]

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
        return api_error(422, "Invalid", f"{qualified_kind} {quoted(name)} is invalid: {listed}",
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
    async def _start() -> tuple[KubeEmulator, aiohttp.test_utils.RawTestServer]:
        emulator = KubeEmulator()
        await emulator.__aenter__()
        loop = asyncio.get_running_loop()
        # Faults switched on from a test's thread wake the watches in the server's own loop.
        emulator.faults.notify = lambda: loop.call_soon_threadsafe(emulator._wake_watchers)
        # aiohttp's server as kmock.Server runs it, without kmock's process-wide DNS interception for in-process
        # clients: it cannot be stacked by emulators started and stopped in other threads (parallel chaos runs).
        server = aiohttp.test_utils.RawTestServer(emulator, host="127.0.0.1")
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
