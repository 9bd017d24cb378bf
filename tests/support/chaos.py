"""Chaos runs: one selection of three stand-in candidates through the real operator while a seeded schedule of
faults hits it, and the invariants every run must keep.

Used by tests/reliability/test_chaos.py. A `Schedule` is drawn from a seed: API refusals (5xx, 429, 409 on the
operator's calls, 410 on its watches) with small probabilities for the whole run, and timed disruptions
(operator SIGKILL and restart, pod evictions, Job deletions, watch-history compaction, dropped watches) in the
first seconds, and for a race that settles one more while the settling round's trials run. `ChaosRun` applies it
and `violations()` checks, after the selection ended or the bound passed:
- the selection reached a terminal phase within the bound;
- no Job was created twice for the same trial attempt (two live at once, or a re-creation not preceded by the
  disappearance of the earlier one);
- no point was measured twice (the stand-in's ledger, tests/support/stand_in_trial.py);
- no point was lost (every candidate Succeeded with every subset size);
- the ranking equals the fault-free run's;
- every model fine-tuned on the target size (a settling round's) is named in the status and lies on the claim.

A run's strategy is a fixed budget, a race, or a race that settles: its stand-in trials read their losses from three
rows of a LensBench table (`settling_table`) on which the laws still disagree when the ladder runs out, so the
faults also hit the round that fine-tunes the laws' leaders on the target size. Timed disruptions reached that round
in 2 of 10 runs, so a settling schedule draws one disruption of its own, anchored to the moment the first pod of
that round runs (its Jobs are the ones told to save a model: `--model-dir`), which a run must carry out.
"""

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from api_faults import ApiFaults
from cluster import OPERATOR_AGENTS
from kube_emulator import JournalEntry
from stand_in_trial import read_ledger

from lensllm.curves_io import read_curves
from lensllm.science.curves import Curves

SIZES = [16, 32, 64, 128]
CANDIDATES = ("model-a", "model-b", "model-c")
STRATEGIES = ("fixed", "race", "settle")
# Seconds after the selection was applied within which a schedule's disruptions fall. The settling race's round on
# the target size starts 7 s in without faults (the race ends after 6 s) and later under them (its runs took 10 to
# 42 s), so its disruptions spread further to reach that round too.
HORIZONS = {"fixed": 8.0, "race": 8.0, "settle": 12.0}
# The race settings of tests/operator/test_operator_race.py. On the stand-in curves of these candidates model-c is
# eliminated after round 0 and model-a after round 2, so faults hit a run across three rounds.
RACE_SIZES = [*SIZES, 256, 512]
RACE = {"epsilon": 0.05, "delta": 0.01, "initialSizes": len(SIZES)}
CANDIDATE_LABEL = "lensllm.io/candidate"
ROUND_LABEL = "lensllm.io/round"
# (code, verb, resource, subresource): the refusals a run draws from; every call of the operator may be hit.
REFUSALS = [
    (500, "patch", "llmselections", "status"), (409, "patch", "llmselections", "status"),
    (503, "get", "llmselections", None), (500, "create", "jobs", None), (504, "create", "jobs", None),
    (409, "create", "jobs", None), (503, "list", "jobs", None), (500, "list", "pods", None),
    (429, "patch", "llmselections", None), (500, "create", "events", None), (410, "watch", "jobs", None),
    (410, "watch", "llmselections", None), (503, "watch", "jobs", None),
]
DISRUPTIONS = ("kill-operator", "evict", "delete-job", "compact", "drop-watches")
# A settling trial's pod runs about 1.5 s (the interpreter's start, one 0.25 s size, the model saved): the anchored
# disruption falls within that after the pod is first seen running.
SETTLING_SPREAD = 1.0
SETTLING_FLAG = "--model-dir"
SETTLING_POLL = 0.05  # seconds between looks for the settling round's pods
# The eighth LensBench draw's docstring task (data/lensbench-seed7), three of its models renamed to the candidates:
# with the default race settings the cipher model goes in round 1 and the two left are the laws' disagreeing
# leaders when the ladder runs out, so the race settles on the target size (a test replays it).
SETTLING_SOURCE = Path(__file__).resolve().parents[2] / "data" / "lensbench-seed7" / "docstring.csv"
SETTLING_ROWS = {"gpt2-s-cipher-4k": "model-a", "gpt2-m-fortunes-4k": "model-b", "llama-s-mix-1k": "model-c"}


@dataclass(frozen=True)
class Refusal:
    code: int
    verb: str
    resource: str
    subresource: str | None
    probability: float
    commit: bool


