"""`reconcile` in this process against the emulated API server, for what needs exact timing: a held lock, a status
write that fails or conflicts once, a Job an admission webhook refuses, API errors that repeat.

The test plays the kubelet where a pod must have finished (a pod with the runner's termination message) and makes
single calls fail by wrapping the operator's own API functions (`lensllm_operator.kube`) around the real ones.
"""

import asyncio
import copy
import dataclasses
import itertools
import json
import logging
import math
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import kopf
import kubernetes
import pytest
from demo_selection import selection_manifest
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry, generate_latest

from lensllm.selection.spec import EARLIER_DEFAULTS, GROUP, PLURAL, VERSION, LLMSelectionSpec, with_defaults
from lensllm.selection import status as status_module
from lensllm.selection.status import LLMSelectionStatus, initial_status
from lensllm.trial.result import Evaluation, Resources, SizePoint, TrialResult
from lensllm_operator import handlers, kube as operator_kube, reconcile as reconcile_module
from lensllm_operator.config import OperatorConfig
from lensllm_operator.context import Context
from lensllm_operator.jobs import SELECTION_LABEL, SIZES_ANNOTATION
from lensllm_operator.metrics import OperatorMetrics
from lensllm_operator.reconcile import MAX_UNEXPECTED_ERRORS, announce, reconcile

SIZES = [16, 32, 64]


@pytest.fixture
def ctx(kube) -> Context:
    """The operator's shared context, its API client logged in to the emulated cluster."""
    operator_kube._api_client.cache_clear()
    operator_kube.login()
    yield new_context()
    operator_kube._api_client.cache_clear()


def new_context() -> Context:
    """A context as a new operator process starts with (its API client is the logged-in one)."""
    return Context(config=OperatorConfig(), metrics=OperatorMetrics(CollectorRegistry()))


@pytest.fixture
def custom(kube):
    return kubernetes.client.CustomObjectsApi(kube.api)


def posting_events() -> asyncio.Queue:
    """Let kopf.info/kopf.warn post into a queue, as inside a running operator (call from the test's loop)."""
    from kopf._core.engines import posting

    queue: asyncio.Queue = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    return queue


def create_selection(custom, namespace: str, name: str, **spec) -> dict:
    """A selection of one candidate `a` whose trials never run here (the test plays the kubelet)."""
    doc = selection_manifest(Path("/nowhere"), {"a": "/models/a"}, name=name,
                             **{"budget": {"subsetSizes": SIZES, "targetSize": 1024}, **spec})
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)


def status_of(custom, namespace: str, name: str) -> LLMSelectionStatus:
    return LLMSelectionStatus.model_validate(
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
    )


def result_message(sizes: list[int] = SIZES) -> str:
    def evaluation(bits: float) -> Evaluation:
        return Evaluation(loss=bits, loss_per_example=bits * 10, bits_per_byte=bits, examples=16, tokens=160, seconds=0.1,
                          flops=1e9)

    points = [SizePoint(size=s, test=evaluation(2.0 / (1 + math.log2(s / SIZES[0])))) for s in sizes]
    # The parameter count weighs a race's compute.
    resources = Resources(device="cpu", dtype="float32", parameters=1000, trainable_parameters=1000,
                          peak_memory_bytes=1 << 20, peak_memory_kind="processRss")
    result = TrialResult(status="Succeeded", zero_shot=evaluation(3.0), points=points, seconds=2.0, resources=resources)
    return result.to_termination_message()


def stamp(seconds_ago: float = 0.0) -> str:
    """An API server timestamp, `seconds_ago` before now."""
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_pod(kube, namespace: str, job: str, suffix: str, state: dict, phase: str = "Running", conditions=()) -> str:
    """A pod the Job controller made for `job`, as the kubelet reports it (`state`: the runner container's)."""
    core, batch = kubernetes.client.CoreV1Api(kube.api), kubernetes.client.BatchV1Api(kube.api)
    body = batch.read_namespaced_job(job, namespace)
    labels = {**body.spec.template.metadata.labels, "job-name": job}
    resources = body.spec.template.spec.containers[0].resources.to_dict()
    pod = core.create_namespaced_pod(namespace, {
        "metadata": {"name": f"{job[:50]}-{suffix}", "labels": labels,
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": body.metadata.uid}]},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "runner", "image": "runner", "resources": {key: value for key, value in resources.items() if value}}]},
    })
    core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {
        "phase": phase, "conditions": list(conditions),
        "containerStatuses": [{"name": "runner", "image": "runner", "imageID": "", "ready": phase == "Running",
                               "restartCount": 0, "state": state}]}})
    return pod.metadata.name


def finish_job(kube, namespace: str, job: str, message: str) -> None:
    """What the kubelet and the Job controller report for a trial that ran and succeeded."""
    now = stamp()
    terminated = {"exitCode": 0, "reason": "Completed", "message": message, "startedAt": now, "finishedAt": now}
    run_pod(kube, namespace, job, "pod", {"terminated": terminated}, "Succeeded")
    complete_job(kube, namespace, job)


