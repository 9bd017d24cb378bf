"""The Job controller and the TTL-after-finished controller of the emulated cluster.

`JobController` watches Jobs through the emulator's HTTP API and, for each, does what Kubernetes' controllers do:
creates its Pod (template labels plus `job-name`, an ownerReference to the Job) for the kubelet
(tests/support/kubelet.py) to run, retries failed pods up to `backoffLimit`, applies `podFailurePolicy` rules in
order (`onExitCodes` and `onPodConditions`; actions FailJob, Ignore - not counted against backoffLimit, as for
DisruptionTarget -, and Count), honours `suspend` and `activeDeadlineSeconds`, reports status and conditions
(SuccessCriteriaMet/FailureTarget before Complete/Failed, as Kubernetes 1.31+), and deletes finished Jobs after
`ttlSecondsAfterFinished` (0 included, set before or after the Job finished) with Foreground propagation, as the
TTL controller does. A refused pod create (e.g. `faults.fail(403, verb="create", resource="pods", subresource="")`, a ResourceQuota)
is retried without counting as a failure, leaving the Job active with no pod.

Simplified: one pod per Job (parallelism and completions are taken as 1), no retry back-off delay by default, the
job-tracking finalizer is not simulated.
"""

import asyncio
import collections
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from api_client import ApiRefused, Body, ControllerClient, object_path
from kube_emulator import now

CREATE_RETRY_SECONDS = 0.5  # Kubernetes backs off from 10 s; the emulator keeps tests short


class PodOutcome(NamedTuple):
    """How a pod ended: its container's exit code (None if it never ran), its name, its last conditions."""

    code: int | None
    pod: str
    conditions: list[Body]