@dataclass(frozen=True)
class Disruption:
    at: float  # seconds after the selection was applied, or (anchored) after the settling round's first pod ran
    kind: str
    pick: float  # which pod or Job, as a fraction of the sorted candidates for it
    pause: float  # kill-operator: seconds until the restart


@dataclass(frozen=True)
class Schedule:
    """Everything a run does to the cluster, drawn from one seed."""

    seed: int
    parallelism: int
    graceful_deletion: bool
    gc_delay: float
    refusals: tuple[Refusal, ...]
    disruptions: tuple[Disruption, ...]
    strategy: str
    settling: Disruption | None = None  # anchored to the settling round (the settle strategy only)

    @classmethod
    def draw(cls, seed: int) -> "Schedule":
        rng = random.Random(seed)
        refusals = tuple(Refusal(code, verb, resource, sub, round(rng.uniform(0.03, 0.2), 3), rng.random() < 0.5)
                         for code, verb, resource, sub in rng.sample(REFUSALS, rng.randint(1, 3)))
        kinds = [rng.choice(DISRUPTIONS) for _ in range(rng.randint(2, 5))]
        moments = [(rng.random(), kind, rng.random(), round(rng.uniform(0, 1.5), 2)) for kind in kinds]
        # Drawn last, so the draws above stay what they were for a seed before races joined the suite.
        parallelism, graceful, gc_delay = rng.randint(1, 3), rng.random() < 0.5, rng.choice((0.0, 0.5))
        strategy = rng.choice(STRATEGIES)
        horizon = HORIZONS[strategy]
        disruptions = tuple(sorted((Disruption(round(0.5 + (horizon - 0.5) * moment, 2), kind, pick, pause)
                                    for moment, kind, pick, pause in moments), key=lambda d: d.at))
        settling = None
        if strategy == "settle":  # drawn after everything else, so the other strategies' schedules stay as they were
            settling = Disruption(round(SETTLING_SPREAD * rng.random(), 2), rng.choice(DISRUPTIONS), rng.random(),
                                  round(rng.uniform(0, 1.5), 2))
        return cls(seed, parallelism, graceful, gc_delay, refusals, disruptions, strategy, settling)


def settling_table(path: Path) -> Curves:
    """Write the settling strategy's table (SETTLING_ROWS of SETTLING_SOURCE, renamed) to `path`, and read it back."""
    header, *rows = SETTLING_SOURCE.read_text().splitlines()
    kept = [SETTLING_ROWS[name] + "," + rest for name, rest in (row.split(",", 1) for row in rows)
            if name in SETTLING_ROWS]
    path.write_text("\n".join([header, *kept]) + "\n")
    return read_curves(path)


def selection_manifest(name: str, parallelism: int, claim: str, strategy: str,
                       settling: Curves | None = None) -> dict[str, Any]:
    """Three stand-in candidates and a persistent work volume a trial resumes from; a fixed budget of four sizes,
    or a race that starts with those four and adds one size a round (uncapped: the rounds never hit a cap), or the
    default race over the `settling` table's ladder and target."""
    spec: dict[str, Any] = {
        "candidates": [{"name": model, "model": f"/models/{model}"} for model in CANDIDATES],
        "dataset": {"source": "/data/task", "inputField": "input", "targetField": "target", "maxTestExamples": 32},
        "budget": {"subsetSizes": SIZES, "targetSize": 4096},
        "ntk": {"probeSize": 8}, "parallelism": parallelism, "strategy": strategy,
        "workVolume": {"claimName": claim},
    }
    if strategy == "race":
        spec["budget"] = {"subsetSizes": RACE_SIZES, "targetSize": 8192}
        spec["race"] = RACE
    elif strategy == "settle":
        assert settling is not None, "a settling race runs on its table"
        spec["strategy"] = "race"
        spec["budget"] = {"subsetSizes": [int(size) for size in settling.sizes[:-1]],
                          "targetSize": int(settling.sizes[-1])}
    return {"apiVersion": "lensllm.io/v1alpha1", "kind": "LLMSelection", "metadata": {"name": name}, "spec": spec}


@dataclass
class Outcome:
    """What a run left behind, and what went wrong with it."""

    seed: int | None
    strategy: str
    phase: str | None
    seconds: float
    verdict: "Verdict"
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    operator_tracebacks: int = 0  # exceptions the operator logged (kopf retries handlers that raised)
    log_tail: list[str] = field(default_factory=list)  # the operator's last words, kept for a run that broke

    def figures(self) -> dict[str, Any]:
        return {"seed": self.seed, "strategy": self.strategy, "phase": self.phase, "seconds": round(self.seconds, 2),
                "faults": dict(self.faults), "violations": self.violations,
                "operator_tracebacks": self.operator_tracebacks, "log_tail": self.log_tail}