def complete_job(kube, namespace: str, job: str) -> None:
    now = stamp()
    kubernetes.client.BatchV1Api(kube.api).patch_namespaced_job_status(job, namespace, {"status": {
        "succeeded": 1, "completionTime": now,
        "conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now}]}})


def reconcile_once(ctx: Context, namespace: str, name: str) -> list:
    """One reconciliation; the Events it posted."""

    async def scenario():
        events = posting_events()
        await reconcile(ctx, namespace, name)
        return [events.get_nowait() for _ in range(events.qsize())]

    return asyncio.run(scenario())


def only_job(kube, namespace: str) -> str:
    (job,) = kubernetes.client.BatchV1Api(kube.api).list_namespaced_job(namespace).items
    return job.metadata.name


def only_job_sizes(kube, namespace: str) -> str:
    (job,) = kubernetes.client.BatchV1Api(kube.api).list_namespaced_job(namespace).items
    return job.metadata.annotations[SIZES_ANNOTATION]


def trials_counted(ctx: Context) -> float:
    text = generate_latest(ctx.metrics.registry).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("lensllm_trials_total{"))


def test_a_refused_spec_is_written_under_the_selection_lock(kube, namespace, ctx, custom):
    create_selection(custom, namespace, "twins", candidates=[{"name": "a", "model": "m"}, {"name": "a", "model": "n"}])

    async def scenario():
        posting_events()
        lock = ctx.lock(namespace, "twins")
        await lock.acquire()  # a reconciliation of this selection is in progress
        handler = asyncio.create_task(handlers.selection_changed(namespace=namespace, name="twins", memo=kopf.Memo(ctx=ctx)))
        await asyncio.sleep(0.5)
        assert status_of(custom, namespace, "twins").phase == "Pending", "written while another writer held the lock"
        lock.release()
        await handler

    asyncio.run(scenario())
    status = status_of(custom, namespace, "twins")
    assert (status.phase, status.reason) == ("Failed", "InvalidSpec")


def test_a_selection_asking_for_an_image_the_operator_does_not_allow_fails_without_a_job(kube, namespace, ctx, custom):
    create_selection(custom, namespace, "miner", runner={"image": "docker.io/someone/miner:latest"})

    events = reconcile_once(ctx, namespace, "miner")
    status = status_of(custom, namespace, "miner")
    assert (status.phase, status.reason) == ("Failed", "InvalidSpec")
    assert "spec.runner.image 'docker.io/someone/miner:latest' is not an allowed runner image" in status.conditions[-1].message
    assert [e.reason for e in events] == ["InvalidSpec"]
    assert kubernetes.client.BatchV1Api(kube.api).list_namespaced_job(namespace).items == []


@pytest.mark.parametrize("failing_write", ["first", "final"])
def test_a_status_write_that_fails_counts_the_finished_trial_once(kube, namespace, ctx, custom, monkeypatch, failing_write):
    """The pass that reads the last result writes it before ranking, then writes the ranking: either write may fail."""
    create_selection(custom, namespace, "counted")
    real = operator_kube.patch_selection_status
    failing = {"left": 0}

    async def patch(namespace, name, uid, status):
        if failing["left"] and (failing_write == "first" or status.get("phase") == "Complete"):
            failing["left"] -= 1
            raise ApiException(status=500, reason="Internal Server Error")
        return await real(namespace, name, uid, status)

    monkeypatch.setattr(operator_kube, "patch_selection_status", patch)

    async def scenario():
        posting_events()
        await reconcile(ctx, namespace, "counted")  # creates the Job
        finish_job(kube, namespace, only_job(kube, namespace), result_message())
        failing["left"] = 1
        with pytest.raises(kopf.TemporaryError):
            await reconcile(ctx, namespace, "counted")  # reads the result; a write fails
        assert trials_counted(ctx) == (0 if failing_write == "first" else 1)
        await reconcile(ctx, namespace, "counted")  # reads it again (if unwritten) and ranks

    asyncio.run(scenario())
    assert status_of(custom, namespace, "counted").phase == "Complete"
    assert trials_counted(ctx) == 1


async def longest_stall(call) -> float:
    """Await `call` while a ticker measures the event loop: the longest it went without a turn, in seconds."""
    loop = asyncio.get_running_loop()
    gaps = [0.0]

    async def tick():
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    ticker = asyncio.create_task(tick())
    try:
        await call
    finally:
        ticker.cancel()
    return max(gaps)


def before_each_decision(monkeypatch, hook) -> None:
    """Call `hook(name)` on the science thread before each round decision (`advance`) and ranking (`finalize`)."""
    def wrapped(fn):
        def call(*args):
            hook(fn.__name__)
            return fn(*args)
        return call

    monkeypatch.setattr(reconcile_module, "advance", wrapped(reconcile_module.advance))
    monkeypatch.setattr(status_module, "finalize", wrapped(status_module.finalize))


def one_trial_race(kube, namespace, ctx, custom, name: str, measure=None) -> list:
    """A one-candidate race: a pass that creates its Job, the Job succeeds, a pass that reads it, decides and ranks.
    `measure(coroutine)` is awaited in place of each pass; what it returns, per pass."""
    create_selection(custom, namespace, name, strategy="race")

    async def scenario():
        posting_events()
        run = measure or (lambda call: call)
        first = await run(reconcile(ctx, namespace, name))
        finish_job(kube, namespace, only_job(kube, namespace), result_message())
        return [first, await run(reconcile(ctx, namespace, name))]

    return asyncio.run(scenario())


def test_deciding_a_round_and_ranking_leave_the_event_loop_free(kube, namespace, ctx, custom, monkeypatch):
    calls = []

    def slow(name):
        time.sleep(0.5)  # what a round's fits and bootstrap take for a dozen candidates, and more
        calls.append(name)

    before_each_decision(monkeypatch, slow)
    stalls = one_trial_race(kube, namespace, ctx, custom, "heavy", measure=longest_stall)
    status = status_of(custom, namespace, "heavy")
    assert calls == ["advance", "finalize"] and status.phase == "Complete" and len(status.race.rounds) == 1
    assert max(stalls) < 0.25, stalls


def test_the_results_a_decision_needs_are_written_before_it_waits_for_the_science_thread(kube, namespace, ctx, custom,
                                                                                     monkeypatch):
    """A decision can queue behind other selections' for a minute; the trial results it decides on are not held back."""
    written = []

    def look(name):
        status = status_of(custom, namespace, "patient")  # what a user sees while the decision runs
        written.append((name, [t.state for t in status.candidates["a"].trials], status.phase))

    before_each_decision(monkeypatch, look)
    one_trial_race(kube, namespace, ctx, custom, "patient")
    assert written == [("advance", ["Succeeded"], "Running"), ("finalize", ["Succeeded"], "Running")]
    assert status_of(custom, namespace, "patient").phase == "Complete"


def test_a_conflict_on_the_final_status_write_is_retried_at_once(kube, namespace, ctx, custom, monkeypatch):
    create_selection(custom, namespace, "raced")
    real = operator_kube.patch_selection_status
    conflicts = []

    async def patch(namespace, name, uid, status):
        if status.get("phase") == "Complete" and not conflicts:
            conflicts.append(name)
            raise ApiException(status=409, reason="Conflict")
        return await real(namespace, name, uid, status)

    monkeypatch.setattr(operator_kube, "patch_selection_status", patch)

    async def scenario():
        posting_events()
        await reconcile(ctx, namespace, "raced")
        finish_job(kube, namespace, only_job(kube, namespace), result_message())
        await reconcile(ctx, namespace, "raced")  # one call: the conflict is re-read and retried within it

    asyncio.run(scenario())
    assert conflicts == ["raced"] and status_of(custom, namespace, "raced").phase == "Complete"


def test_a_round_whose_decision_was_not_written_is_decided_without_the_next_rounds_results(
    kube, namespace, ctx, custom, monkeypatch
):
    """The pass that decides round 0 launches round 1's Jobs, then its status write fails (or the operator dies): the
    status still says round 0. Round 1's results, there by the next pass, must not decide round 0: with them it would
    plan nothing more and end the race (the chaos suite's seed 9, a run in fifty)."""
    batch = kubernetes.client.BatchV1Api(kube.api)
    doc = selection_manifest(Path("/nowhere"), {"a": "/models/a", "b": "/models/b"}, name="unwritten", strategy="race",
                             budget={"subsetSizes": [*SIZES, 128], "targetSize": 1024, "maxComputeFraction": 1.0},
                             race={"initialSizes": len(SIZES)})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)
    real = operator_kube.patch_selection_status
    refused = []

    async def patch(namespace, name, uid, status):
        if (status.get("race") or {}).get("rounds") and not refused:
            refused.append(name)
            raise ApiException(status=500, reason="Internal Server Error")
        return await real(namespace, name, uid, status)

    monkeypatch.setattr(operator_kube, "patch_selection_status", patch)

    def finish_round(round_: int, sizes: list[int]) -> None:
        for job in batch.list_namespaced_job(namespace, label_selector=f"lensllm.io/round={round_}").items:
            finish_job(kube, namespace, job.metadata.name, result_message(sizes))

    async def scenario():
        posting_events()
        await reconcile(ctx, namespace, "unwritten")  # round 0's Jobs
        finish_round(0, SIZES)
        with pytest.raises(kopf.TemporaryError):
            await reconcile(ctx, namespace, "unwritten")  # decides round 0, launches round 1, the write fails
        assert len(batch.list_namespaced_job(namespace, label_selector="lensllm.io/round=1").items) == 2
        finish_round(1, [128])
        await reconcile(ctx, namespace, "unwritten")  # decides round 0 again, adopts round 1's Jobs
        decided = status_of(custom, namespace, "unwritten").race
        assert decided.stop is None and decided.rounds[0].next_sizes == {"a": [128], "b": [128]}
        await reconcile(ctx, namespace, "unwritten")  # reads round 1, decides it, ranks

    asyncio.run(scenario())
    status = status_of(custom, namespace, "unwritten")
    assert refused and status.phase == "Complete" and len(status.race.rounds) == 2
    assert all([p.size for p in entry.points] == [*SIZES, 128] for entry in status.candidates.values())


@pytest.mark.parametrize(
    "refusal, says",
    [
        (ApiException(status=422, reason="Unprocessable Entity"), "denied by policy require-team-label"),
        (ValueError("Invalid value for `tolerations`, must be a list"), "Invalid value for `tolerations`"),
    ],
)
def test_a_job_the_api_server_or_the_client_refuses_fails_its_candidate_with_the_reason(
    kube, namespace, ctx, custom, monkeypatch, refusal, says
):
    if isinstance(refusal, ApiException):  # an admission webhook's answer, as the API server relays it
        refusal.body = json.dumps({"kind": "Status", "status": "Failure", "code": 422, "reason": "Invalid",
                                   "message": 'admission webhook "validate.kyverno.svc" denied the request: '
                                              "denied by policy require-team-label"})

    async def refuse(namespace, job):
        raise refusal

    monkeypatch.setattr(operator_kube, "create_job", refuse)
    create_selection(custom, namespace, "refused")

    events = reconcile_once(ctx, namespace, "refused")
    status = status_of(custom, namespace, "refused")
    entry = status.candidates["a"]
    assert (status.phase, entry.state, entry.reason) == ("Failed", "Failed", "JobRejected")
    assert says in entry.message
    assert [e.reason for e in events if e.type == "Warning"] == ["JobRejected", "MaxFailedCandidatesReached"]


def test_a_transient_api_error_is_retried_with_a_growing_delay(kube, namespace, ctx, custom, monkeypatch):
    create_selection(custom, namespace, "throttled")

    async def throttled(namespace, selector):
        raise ApiException(status=429, reason="Too Many Requests")

    answering = operator_kube.list_jobs
    monkeypatch.setattr(operator_kube, "list_jobs", throttled)
    now = [100.0]
    monkeypatch.setattr(reconcile_module, "monotonic", lambda: now[0])

    async def scenario():
        posting_events()
        delays = []
        # The first try, a Job event's call 1 s later (before the retry is due), the retry, and the next.
        for at in (100.0, 101.0, 102.0, 106.0):
            now[0] = at
            with pytest.raises(kopf.TemporaryError) as retry:
                await reconcile(ctx, namespace, "throttled")
            delays.append(retry.value.delay)
        return delays

    assert asyncio.run(scenario()) == [2.0, 1.0, 4.0, 8.0]
    assert status_of(custom, namespace, "throttled").phase == "Pending"
    assert ctx.retry_due[(namespace, "throttled")] == 114.0  # the resync loop waits for it too

    # The API answers again: a Job event's call succeeds before the retry is due.
    monkeypatch.setattr(operator_kube, "list_jobs", answering)
    asyncio.run(reconcile(ctx, namespace, "throttled"))
    assert (namespace, "throttled") not in ctx.retry_due and status_of(custom, namespace, "throttled").phase == "Running"


def test_an_error_that_keeps_coming_back_ends_the_selection_instead_of_retrying_forever(
    kube, namespace, ctx, custom, monkeypatch
):
    create_selection(custom, namespace, "cursed")

    async def broken(namespace, job):
        raise RuntimeError("a bug")

    monkeypatch.setattr(operator_kube, "create_job", broken)

    async def scenario():
        posting_events()
        for attempt in range(1, MAX_UNEXPECTED_ERRORS + 1):
            assert status_of(custom, namespace, "cursed").phase == "Pending", attempt
            with pytest.raises(RuntimeError):
                await reconcile(ctx, namespace, "cursed")

    asyncio.run(scenario())
    status = status_of(custom, namespace, "cursed")
    assert (status.phase, status.reason) == ("Failed", "ReconcileFailed") and "a bug" in status.conditions[-1].message


def test_the_job_watch_is_filtered_by_the_api_server_and_an_api_outage_never_ends_the_operator(kube, ctx):
    from cluster import free_port
    from kopf._cogs.structs.references import Resource

    settings = kopf.OperatorSettings()
    memo = kopf.Memo(ctx=Context(config=OperatorConfig(metrics_port=free_port()), metrics=ctx.metrics))

    async def start_and_stop():
        await handlers.operator_startup(settings=settings, memo=memo, logger=logging.getLogger(__name__))
        # kopf gives each object's handlers its own shallow copy of the memo.
        for name in ("s", "t", "gone"):
            await handlers.selection_event(type=None, namespace="ns", name=name, body={"metadata": {"uid": name}},
                                           status={}, memo=copy.copy(memo), logger=logging.getLogger(__name__))
        memo.ctx.retry_due[("ns", "gone")], memo.ctx.failures[("ns", "gone", "transient")] = 8.0, 3
        await handlers.selection_event(type="DELETED", namespace="ns", name="gone", body={"metadata": {"uid": "gone"}},
                                       status={}, memo=copy.copy(memo), logger=logging.getLogger(__name__))
        loops = [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "resync_forever"]
        await handlers.operator_cleanup(memo=memo)
        return loops

    loops = asyncio.run(start_and_stop())
    assert loops == [memo.resync.task] and memo.resync.task.cancelled()
    assert sorted(memo.resync.selections.due(now=0.0, retry_due={})) == [("ns", "s"), ("ns", "t")]
    assert memo.ctx.retry_due == {} and memo.ctx.failures == {}  # a deleted selection's errors go with it
    assert list(memo.ctx.deleted) == ["gone"]  # and no pass that read it before may export it again
    jobs = Resource(group="batch", version="v1", plural="jobs", kind="Job", namespaced=True)
    assert list(settings.watching.label_selectors.collect(jobs)) == [SELECTION_LABEL]
    # An API outage longer than kopf's default retries (about a minute) would end the operator's watches.
    backoffs = settings.networking.error_backoffs
    assert list(itertools.islice(backoffs, 50))[-1] == 30 and list(itertools.islice(backoffs, 3)) == [1, 1, 2]


def evict(kube, namespace: str, pod: str) -> None:
    """The Eviction API: DisruptionTarget, then the pod is deleted (the Job's podFailurePolicy ignores it)."""
    kube.server.call(lambda: kube.emulator.evict(namespace, pod))


def jobs_of(kube, namespace: str) -> list[str]:
    return sorted(job.metadata.name for job in kubernetes.client.BatchV1Api(kube.api).list_namespaced_job(namespace).items)


def job_of_two_hours(kube, namespace: str, ctx, custom, name: str, status: dict) -> str:
    """The only Job of a new selection (pending timeout 60 s), reported as started two hours ago."""
    create_selection(custom, namespace, name, pendingTimeoutSeconds=60)
    reconcile_once(ctx, namespace, name)
    job = only_job(kube, namespace)
    kubernetes.client.BatchV1Api(kube.api).patch_namespaced_job_status(
        job, namespace, {"status": {"startTime": stamp(7200), **status}})
    return job


def test_an_evicted_trial_waits_for_its_replacement_pod_however_long_its_job_has_run(kube, namespace, ctx, custom):
    batch = kubernetes.client.BatchV1Api(kube.api)
    # The Job has run for two hours when its pod is evicted: far past the pending timeout.
    job = job_of_two_hours(kube, namespace, ctx, custom, "evicted", {"active": 1})
    first = run_pod(kube, namespace, job, "first", {"running": {"startedAt": stamp(7200)}})
    reconcile_once(ctx, namespace, "evicted")
    assert status_of(custom, namespace, "evicted").candidates["a"].state == "Running"

    evict(kube, namespace, first)
    batch.patch_namespaced_job_status(job, namespace, {"status": {"active": None}})
    for _ in range(2):  # between the evicted pod and its replacement there is no pod at all
        reconcile_once(ctx, namespace, "evicted")
        entry = status_of(custom, namespace, "evicted").candidates["a"]
        assert entry.state == "Running" and [(t.job_name, t.state) for t in entry.trials] == [(job, "Running")], entry
        assert jobs_of(kube, namespace) == [job]

    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}
    replacement = run_pod(kube, namespace, job, "second", {"waiting": {"reason": "ContainerCreating"}}, "Pending",
                          [unschedulable])  # the evicting workload took the node
    batch.patch_namespaced_job_status(job, namespace, {"status": {"active": 1}})
    reconcile_once(ctx, namespace, "evicted")
    entry = status_of(custom, namespace, "evicted").candidates["a"]
    assert (entry.state, entry.reason) == ("Queued", "Unschedulable"), entry
    assert jobs_of(kube, namespace) == [job]

    kubernetes.client.CoreV1Api(kube.api).delete_namespaced_pod(replacement, namespace)
    finish_job(kube, namespace, job, result_message())
    reconcile_once(ctx, namespace, "evicted")
    status = status_of(custom, namespace, "evicted")
    assert status.phase == "Complete" and [(t.job_name, t.state) for t in status.candidates["a"].trials] == [(job, "Succeeded")]


