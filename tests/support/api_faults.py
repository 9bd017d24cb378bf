"""The faults of a real API server, switched on by a test: refused requests, expired and dropped watches, a slow
garbage collector.

`KubeEmulator.faults` (tests/support/kube_emulator.py) is an `ApiFaults`. A test adds rules while the cluster runs;
each request the emulator serves is checked against them before it is handled:

    faults = kube.faults
    faults.seed(7)
    faults.fail(500, verb="patch", resource="llmselections", probability=0.2, user_agent="lensllm-operator")
    faults.fail(409, verb="patch", subresource="status", calls={1, 3})   # the 1st and 3rd matching calls
    faults.fail(504, verb="create", resource="jobs", times=1, commit=True)  # written, but the answer is lost
    faults.fail(410, verb="watch", resource="jobs", times=1)             # the watch's resourceVersion expired
    faults.fail(403, verb="create", resource="pods", subresource="")      # a ResourceQuota refuses every new pod
    faults.compact()                                                      # forget the watch history up to now
    faults.drop_watches(resource="jobs")                                  # end the open Job watches
    faults.gc_delay = 2.0                                                 # dependents go 2 s after their owner
    faults.graceful_deletion = True                                       # pods linger until the kubelet stops them

Every fault that was injected is recorded in `faults.injected` (what, when, which request), so a test can report
how many it injected and a failure names the fault behind it. The random draws come from one seeded generator.
"""

import random
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import NamedTuple

# Codes a rule may inject, and the Status reason and message a real API server answers with.
REASONS = {
    403: ("Forbidden", "exceeded quota: gpu, requested: nvidia.com/gpu=1, used: nvidia.com/gpu=8, limited: nvidia.com/gpu=8"),
    409: ("Conflict", "the object has been modified; please apply your changes to the latest version and try again"),
    410: ("Expired", "too old resource version"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
    500: ("InternalError", "an error on the server (\"unexpected EOF\") has prevented the request from succeeding"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted, but may still be processing "
                     "the request"),
}
RETRY_AFTER_SECONDS = 1  # what a real server's priority-and-fairness filter sends with a 429


class RequestInfo(NamedTuple):
    """The parts of a request a fault rule matches on."""

    verb: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    user_agent: str


class Injected(NamedTuple):
    """One fault the emulator injected: `kind` is the HTTP code, `drop` (a watch ended) or `compact`."""

    at: float  # time.monotonic()
    kind: str
    request: RequestInfo | None


@dataclass
class FaultRule:
    """Answer matching requests with `code` instead of serving them.

    Every field left None matches anything. `calls` is a schedule: the 1-based indexes, among the requests this rule
    matched, that fail (other matches pass). Otherwise each match fails with `probability`. At most `times` failures
    in all. With `commit` the request is served first and only its answer is replaced: a write that happened although
    the client was told it failed (a timeout after the write reached storage).
    """

    code: int
    verb: str | None = None
    resource: str | None = None
    subresource: str | None = None  # "" matches the main endpoint only
    namespace: str | None = None
    name: str | None = None
    user_agent: str | tuple[str, ...] | None = None  # prefix(es) of the User-Agent, e.g. ("kopf/", "lensllm-operator/")
    probability: float = 1.0
    calls: Collection[int] | None = None
    times: int | None = None
    commit: bool = False
    matched: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)

    def matches(self, request: RequestInfo) -> bool:
        wanted = (self.verb, self.resource, self.namespace, self.name)
        actual = (request.verb, request.resource, request.namespace, request.name)
        if any(want is not None and want != got for want, got in zip(wanted, actual, strict=True)):
            return False
        if self.subresource is not None and (request.subresource or "") != self.subresource:
            return False
        return self.user_agent is None or request.user_agent.startswith(self.user_agent)


class ApiFaults:
    """The switchable faults of one emulated API server; a test thread and the server's loop both use it."""

    def __init__(self, seed: int = 0) -> None:
        self.rules: list[FaultRule] = []
        self.injected: list[Injected] = []
        self.gc_delay = 0.0  # seconds between an owner's deletion and its dependents' collection
        self.graceful_deletion = False  # pods on a node are marked deleted and removed once the kubelet stopped them
        self.history_limit: int | None = 20_000  # changes a watch can resume from, like the watch cache's window
        self._drops: list[tuple[str | None, int]] = []  # (resource or None for all, generation) of drop requests
        self._drop_generation = 0
        self._compactions = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.notify: Callable[[], None] = lambda: None  # set by the emulator: wakes its watches from any thread

    def seed(self, seed: int) -> None:
        """Restart the random draws of `probability` rules from `seed`."""
        with self._lock:
            self._random = random.Random(seed)

    def fail(self, code: int, **match: object) -> FaultRule:
        """Add a rule (see `FaultRule` for the fields) and return it; `rule.failed` counts its injections."""
        if code not in REASONS:
            raise ValueError(f"cannot inject {code}: choose one of {sorted(REASONS)}")
        if code == 410 and match.get("verb") != "watch":
            raise ValueError("410 Expired is a watch's answer: give verb='watch'")
        rule = FaultRule(code, **match)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule; what was injected stays recorded."""
        with self._lock:
            self.rules.clear()

    def compact(self, drop_watches: bool = True) -> None:
        """Forget the watch history up to now: a watch resuming from an older resourceVersion gets 410 Expired.

        With `drop_watches` the open watches end too, so their clients come back with a resourceVersion that is now
        too old and must list again (what kopf's "Restarting the watch-stream" handles)."""
        with self._lock:
            self._compactions += 1
            self.injected.append(Injected(time.monotonic(), "compact", None))
        if drop_watches:
            self.drop_watches()
        else:
            self.notify()

    def drop_watches(self, resource: str | None = None) -> None:
        """End every open watch stream (of one resource plural, or all), as a restarting API server or a load
        balancer does; clients must reconnect and resume from the last resourceVersion they saw."""
        with self._lock:
            self._drop_generation += 1
            self._drops.append((resource, self._drop_generation))
        self.notify()

    def counts(self) -> dict[str, int]:
        """How many faults of each kind were injected so far."""
        with self._lock:
            counts: dict[str, int] = {}
            for fault in self.injected:
                counts[fault.kind] = counts.get(fault.kind, 0) + 1
            return counts

    # Used by the emulator.

    def refusal(self, request: RequestInfo) -> FaultRule | None:
        """The rule that refuses this request, if any (and record the injection)."""
        with self._lock:
            for rule in self.rules:
                if not rule.matches(request) or (rule.times is not None and rule.failed >= rule.times):
                    continue
                rule.matched += 1
                scheduled = rule.calls is not None and rule.matched in rule.calls
                drawn = rule.calls is None and (rule.probability >= 1 or self._random.random() < rule.probability)
                if scheduled or drawn:
                    rule.failed += 1
                    self.injected.append(Injected(time.monotonic(), str(rule.code), request))
                    return rule
        return None

    @property
    def compactions(self) -> int:
        return self._compactions

    @property
    def drop_generation(self) -> int:
        return self._drop_generation

    def should_drop(self, resource: str, since_generation: int, request: RequestInfo) -> bool:
        """Whether a watch opened at `since_generation` must end now (and record it once)."""
        with self._lock:
            if not any(gen > since_generation and target in (None, resource) for target, gen in self._drops):
                return False
            self.injected.append(Injected(time.monotonic(), "drop", request))
            return True