class ChaosDriver:
    """Carries out a schedule's disruptions while the test waits for the selection: the timed ones in one thread,
    the one anchored to the settling round in another."""

    def __init__(self, schedule: Schedule, api: kubernetes.client.ApiClient, namespace: str, faults: ApiFaults,
                 restart_operator: Callable[[float], None]) -> None:
        self.done: Counter[str] = Counter()
        self.deleted_jobs: list[str] = []
        self._schedule, self._namespace, self._faults = schedule, namespace, faults
        self._core, self._batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
        self._restart = restart_operator
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name="chaos", daemon=True)]
        if schedule.settling is not None:
            self._threads.append(threading.Thread(target=self._run_settling, name="chaos-settling", daemon=True))
        self._counting = threading.Lock()
        self.errors: list[BaseException] = []

    def start(self) -> None:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        try:
            for disruption in self._schedule.disruptions:
                if self._stop.wait(max(0.0, self._started + disruption.at - time.monotonic())):
                    return
                if self._apply(disruption):
                    self._count(disruption.kind)
            self._stop.wait()  # an operator this thread restarted dies with it (cluster.die_with_parent)
        except BaseException as err:  # noqa: BLE001 - reported by the test, never lost in a thread
            self.errors.append(err)

    def _run_settling(self) -> None:
        """The disruption anchored to the settling round, in a thread of its own: a timed one blocks its thread
        for seconds (an operator's restart), long enough for the round to pass unseen."""
        anchored = self._schedule.settling
        assert anchored is not None
        try:
            while not self._running_pods(settling=True):
                if self._stop.wait(SETTLING_POLL):
                    return
            if self._stop.wait(anchored.at):
                return
            # An eviction or Job deletion that finds the round's pods gone waits for the next one that runs.
            while not self._apply(anchored, settling=True):
                if self._stop.wait(SETTLING_POLL):
                    return
            self._count(f"{anchored.kind} while settling")
            self._stop.wait()  # as in _run
        except BaseException as err:  # noqa: BLE001 - as in _run
            self.errors.append(err)

    def _count(self, kind: str) -> None:
        with self._counting:
            self.done[kind] += 1

    def settling_missed(self) -> bool:
        """Whether the schedule's disruption anchored to the settling round was never carried out."""
        anchored = self._schedule.settling
        return anchored is not None and not self.done[f"{anchored.kind} while settling"]

    def _apply(self, disruption: Disruption, settling: bool = False) -> bool:
        """Carry out `disruption`; an eviction or Job deletion with `settling` picks among the settling round's."""
        if disruption.kind == "kill-operator":
            self._restart(disruption.pause)
        elif disruption.kind == "compact":
            self._faults.compact()
        elif disruption.kind == "drop-watches":
            self._faults.drop_watches()
        elif disruption.kind == "evict":
            return self._evict(disruption.pick, settling)
        else:
            return self._delete_job(disruption.pick, settling)
        return True

    def _running_pods(self, settling: bool) -> list[str]:
        return sorted(p.metadata.name for p in self._core.list_namespaced_pod(self._namespace).items
                      if p.status and p.status.phase == "Running" and not p.metadata.deletion_timestamp
                      and (not settling or saves_a_model(p.spec)))

    def _evict(self, pick: float, settling: bool) -> bool:
        pods = self._running_pods(settling)
        if not pods:
            return False
        name = pods[int(pick * len(pods))]
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}
        try:
            self._core.create_namespaced_pod_eviction(name, self._namespace, body)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def _delete_job(self, pick: float, settling: bool) -> bool:
        jobs = sorted(j.metadata.name for j in self._batch.list_namespaced_job(self._namespace).items
                      if not settling or saves_a_model(j.spec.template.spec))
        if not jobs:
            return False
        name = jobs[int(pick * len(jobs))]
        try:
            self._batch.delete_namespaced_job(name, self._namespace, propagation_policy="Background")
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return False
            raise
        self.deleted_jobs.append(name)
        return True


def saves_a_model(pod_spec: kubernetes.client.V1PodSpec) -> bool:
    """Whether a pod (or a Job's template) runs a trial on the target size: the settling round's."""
    return any(SETTLING_FLAG in (c.args or []) + (c.command or []) for c in pod_spec.containers)