def test_a_job_left_without_a_pod_fails_after_the_pending_timeout_however_often_the_operator_restarts(
    kube, namespace, ctx, custom
):
    """Its pod evicted, every replacement refused: no object dates the wait, the status does."""
    create_selection(custom, namespace, "orphaned", pendingTimeoutSeconds=2)
    reconcile_once(ctx, namespace, "orphaned")
    job = only_job(kube, namespace)
    batch = kubernetes.client.BatchV1Api(kube.api)
    batch.patch_namespaced_job_status(job, namespace, {"status": {"startTime": stamp(60), "active": 1}})
    pod = run_pod(kube, namespace, job, "first", {"running": {"startedAt": stamp(60)}})
    reconcile_once(new_context(), namespace, "orphaned")
    evict(kube, namespace, pod)
    batch.patch_namespaced_job_status(job, namespace, {"status": {"active": None}})
    reconcile_once(new_context(), namespace, "orphaned")
    first = status_of(custom, namespace, "orphaned").candidates["a"]
    assert (first.state, first.reason) == ("Running", "NoPod") and first.message.startswith(f"Job {job} has no pod")
    time.sleep(1.2)
    reconcile_once(new_context(), namespace, "orphaned")  # each pass a new operator process
    assert status_of(custom, namespace, "orphaned").candidates["a"].waiting_since == first.waiting_since
    time.sleep(1.2)
    reconcile_once(new_context(), namespace, "orphaned")
    entry = status_of(custom, namespace, "orphaned").candidates["a"]
    assert (entry.state, entry.reason) == ("Failed", "PendingTimeout"), entry
    assert entry.message.startswith("no pod for 2s: no pod replaced its last one")