class PodRunner(Protocol):
    """The kubelet, as the Job controller hands it pods."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    async def run_pod(self, pod: Body) -> PodOutcome: ...


@dataclass
class JobState:
    """What the Job controller keeps per Job between watch events."""

    job: Body
    suspended: bool | None = None  # None until the first event is seen
    unsuspended: asyncio.Event = field(default_factory=asyncio.Event)
    conditions: list[Body] = field(default_factory=list)
    active_pod: str | None = None
    task: asyncio.Task[None] | None = None
    updated: asyncio.Event = field(default_factory=asyncio.Event)  # set on every event of the Job


class JobController:
    """Runs every Job it sees to its end through the kubelet; lives in the kubelet's event loop."""

    def __init__(self, client: ControllerClient, kubelet: PodRunner, retry_delay: float = 0.0) -> None:
        self.jobs_seen: list[str] = []  # every Job name, in the order first seen
        self.pods_created: collections.Counter[str] = collections.Counter()  # pods per Job name
        self._client, self._kubelet, self._retry_delay = client, kubelet, retry_delay
        self._jobs: dict[tuple[str, str], JobState] = {}
        self._seen: set[str] = set()

    async def on_job(self, event: str, job: Body) -> None:
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        if key[1] not in self._seen:
            self._seen.add(key[1])
            self.jobs_seen.append(key[1])
        state = self._jobs.get(key)
        if event == "DELETED":
            if state is not None and state.task is not None:
                state.task.cancel()  # no more pods or status for it; its pod, orphaned or collected, is the kubelet's
            self._jobs.pop(key, None)
            return
        if state is None:
            if any(c["type"] in ("Complete", "Failed") for c in job.get("status", {}).get("conditions", [])):
                return
            state = self._jobs[key] = JobState(job)
            state.task = self._kubelet.spawn(self._control(state))
        state.job = job
        state.updated.set()
        await self._follow_suspend(state)

    async def _follow_suspend(self, state: JobState) -> None:
        """Suspending stops the Job's pod and resuming starts a new one; both show in a Suspended condition."""
        suspended = bool(state.job["spec"].get("suspend"))
        if suspended == state.suspended:
            return
        first, state.suspended = state.suspended is None, suspended
        if suspended:
            state.unsuspended.clear()
            await self._delete_active_pod(state)
        else:
            state.unsuspended.set()
        if suspended or not first:
            reason, message = ("JobSuspended", "Job suspended") if suspended else ("JobResumed", "Job resumed")
            await self._set_condition(state, "Suspended", reason, message, status="True" if suspended else "False")

    async def _set_condition(self, state: JobState, kind: str, reason: str, message: str, status: str = "True",
                             **extra: Any) -> None:
        stamp = now()
        condition = {"type": kind, "status": status, "reason": reason, "message": message,
                     "lastProbeTime": stamp, "lastTransitionTime": stamp}
        state.conditions = [c for c in state.conditions if c["type"] != kind] + [condition]
        await self._client.patch_status(state.job, {"conditions": state.conditions, **extra})

    async def _control(self, state: JobState) -> None:
        """Run the Job to its end within activeDeadlineSeconds, report it, then honour ttlSecondsAfterFinished."""
        await state.unsuspended.wait()
        await self._client.patch_status(state.job, {"startTime": now()})
        try:
            async with asyncio.timeout(state.job["spec"].get("activeDeadlineSeconds")):
                outcome = await self._attempts(state)
        except TimeoutError:
            await self._delete_active_pod(state)
            outcome = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        await self._finish(state, *outcome)
        await self._expire(state, asyncio.get_running_loop().time())

    async def _expire(self, state: JobState, finished: float) -> None:
        """The TTL-after-finished controller: delete the Job ttlSecondsAfterFinished after it finished, a TTL set
        (or changed) after it finished included, as the real controller does on every update of a finished Job."""
        loop = asyncio.get_running_loop()
        while True:
            state.updated.clear()
            ttl = state.job["spec"].get("ttlSecondsAfterFinished")
            left = None if ttl is None else finished + ttl - loop.time()
            if left is not None and left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.updated.wait(), left)
        await self._client.request("DELETE", object_path(state.job), propagationPolicy="Foreground")

    async def _attempts(self, state: JobState) -> tuple[str, str, str]:
        """Start pods until one succeeds, a FailJob rule matches, or counted failures exceed backoffLimit."""
        failures = 0
        while True:
            await state.unsuspended.wait()
            outcome = await self._attempt(state)
            if not state.unsuspended.is_set():
                continue  # stopped by a suspend: not a failure
            if outcome.code == 0:
                return "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
            action, index = failure_rule(state.job, outcome)
            if action != "Ignore":
                failures += 1
                await self._client.patch_status(state.job, {"failed": failures})
            if action == "FailJob":
                container, namespace = first_container(state.job)["name"], state.job["metadata"]["namespace"]
                return ("Failed", "PodFailurePolicy", f"Container {container} for pod {namespace}/{outcome.pod} "
                        f"failed with exit code {outcome.code} matching FailJob rule at index {index}")
            if failures > state.job["spec"].get("backoffLimit", 6):
                return "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            await asyncio.sleep(self._retry_delay)

    async def _attempt(self, state: JobState) -> PodOutcome:
        """One pod, created through the API and run by the kubelet until it ends or is deleted."""
        meta = state.job["metadata"]
        pod = await self._create_pod(state)
        if pod is None:
            return PodOutcome(None, "", [])
        self.pods_created[meta["name"]] += 1
        state.active_pod = pod["metadata"]["name"]
        await self._client.patch_status(state.job, {"active": 1})
        run = self._kubelet.spawn(self._kubelet.run_pod(pod))
        try:
            return await asyncio.shield(run)  # a deleted Job stops its controller, not its pod
        finally:
            state.active_pod = None
            await self._client.patch_status(state.job, {"active": None})

    async def _create_pod(self, state: JobState) -> Body | None:
        """POST the Job's next pod; a refusal (a ResourceQuota, a webhook) is a FailedCreate event in Kubernetes,
        retried with a backoff and never counted against backoffLimit: the Job stays active without a pod."""
        path = f"/api/v1/namespaces/{state.job['metadata']['namespace']}/pods"
        while True:
            try:
                return await self._client.request("POST", path, pod_for(state.job))
            except ApiRefused:
                await asyncio.sleep(CREATE_RETRY_SECONDS)

    async def _finish(self, state: JobState, kind: str, reason: str, message: str) -> None:
        """The interim condition (SuccessCriteriaMet or FailureTarget), then the final one, as Kubernetes 1.31+."""
        if kind == "Complete":
            await self._set_condition(state, "SuccessCriteriaMet", reason, message, succeeded=1)
            await self._set_condition(state, kind, reason, message, completionTime=now())
        else:
            await self._set_condition(state, "FailureTarget", reason, message)
            await self._set_condition(state, kind, reason, message)

    async def _delete_active_pod(self, state: JobState) -> None:
        if state.active_pod:
            namespace = state.job["metadata"]["namespace"]
            await self._client.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{state.active_pod}")


def pod_for(job: Body) -> Body:
    """The Pod the Job controller creates from a Job's template; the scheduler binds it to a node later."""
    meta, template = job["metadata"], job["spec"]["template"]
    labels = {**template.get("metadata", {}).get("labels", {}), "job-name": meta["name"],
              "batch.kubernetes.io/job-name": meta["name"], "controller-uid": meta["uid"],
              "batch.kubernetes.io/controller-uid": meta["uid"]}
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
             "controller": True, "blockOwnerDeletion": True}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": f"{meta['name']}-", "labels": labels, "ownerReferences": [owner],
                         "annotations": template.get("metadata", {}).get("annotations", {})},
            "spec": dict(template["spec"])}


def failure_rule(job: Body, outcome: PodOutcome) -> tuple[str, int]:
    """The action of the first podFailurePolicy rule that matches the failed pod (Count when none does)."""
    container = first_container(job)["name"]
    for index, rule in enumerate((job["spec"].get("podFailurePolicy") or {}).get("rules", [])):
        codes = rule.get("onExitCodes")
        if codes and outcome.code is not None and codes.get("containerName") in (None, container) \
                and (outcome.code in codes["values"]) == (codes["operator"] == "In"):
            return rule["action"], index
        for pattern in rule.get("onPodConditions") or []:
            if any(c["type"] == pattern["type"] and c.get("status") == pattern.get("status", "True")
                   for c in outcome.conditions):
                return rule["action"], index
    return "Count", -1


def first_container(job: Body) -> Body:
    return job["spec"]["template"]["spec"]["containers"][0]