def apply_refusals(faults: ApiFaults, schedule: Schedule) -> None:
    faults.seed(schedule.seed)
    faults.graceful_deletion = schedule.graceful_deletion
    faults.gc_delay = schedule.gc_delay
    for refusal in schedule.refusals:
        faults.fail(refusal.code, verb=refusal.verb, resource=refusal.resource, subresource=refusal.subresource,
                    probability=refusal.probability, user_agent=OPERATOR_AGENTS,
                    commit=refusal.commit and refusal.verb == "create")


def job_identity(labels: dict[str, str]) -> tuple[str, str]:
    return labels.get(CANDIDATE_LABEL, "?"), labels.get(ROUND_LABEL, "?")


def duplicate_jobs(journal: list[JournalEntry]) -> list[str]:
    """Jobs created for a trial attempt that already had one: while it was still there, or never gone."""
    live: dict[str, tuple[str, str]] = {}
    disappeared: Counter[tuple[str, str]] = Counter()
    created: Counter[tuple[str, str]] = Counter()
    found = []
    for entry in journal:
        identity = job_identity(entry.data)
        if entry.type == "ADDED":
            twins = [name for name, other in live.items() if other == identity]
            if twins:
                found.append(f"Job {entry.name} created while {twins[0]} runs the same trial {identity}")
            elif created[identity] > disappeared[identity]:
                found.append(f"Job {entry.name} re-created for trial {identity} although no earlier Job went")
            created[identity] += 1
            live[entry.name] = identity
        elif entry.type == "DELETED" and live.pop(entry.name, None) is not None:
            disappeared[identity] += 1
    return found


def points_measured_twice(ledger: Path) -> list[str]:
    counts = Counter((line["model"].rsplit("/", 1)[-1], line["size"]) for line in read_ledger(ledger))
    return [f"{model} size {size} measured {n} times" for (model, size), n in sorted(counts.items()) if n > 1]


@dataclass(frozen=True)
class Verdict:
    """What a run decided, to compare with the fault-free run's: the ranking and, for a race, each round's sizes
    and eliminations and why it stopped."""

    ranking: tuple[str, ...]
    rounds: tuple[tuple[tuple[tuple[str, tuple[int, ...]], ...], tuple[str, ...]], ...] = ()
    stop: str | None = None

    @classmethod
    def of(cls, status: dict[str, Any]) -> "Verdict":
        race = status.get("race") or {}
        rounds = tuple((tuple(sorted((name, tuple(sizes)) for name, sizes in record["sizes"].items())),
                        tuple(e["candidate"] for e in record.get("eliminated") or []))
                       for record in race.get("rounds") or [])
        return cls(tuple(entry["candidate"] for entry in status.get("ranking") or []), rounds, race.get("stop"))


def planned_sizes(status: dict[str, Any], strategy: str) -> dict[str, list[int]]:
    """The sizes each candidate was to be measured at: every subset size, or in a race those of its rounds."""
    if strategy == "fixed":
        return {name: SIZES for name in CANDIDATES}
    planned: dict[str, set[int]] = {name: set() for name in CANDIDATES}
    for record in (status.get("race") or {}).get("rounds") or []:
        for name, sizes in record["sizes"].items():
            planned[name].update(sizes)
    return {name: sorted(sizes) for name, sizes in planned.items()}


def points_lost(status: dict[str, Any], strategy: str) -> list[str]:
    lost = []
    for name, planned in planned_sizes(status, strategy).items():
        entry = (status.get("candidates") or {}).get(name) or {}
        have = sorted(point["size"] for point in entry.get("points") or [])
        if entry.get("state") != "Succeeded" or not planned or have != planned:
            lost.append(f"{name}: state {entry.get('state')}, sizes {have} of {planned} "
                        f"({entry.get('reason') or ''} {entry.get('message') or ''})".rstrip())
    return lost


def models_not_kept(status: dict[str, Any], target: int, claim: str, claim_folder: Path) -> list[str]:
    """Candidates measured on the target size whose fine-tuned model the status does not name on the claim, or
    which is not there (`claim_folder`: the kubelet's folder standing in for the claim)."""
    lost = []
    for name, entry in sorted((status.get("candidates") or {}).items()):
        if target not in {point["size"] for point in entry.get("points") or []}:
            continue
        location = entry.get("fineTunedModel") or ""
        path = location.removeprefix(f"pvc://{claim}/")
        if path == location or not (claim_folder / path / "config.json").is_file():
            lost.append(f"{name}: fine-tuned on the target size {target}, its model {location or 'unnamed'} is not "
                        f"on claim {claim}")
    return lost