def test_a_failed_pod_that_nothing_replaces_fails_the_trial_a_pending_timeout_after_it_ended(kube, namespace, ctx, custom):
    job = job_of_two_hours(kube, namespace, ctx, custom, "unreplaced", {"failed": 1})
    ended = {"exitCode": 1, "reason": "Error", "startedAt": stamp(7200), "finishedAt": stamp(30)}
    pod = run_pod(kube, namespace, job, "first", {"terminated": ended}, "Failed")
    reconcile_once(ctx, namespace, "unreplaced")  # 30 s without a replacement: the Job controller may back off
    assert status_of(custom, namespace, "unreplaced").candidates["a"].state != "Failed"

    ended["finishedAt"] = stamp(90)  # a quota refused every replacement for 90 s
    kubernetes.client.CoreV1Api(kube.api).patch_namespaced_pod_status(pod, namespace, {"status": {
        "containerStatuses": [{"name": "runner", "image": "runner", "imageID": "", "ready": False, "restartCount": 0,
                               "state": {"terminated": ended}}]}})
    reconcile_once(ctx, namespace, "unreplaced")
    entry = status_of(custom, namespace, "unreplaced").candidates["a"]
    assert (entry.state, entry.reason) == ("Failed", "PendingTimeout"), entry
    assert entry.message.startswith(f"not started 60s after pod {pod} of Job {job} ended: no pod replaced it")


