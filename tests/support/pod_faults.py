"""What goes wrong with pods on a real cluster, switched on by a test: the kubelet (tests/support/kubelet.py) asks
`PodFaults` about every pod it is given.

    faults = kubelet.faults
    faults.seed(3)
    faults.add("unschedulable", job="sel-a-r0")                 # Pending: PodScheduled False, Unschedulable
    faults.add("image-pull", image="registry.example/runner:*") # Pending: ErrImagePull, then ImagePullBackOff
    faults.add("oom-kill", labels={"lensllm.io/candidate": "a"}, after=0.5, times=1)  # OOMKilled, exit 137
    faults.add("evict", after=1.0, probability=0.3)             # through the Eviction API: DisruptionTarget
    faults.add("unbound-claim", claim="hf-cache")               # the volume controller never binds this PVC
    faults.clear("unschedulable")                               # the scheduler finds room: pending pods start

A pod matches a rule when every given field matches (`job`, `image` and `claim` take shell patterns). `times` bounds
how many pods a rule hits (None: every matching pod), `probability` draws from one seeded generator. Faults derived
from the pod spec need no rule: a missing Secret or key (CreateContainerConfigError), a PersistentVolumeClaim that
does not exist or is not bound (Unschedulable with the scheduler's message). `faults.injected` records every hit.
"""

import fnmatch
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

Body = dict[str, Any]
Kind = Literal["unschedulable", "image-pull", "oom-kill", "evict", "unbound-claim"]
KINDS: tuple[Kind, ...] = ("unschedulable", "image-pull", "oom-kill", "evict", "unbound-claim")
UNSCHEDULABLE = ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
                 "3 No preemption victims found for incoming pod.")
UNBOUND_CLAIM = ("0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/3 nodes "
                 "are available: 3 Preemption is not helpful for scheduling.")


class PodHit(NamedTuple):
    """One fault the kubelet injected into a pod."""

    at: float  # time.monotonic()
    kind: str
    namespace: str
    pod: str
    job: str


@dataclass
class PodFault:
    """One switched-on fault; fields left None match every pod."""

    kind: Kind
    job: str | None = None  # shell pattern on the pod's job-name label
    labels: dict[str, str] | None = None  # labels the pod must carry
    image: str | None = None  # shell pattern on the first container's image
    claim: str | None = None  # shell pattern on a PersistentVolumeClaim name (unbound-claim)
    message: str | None = None  # the scheduler's message (unschedulable)
    after: float = 0.0  # seconds after the container starts (oom-kill, evict)
    probability: float = 1.0
    times: int | None = None
    hits: int = field(default=0, init=False)
    seen: set[str] = field(default_factory=set, init=False)  # pods already drawn for: each is drawn once
    hit_pods: set[str] = field(default_factory=set, init=False)

    def matches(self, pod: Body) -> bool:
        labels = pod["metadata"].get("labels") or {}
        image = pod["spec"]["containers"][0].get("image", "")
        return ((self.job is None or fnmatch.fnmatchcase(labels.get("job-name", ""), self.job))
                and all(labels.get(key) == value for key, value in (self.labels or {}).items())
                and (self.image is None or fnmatch.fnmatchcase(image, self.image)))


class PodFaults:
    """The switched-on pod faults of one emulated kubelet; the test's thread and the kubelet's loop both use it."""

    def __init__(self, seed: int = 0) -> None:
        self.rules: list[PodFault] = []
        self.injected: list[PodHit] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def seed(self, seed: int) -> None:
        with self._lock:
            self._random = random.Random(seed)

    def add(self, kind: Kind, **match: Any) -> PodFault:
        """Switch a fault on (see `PodFault` for the fields) and return it."""
        if kind not in KINDS:
            raise ValueError(f"unknown pod fault {kind!r}: choose one of {', '.join(KINDS)}")
        rule = PodFault(kind, **match)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self, kind: Kind | None = None) -> None:
        """Switch off every fault (of one kind): pods waiting on it go on, as when the cluster recovers."""
        with self._lock:
            self.rules = [rule for rule in self.rules if kind is not None and rule.kind != kind]

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for hit in self.injected:
                counts[hit.kind] = counts.get(hit.kind, 0) + 1
            return counts

    # Used by the kubelet.

    def hit(self, kind: Kind, pod: Body) -> PodFault | None:
        """The rule of this kind that hits this pod, drawn once per pod and rule; the hit is recorded."""
        name = pod["metadata"]["name"]
        with self._lock:
            for rule in self.rules:
                if rule.kind != kind or not rule.matches(pod):
                    continue
                if name in rule.hit_pods:
                    return rule  # asked again while the pod still waits on it
                if name in rule.seen:
                    continue
                rule.seen.add(name)
                if rule.times is not None and rule.hits >= rule.times:
                    continue
                if rule.probability < 1 and self._random.random() >= rule.probability:
                    continue
                rule.hits += 1
                rule.hit_pods.add(name)
                job = (pod["metadata"].get("labels") or {}).get("job-name", "")
                self.injected.append(PodHit(time.monotonic(), kind, pod["metadata"]["namespace"], name, job))
                return rule
        return None

    def holds_claim(self, claim: str) -> bool:
        """Whether an unbound-claim fault keeps this PersistentVolumeClaim from being bound."""
        with self._lock:
            return any(rule.kind == "unbound-claim" and fnmatch.fnmatchcase(claim, rule.claim or "*")
                       for rule in self.rules)