def test_a_job_that_finished_with_its_pod_evicted_is_deleted_before_the_trial_runs_again(kube, namespace, ctx, custom):
    create_selection(custom, namespace, "unread")
    batch = kubernetes.client.BatchV1Api(kube.api)
    reconcile_once(ctx, namespace, "unread")
    job = only_job(kube, namespace)
    pod = run_pod(kube, namespace, job, "only", {"running": {"startedAt": stamp()}})
    # The runner exits 0 as its pod is evicted: the Job counts the success, the pod and its result message are gone.
    evict(kube, namespace, pod)
    batch.patch_namespaced_job_status(job, namespace, {"status": {"succeeded": 1, "completionTime": stamp(), "conditions": [
        {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": stamp()}]}})

    reconcile_once(ctx, namespace, "unread")
    assert jobs_of(kube, namespace) == [], "a second Job of the trial while the first still exists"
    reconcile_once(ctx, namespace, "unread")  # the finished Job is gone: the next attempt resumes from the work volume
    (again,) = jobs_of(kube, namespace)
    trials = status_of(custom, namespace, "unread").candidates["a"].trials
    assert [(t.job_name, t.attempt, t.state) for t in trials] == [(job, 0, "Lost"), (again, 1, "Queued")]

    finish_job(kube, namespace, again, result_message())
    reconcile_once(ctx, namespace, "unread")
    assert status_of(custom, namespace, "unread").phase == "Complete"


def test_a_completed_selection_announces_each_caveat_as_a_warning_before_its_completion():
    when = "2026-01-01T00:00:00Z"
    status = LLMSelectionStatus.model_validate({"phase": "Complete", "conditions": [
        {"type": "Degraded", "status": "True", "reason": "CandidatesFailed", "message": "failed: b", "lastTransitionTime": when},
        {"type": "LawsAgree", "status": "False", "reason": "LawsDisagree", "lastTransitionTime": when,
         "message": "the laws predict different best candidates (lensllm: a, vanilla: c)"},
        {"type": "Complete", "status": "True", "reason": "Ranked", "message": "best: a", "lastTransitionTime": when},
    ]})
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMSelection", "metadata": {"namespace": "ns", "name": "s", "uid": "u1"}}

    async def scenario():
        events = posting_events()
        announce(kopf.Body(body), status)
        return [events.get_nowait() for _ in range(events.qsize())]

    posted = [(e.type, e.reason, e.message) for e in asyncio.run(scenario())]
    assert posted == [
        ("Warning", "CandidatesFailed", "failed: b"),
        ("Warning", "LawsDisagree", "the laws predict different best candidates (lensllm: a, vanilla: c)"),
        ("Normal", "Complete", "best: a"),
    ]


def test_a_status_built_for_a_deleted_selection_never_lands_on_the_one_created_again_under_its_name(
    kube, namespace, ctx, custom
):
    old = create_selection(custom, namespace, "again")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "again")
    create_selection(custom, namespace, "again")

    async def stale_write():
        await operator_kube.patch_selection_status(namespace, "again", old["metadata"]["uid"], {"phase": "Running"})

    with pytest.raises(ApiException) as refused:
        asyncio.run(stale_write())
    assert refused.value.status == 409 and "Precondition failed: UID" in refused.value.body
    assert not custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "again").get("status")


@pytest.mark.parametrize(
    "spec, started_with, sizes",
    [
        ({"strategy": None}, EARLIER_DEFAULTS[1], "16,32,64,128"),  # a fixed budget, when that was the default
        # a race capped at 5% by default: round 0 alone spends more, which a selection created now may not
        ({"strategy": "race"}, EARLIER_DEFAULTS[1], "16,32,64"),
        ({"strategy": "race"}, EARLIER_DEFAULTS[0], "16,32,64,128"),  # before initialSizes (3) existed
        ({"strategy": "race"}, EARLIER_DEFAULTS[2], "16,32,64"),  # before race.settle existed
        ({"strategy": None}, {}, "16,32,64"),  # today's defaults: a race from three sizes, uncapped
        # a cap that round 0 alone spends, set before such a cap was refused
        ({"budget": {"subsetSizes": [*SIZES, 128], "targetSize": 1024, "maxComputeFraction": 0.05}}, {}, "16,32,64"),
    ],
)
def test_a_selection_started_under_earlier_defaults_keeps_them_after_an_upgrade(
    kube, namespace, ctx, custom, spec, started_with, sizes
):
    """The CRD declares no defaults, so only the status's digest says what a left-out field meant when the work began."""
    doc = create_selection(custom, namespace, "upgraded", **{"budget": {"subsetSizes": [*SIZES, 128], "targetSize": 1024},
                                                             "strategy": "race", **spec})
    earlier = LLMSelectionSpec.from_wire(with_defaults(doc["spec"], started_with), started=True)
    began = initial_status(earlier, 1, stamp()).dump()
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "upgraded", {"status": began})

    reconcile_once(ctx, namespace, "upgraded")
    status = status_of(custom, namespace, "upgraded")
    assert status.phase == "Running" and status.spec_digest == began["specDigest"], status.conditions
    assert only_job_sizes(kube, namespace) == sizes
    assert (status.race is None) == (earlier.strategy == "fixed")


def test_a_selection_whose_status_has_no_digest_was_started_as_a_fixed_budget(kube, namespace, ctx, custom):
    """Operators before the digest predate the race: what they started is a fixed budget, whatever today's default."""
    doc = create_selection(custom, namespace, "old", budget={"subsetSizes": [*SIZES, 128], "targetSize": 1024}, strategy=None)
    fixed = LLMSelectionSpec.model_validate({**doc["spec"], "strategy": "fixed"})
    began = initial_status(fixed, 1, stamp()).dump()
    del began["specDigest"]
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "old", {"status": began})

    reconcile_once(ctx, namespace, "old")
    status = status_of(custom, namespace, "old")
    assert status.phase == "Running" and status.race is None, status.conditions
    assert status.spec_digest == fixed.digest()  # what a later edit of the spec is checked against
    assert only_job_sizes(kube, namespace) == "16,32,64,128"


def jobs_left(kube, namespace: str) -> list[str]:
    return [j.metadata.name for j in kubernetes.client.BatchV1Api(kube.api).list_namespaced_job(namespace).items
            if not j.metadata.deletion_timestamp]


def test_an_ended_selections_unfinished_job_is_deleted_even_when_the_pass_that_ended_it_could_not(
    kube, namespace, ctx, custom, monkeypatch
):
    """Ended passes are not reconciled further: a Job the ending pass failed to delete, or that a dead operator left,
    would start whenever a GPU frees up, for a selection that has reported already."""
    create_selection(custom, namespace, "tolerant", tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    reconcile_once(ctx, namespace, "tolerant")
    assert len(jobs_left(kube, namespace)) == 1
    real_delete = operator_kube.delete_job

    async def unavailable(namespace, name):
        raise ApiException(status=503, reason="Service Unavailable")

    monkeypatch.setattr(operator_kube, "delete_job", unavailable)
    # The operator is upgraded with a stricter policy: the running selection fails with a reason.
    ctx.config = dataclasses.replace(ctx.config, allowed_toleration_keys=())
    with pytest.raises(kopf.TemporaryError):
        reconcile_once(ctx, namespace, "tolerant")  # writes Failed (InvalidSpec), then its delete fails
    assert status_of(custom, namespace, "tolerant").reason == "InvalidSpec"
    assert len(jobs_left(kube, namespace)) == 1

    monkeypatch.setattr(operator_kube, "delete_job", real_delete)
    reconcile_once(ctx, namespace, "tolerant")  # a Job event or the retry: the selection has ended
    assert jobs_left(kube, namespace) == []

    # An operator that died after writing the terminal status: the next one stops the Job on its first pass.
    create_selection(custom, namespace, "orphaned")
    reconcile_once(ctx, namespace, "orphaned")
    ended = status_of(custom, namespace, "orphaned").model_copy(update={"phase": "Failed", "reason": "SpecChanged"})
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "orphaned", {"status": ended.dump()})
    restarted = new_context()
    reconcile_once(restarted, namespace, "orphaned")
    assert jobs_left(kube, namespace) == []

    listed = []

    async def counted(namespace, selector):
        listed.append(selector)
        return []

    monkeypatch.setattr(operator_kube, "list_jobs", counted)
    reconcile_once(restarted, namespace, "orphaned")  # looked once in this process: ended selections cost no calls
    assert listed == []


def test_a_reconciliation_cancelled_while_it_waits_for_the_lock_does_not_block_the_next(kube, namespace, ctx, custom):
    create_selection(custom, namespace, "patient")

    async def scenario():
        posting_events()
        lock = ctx.lock(namespace, "patient")
        await lock.acquire()
        waiter = asyncio.create_task(reconcile(ctx, namespace, "patient"))
        await asyncio.sleep(0.1)
        waiter.cancel()  # the operator's shutdown, a handler's timeout
        await asyncio.gather(waiter, return_exceptions=True)
        lock.release()
        await reconcile(ctx, namespace, "patient")

    asyncio.run(scenario())
    assert status_of(custom, namespace, "patient").phase == "Running"


def test_a_selection_deleted_during_its_pass_leaves_no_metric_series(kube, namespace, ctx, custom, monkeypatch):
    create_selection(custom, namespace, "fleeting")
    real = operator_kube.patch_selection_status

    async def deleted_first(namespace, name, uid, status):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        ctx.metrics.forget(namespace, name)  # what its DELETED event does, while the pass works on it
        return await real(namespace, name, uid, status)

    monkeypatch.setattr(operator_kube, "patch_selection_status", deleted_first)
    reconcile_once(ctx, namespace, "fleeting")
    assert 'selection="fleeting"' not in generate_latest(ctx.metrics.registry).decode()


def test_a_selection_deleted_while_its_pass_reads_running_pods_leaves_no_gpu_accounting_behind(
    kube, namespace, ctx, custom, monkeypatch
):
    create_selection(custom, namespace, "busy", resources={"nvidia.com/gpu": 1})
    reconcile_once(ctx, namespace, "busy")
    job = only_job(kube, namespace)
    kubernetes.client.BatchV1Api(kube.api).patch_namespaced_job_status(job, namespace, {"status": {"active": 1}})
    run_pod(kube, namespace, job, "pod", {"running": {"startedAt": stamp(60)}})
    reconcile_once(ctx, namespace, "busy")
    assert (namespace, "busy") in ctx.metrics._accounted
    uid = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "busy")["metadata"]["uid"]
    real = operator_kube.list_pods

    async def deleted_meanwhile(namespace_, selector):
        # Its DELETED event, while the pass lists pods that the garbage collector has yet to delete (here it
        # would delete them with the selection, and the selection's status write would find it gone).
        ctx.forget(namespace_, "busy", uid)
        return await real(namespace_, selector)

    monkeypatch.setattr(operator_kube, "list_pods", deleted_meanwhile)
    reconcile_once(ctx, namespace, "busy")
    assert (namespace, "busy") not in ctx.metrics._accounted  # else kept for the operator's lifetime
    assert gpu_seconds_counted(ctx) == pytest.approx(60, abs=5)  # what its passes counted stays counted


def test_a_finished_selection_deleted_while_its_pass_awaits_gets_no_series_back(kube, namespace, ctx, custom, monkeypatch):
    """Its Jobs, collected after the deletion, start passes that may have read it just before."""
    create_selection(custom, namespace, "ended")
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "ended", {"status": {"phase": "Complete"}})
    real = reconcile_module._stop_leftover_jobs

    async def deleted_meanwhile(ctx_, body):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ended")
        ctx_.forget(namespace, "ended", body["metadata"]["uid"])  # what its DELETED event does
        await real(ctx_, body)

    monkeypatch.setattr(reconcile_module, "_stop_leftover_jobs", deleted_meanwhile)
    reconcile_once(ctx, namespace, "ended")
    assert 'selection="ended"' not in generate_latest(ctx.metrics.registry).decode()
    monkeypatch.setattr(reconcile_module, "_stop_leftover_jobs", real)
    create_selection(custom, namespace, "ended")  # a new selection of the same name is exported as usual
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "ended", {"status": {"phase": "Complete"}})
    reconcile_once(ctx, namespace, "ended")
    assert 'lensllm_selection_gpu_seconds{namespace="%s",selection="ended"}' % namespace in generate_latest(ctx.metrics.registry).decode()


@pytest.mark.parametrize(
    "message, outcome",
    [
        ('jobs.batch "x" is forbidden: exceeded quota: jobs, requested: count/jobs.batch=1, used: '
         "count/jobs.batch=4, limited: count/jobs.batch=4", ("Running", "Pending", "JobForbidden")),
        ('jobs.batch is forbidden: User "system:serviceaccount:lensllm:lensllm-operator" cannot create resource "jobs" '
         'in API group "batch" in the namespace "team-a"', ("Failed", "Failed", "JobRejected")),
    ],
)
def test_a_full_quota_is_waited_for_and_any_other_forbidden_job_fails_its_candidate_at_once(
    kube, namespace, ctx, custom, monkeypatch, message, outcome
):
    """A quota frees up as other Jobs end; a missing RBAC rule or a LimitRange never does."""
    def forbidden():
        err = ApiException(status=403, reason="Forbidden")
        err.body = json.dumps({"kind": "Status", "status": "Failure", "code": 403, "reason": "Forbidden", "message": message})
        raise err

    monkeypatch.setattr(operator_kube, "create_job", lambda namespace, job: asyncio.to_thread(forbidden))
    create_selection(custom, namespace, "forbidden")
    reconcile_once(ctx, namespace, "forbidden")
    status = status_of(custom, namespace, "forbidden")
    entry = status.candidates["a"]
    assert (status.phase, entry.state, entry.reason) == outcome
    assert "forbidden" in entry.message


def test_a_trial_that_finds_the_dataset_unusable_fails_the_candidates_waiting_for_a_job_without_one(
    kube, namespace, ctx, custom
):
    create_selection(custom, namespace, "baddata", parallelism=1,
                     candidates=[{"name": "a", "model": "/models/a"}, {"name": "b", "model": "/models/b"}])
    reconcile_once(ctx, namespace, "baddata")
    job = only_job(kube, namespace)
    found = TrialResult(status="Failed", reason="DatasetFieldMissing",
                        message="dataset.targetField 'answer' is not a column of split 'train' (columns: input, output)")
    now = stamp()
    run_pod(kube, namespace, job, "pod", {"terminated": {"exitCode": 2, "reason": "Error", "startedAt": now,
                                                         "finishedAt": now, "message": found.to_termination_message()}},
            "Failed")
    kubernetes.client.BatchV1Api(kube.api).patch_namespaced_job_status(job, namespace, {"status": {"failed": 1,
        "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "lastTransitionTime": now}]}})
    reconcile_once(ctx, namespace, "baddata")
    status = status_of(custom, namespace, "baddata")
    waiting = status.candidates["b"]
    assert (status.phase, waiting.state, waiting.reason, waiting.trials) == ("Failed", "Failed", "DatasetFieldMissing", [])
    assert waiting.message == f"not run: the trial of a found the dataset unusable: {found.message}"
    assert jobs_of(kube, namespace) == [job]  # no Job, no pod, no GPU for b


def test_a_quota_that_stays_full_fails_its_candidate_after_the_pending_timeout_across_restarts_and_errors(
    kube, namespace, ctx, custom, monkeypatch
):
    """No Job exists to date the wait: the status keeps when the first refusal came, so neither a new operator
    process (a new Context) nor a transient error creating the Job between two refusals starts the count again."""
    answers = []

    def over_quota():
        answers.append("refused")
        err = ApiException(status=403, reason="Forbidden")
        err.body = json.dumps({"kind": "Status", "code": 403, "reason": "Forbidden",
                               "message": 'jobs.batch "x" is forbidden: exceeded quota: gpu, requested: '
                                          "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=8, limited: "
                                          "requests.nvidia.com/gpu=8"})
        raise err

    monkeypatch.setattr(operator_kube, "create_job", lambda namespace, job: asyncio.to_thread(over_quota))
    create_selection(custom, namespace, "starved", pendingTimeoutSeconds=2)
    reconcile_once(ctx, namespace, "starved")
    first = status_of(custom, namespace, "starved").candidates["a"]
    assert (first.state, first.reason) == ("Pending", "JobForbidden") and first.waiting_since
    time.sleep(1.2)
    reconcile_once(new_context(), namespace, "starved")
    waiting = status_of(custom, namespace, "starved").candidates["a"]
    assert (waiting.state, waiting.reason, waiting.waiting_since) == ("Pending", "JobForbidden", first.waiting_since)

    async def unavailable(namespace, job):
        answers.append("unavailable")
        raise ApiException(status=503, reason="Service Unavailable")

    monkeypatch.setattr(operator_kube, "create_job", unavailable)
    with pytest.raises(kopf.TemporaryError):
        reconcile_once(new_context(), namespace, "starved")
    interrupted = status_of(custom, namespace, "starved").candidates["a"]
    assert (interrupted.reason, interrupted.waiting_since) == ("JobCreateFailing", first.waiting_since)

    monkeypatch.setattr(operator_kube, "create_job", lambda namespace, job: asyncio.to_thread(over_quota))
    time.sleep(1.2)
    reconcile_once(new_context(), namespace, "starved")
    status = status_of(custom, namespace, "starved")
    entry = status.candidates["a"]
    assert (status.phase, entry.state, entry.reason) == ("Failed", "Failed", "JobForbidden")
    assert answers == ["refused", "refused", "unavailable", "refused"]
    assert entry.message.startswith("no Job for 2s (pendingTimeoutSeconds), a ResourceQuota refused it: ")
    assert "exceeded quota: gpu" in entry.message


@pytest.mark.parametrize("workloads_readable", [True, False])
def test_a_queued_job_kueue_never_takes_up_fails_after_the_pending_timeout(
    kube, namespace, ctx, custom, monkeypatch, workloads_readable
):
    """spec.queue where Kueue is not installed (or does not manage the namespace): nothing will unsuspend the Job.
    Where the operator may not read Workloads it cannot tell, and waits as for any queue."""
    if not workloads_readable:
        async def unreadable(namespace, selector):
            return None

        monkeypatch.setattr(operator_kube, "list_workloads", unreadable)
    create_selection(custom, namespace, "unqueued", queue="gpu-queue", pendingTimeoutSeconds=1)
    reconcile_once(ctx, namespace, "unqueued")
    assert status_of(custom, namespace, "unqueued").candidates["a"].state == "Queued"
    time.sleep(2.2)  # the API server's timestamps have whole seconds
    reconcile_once(ctx, namespace, "unqueued")
    status = status_of(custom, namespace, "unqueued")
    entry = status.candidates["a"]
    if workloads_readable:
        assert (status.phase, entry.reason) == ("Failed", "PendingTimeout")
        assert "Kueue made no Workload for it" in entry.message
    else:
        assert (status.phase, entry.state) == ("Running", "Queued")


def test_a_job_the_api_server_keeps_failing_to_create_is_retried_and_what_was_read_is_written_meanwhile(
    kube, namespace, ctx, custom, monkeypatch
):
    """A broken admission webhook answers every create with 500: the results read are not held back with it."""
    create_selection(custom, namespace, "webhook", parallelism=1,
                     candidates=[{"name": "a", "model": "/models/a"}, {"name": "b", "model": "/models/b"}])
    reconcile_once(ctx, namespace, "webhook")  # a's Job
    finish_job(kube, namespace, only_job(kube, namespace), result_message())
    real_create = operator_kube.create_job

    async def broken_webhook(namespace, job):
        raise ApiException(status=500, reason="Internal Server Error")

    monkeypatch.setattr(operator_kube, "create_job", broken_webhook)
    for _ in range(2):
        with pytest.raises(kopf.TemporaryError):
            reconcile_once(ctx, namespace, "webhook")
        status = status_of(custom, namespace, "webhook")
        assert [p.size for p in status.candidates["a"].points] == SIZES and status.candidates["a"].state == "Succeeded"
        b = status.candidates["b"]
        assert (b.state, b.reason, b.waiting_since) == ("Pending", "JobCreateFailing", None)  # no quota wait to date
    assert trials_counted(ctx) == 1

    monkeypatch.setattr(operator_kube, "create_job", real_create)
    reconcile_once(ctx, namespace, "webhook")
    assert status_of(custom, namespace, "webhook").candidates["b"].state == "Queued"


def gpu_seconds_counted(ctx: Context) -> float:
    text = generate_latest(ctx.metrics.registry).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("lensllm_gpu_seconds_total{"))


def test_an_evicted_pods_gpu_time_stays_counted_and_its_replacements_counts_in_full(kube, namespace, ctx, custom):
    create_selection(custom, namespace, "drained", resources={"nvidia.com/gpu": 2})
    reconcile_once(ctx, namespace, "drained")
    job = only_job(kube, namespace)
    kubernetes.client.BatchV1Api(kube.api).patch_namespaced_job_status(job, namespace, {"status": {"active": 1}})
    first = run_pod(kube, namespace, job, "first", {"running": {"startedAt": stamp(3600)}})
    reconcile_once(ctx, namespace, "drained")
    evict(kube, namespace, first)  # `kubectl drain`: the pod is deleted
    second = run_pod(kube, namespace, job, "second", {"running": {"startedAt": stamp(600)}})
    reconcile_once(ctx, namespace, "drained")
    assert gpu_seconds_counted(ctx) == pytest.approx(2 * (3600 + 600), abs=20)

    # The status too: the evicted pod, gone before the trial ended, was recorded while it ran.
    end_pod(kube, namespace, second, {"exitCode": 0, "reason": "Completed", "message": result_message(),
                                      "startedAt": stamp(600), "finishedAt": stamp()})
    complete_job(kube, namespace, job)
    reconcile_once(ctx, namespace, "drained")
    status = status_of(custom, namespace, "drained")
    (trial,) = status.candidates["a"].trials
    assert (trial.state, trial.pods) == ("Succeeded", None) and trial.seconds == pytest.approx(3600 + 600, abs=20)
    assert status.compute.gpu_seconds == pytest.approx(2 * (3600 + 600), abs=40)
    assert trial_gpu_seconds_booked(ctx) == pytest.approx(status.compute.gpu_seconds)


def test_gpu_time_is_priced_at_the_gpus_the_pods_held_not_at_a_later_edit_of_the_spec(kube, namespace, ctx, custom):
    create_selection(custom, namespace, "regrown", resources={"nvidia.com/gpu": 1})
    reconcile_once(ctx, namespace, "regrown")
    job = only_job(kube, namespace)
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "regrown",
                                          {"spec": {"resources": {"nvidia.com/gpu": 4}}})
    ended = {"exitCode": 0, "reason": "Completed", "message": result_message(), "startedAt": stamp(100), "finishedAt": stamp()}
    run_pod(kube, namespace, job, "pod", {"terminated": ended}, "Succeeded")
    complete_job(kube, namespace, job)
    reconcile_once(ctx, namespace, "regrown")
    entry = status_of(custom, namespace, "regrown").candidates["a"]
    assert entry.state == "Succeeded" and entry.gpu_seconds == pytest.approx(100, abs=2)  # 1 GPU, not 4


def test_a_pod_orphaned_before_it_started_holds_its_trial_back_for_the_pending_timeout(kube, namespace, ctx, custom):
    create_selection(custom, namespace, "orphans", pendingTimeoutSeconds=1)
    reconcile_once(ctx, namespace, "orphans")
    job = only_job(kube, namespace)
    pod = run_pod(kube, namespace, job, "pod", {"waiting": {"reason": "ContainerCreating"}}, "Pending")
    # kubectl delete --cascade=orphan (and the API's default for Jobs): the pod stays, and may start later.
    kubernetes.client.BatchV1Api(kube.api).delete_namespaced_job(job, namespace, propagation_policy="Orphan")
    reconcile_once(ctx, namespace, "orphans")
    assert [t.state for t in status_of(custom, namespace, "orphans").candidates["a"].trials] == ["Queued"]
    assert jobs_of(kube, namespace) == []  # no second attempt while the left pod may start

    time.sleep(2.1)
    events = reconcile_once(ctx, namespace, "orphans")
    trials = status_of(custom, namespace, "orphans").candidates["a"].trials
    assert [(t.attempt, t.state) for t in trials] == [(0, "Lost"), (1, "Queued")]
    assert [e.reason for e in events if e.reason == "PodLeftBehind"] == ["PodLeftBehind"]
    assert any(f"its pod {pod} was left behind" in e.message for e in events)


def end_pod(kube, namespace: str, pod: str, terminated: dict) -> None:
    kubernetes.client.CoreV1Api(kube.api).patch_namespaced_pod_status(pod, namespace, {"status": {
        "phase": "Succeeded" if terminated["exitCode"] == 0 else "Failed",
        "containerStatuses": [{"name": "runner", "image": "runner", "imageID": "", "ready": False, "restartCount": 0,
                               "state": {"terminated": terminated}}]}})


def trial_gpu_seconds_booked(ctx: Context) -> float:
    text = generate_latest(ctx.metrics.registry).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("lensllm_trial_gpu_seconds_total{"))


def test_a_status_written_by_a_newer_operator_goes_on_after_a_rollback(kube, namespace, ctx, custom, monkeypatch):
    """Helm never downgrades the CRD, so fields a newer operator wrote stay in the status an older one reads."""
    create_selection(custom, namespace, "rolled")
    reconcile_once(ctx, namespace, "rolled")
    job = only_job(kube, namespace)
    real_get, seen_writes = operator_kube.get_selection, []

    async def newer_status(namespace, name):
        body = await real_get(namespace, name)
        status = body["status"]
        status["newTopLevel"] = {"x": 1}
        candidate = status["candidates"]["a"]
        candidate["newPerCandidate"] = 1
        candidate["trials"][0]["newPerTrial"] = "x"
        return body

    async def patch(namespace, name, uid, status):
        seen_writes.append(status)
        return await real_patch(namespace, name, uid, status)

    real_patch = operator_kube.patch_selection_status
    monkeypatch.setattr(operator_kube, "get_selection", newer_status)
    monkeypatch.setattr(operator_kube, "patch_selection_status", patch)
    finish_job(kube, namespace, job, result_message())
    reconcile_once(ctx, namespace, "rolled")
    assert status_of(custom, namespace, "rolled").phase == "Complete"
    assert seen_writes[0]["newTopLevel"] is None  # what this version does not keep, it drops


def test_a_result_with_a_loss_that_is_not_finite_fails_its_trial_as_invalid(kube, namespace, ctx, custom):
    create_selection(custom, namespace, "diverged")
    reconcile_once(ctx, namespace, "diverged")
    result = json.loads(result_message())
    result["points"][0]["test"]["bitsPerByte"] = float("nan")  # json.dumps writes NaN, as a broken runner might
    finish_job(kube, namespace, only_job(kube, namespace), json.dumps(result))

    reconcile_once(ctx, namespace, "diverged")
    entry = status_of(custom, namespace, "diverged").candidates["a"]
    assert (entry.state, entry.reason) == ("Failed", "ResultInvalid")
    assert entry.message.endswith(": its result is not valid: points.0.test.bitsPerByte: Input should be a finite number")
    assert entry.points == []
