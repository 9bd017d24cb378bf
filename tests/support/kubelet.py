"""Plays the Job controller and the kubelet for end-to-end tests against the emulated API server.

Nothing behind tests/support/kube_emulator.py runs Jobs. `Kubelet` watches Jobs through the emulator's HTTP API
and does for each what a cluster would: creates its Pod (template labels plus `job-name`, an ownerReference to
the Job), runs the first container's `command` + `args` as a local process (env resolved from the emulator's
Secrets and ConfigMaps; mounted paths, `terminationMessagePath` included, mapped to local stand-ins), keeps its
output as the pod log, and reports Pod and Job status back through the /status subresources: the termination
message (or the log tail under FallbackToLogsOnError), retries up to `backoffLimit`, `podFailurePolicy` exit-code
rules, `suspend`, `activeDeadlineSeconds` and `ttlSecondsAfterFinished`. Deleting a Pod (directly, or through the
garbage collector when its Job goes) stops its process.

Used by the `kubelet` fixture of tests/support/cluster.py; tests read `max_concurrency`, `jobs_seen` and `runs`.
Simplified: one pod per Job (parallelism and completions are taken as 1), no retry back-off delay by default,
pod disruption conditions and the job-tracking finalizer are not simulated, `workingDir`, resources, scheduling
constraints and security contexts are ignored.
"""

import asyncio
import base64
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kube_emulator import BackgroundLoop, Body, EmulatorServer, now

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
MESSAGE_LIMIT = 4096  # bytes of the termination file a kubelet reports
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048  # what FallbackToLogsOnError reports
TERMINATION_LOG = "/dev/termination-log"  # the default terminationMessagePath


class ConfigError(Exception):
    """The env refers to a missing Secret, ConfigMap or key: the kubelet waits (CreateContainerConfigError)."""


@dataclass
class JobState:
    """What the Job controller keeps per Job between watch events."""

    job: Body
    suspended: bool | None = None  # None until the first event is seen
    unsuspended: asyncio.Event = field(default_factory=asyncio.Event)
    conditions: list[Body] = field(default_factory=list)
    active_pod: str | None = None
    task: asyncio.Task[None] | None = None


class Kubelet:
    """The Job controller and kubelet of an emulated cluster, in its own thread and event loop."""

    def __init__(self, server: EmulatorServer, workdir: Path, *, entrypoint: Sequence[str] = (),
                 retry_delay: float = 0.0, max_grace_period: float = 2.0) -> None:
        self.jobs_seen: list[str] = []  # every Job name, in the order first seen
        self.runs: collections.Counter[str] = collections.Counter()  # processes started per Job name
        self.max_concurrency = 0  # most pod processes running at once
        self.errors: list[BaseException] = []  # failures of the kubelet itself; the fixture fails the test on any
        self._server, self._workdir = server, workdir
        self._entrypoint, self._retry_delay, self._max_grace = list(entrypoint), retry_delay, max_grace_period
        self._jobs: dict[tuple[str, str], JobState] = {}
        self._running: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self._deleted_pods: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = BackgroundLoop("kubelet")
        self._loop.run(self._start())

    @property
    def running(self) -> int:
        """How many pod processes are running now."""
        return len(self._running)

    def stop(self) -> None:
        """Kill every pod process and stop watching; safe to call once at teardown."""
        self._loop.run(self._stop(), timeout=30)
        self._loop.close()

    async def _start(self) -> None:
        # No overall timeout (watches stay open); lines up to 4 MiB (a watch event is one line).
        self._session = aiohttp.ClientSession(self._server.url, timeout=aiohttp.ClientTimeout(total=None),
                                              read_bufsize=2**22)
        self._spawn(self._watch("/apis/batch/v1/jobs", self._on_job))
        self._spawn(self._watch("/api/v1/pods", self._on_pod))

    async def _stop(self) -> None:
        for process in self._running.values():
            self._signal(process, signal.SIGKILL)
        await asyncio.gather(*(process.wait() for process in self._running.values()))  # reaped before the loop closes
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._session.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(task.exception())  # type: ignore[arg-type]

    # The API, as a controller uses it.

    async def _watch(self, path: str, handle: Callable[[str, Body], Awaitable[None]]) -> None:
        """Follow a watch for good, resuming from the last resourceVersion seen when the stream ends."""
        since: str | None = None
        while True:
            params = {"watch": "true", **({"resourceVersion": since} if since else {})}
            async with self._session.get(path, params=params) as response:
                response.raise_for_status()
                async for line in response.content:
                    event = json.loads(line)
                    since = event["object"]["metadata"]["resourceVersion"]
                    await handle(event["type"], event["object"])

    async def _request(self, method: str, path: str, body: Any = None, **params: str) -> Body | None:
        """One API call; None when the object is gone (a controller shrugs at that), an error for anything else."""
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        data = None if body is None else json.dumps(body)
        async with self._session.request(method, path, data=data, params=params,
                                         headers={"Content-Type": content_type}) as response:
            if response.status == 404:
                return None
            if response.status >= 400:
                raise RuntimeError(f"{method} {path} answered {response.status}: {await response.text()}")
            return await response.json()

    async def _patch_status(self, obj: Body, status: Body) -> None:
        meta = obj["metadata"]
        prefix = "/apis/batch/v1" if obj["kind"] == "Job" else "/api/v1"
        plural = "jobs" if obj["kind"] == "Job" else "pods"
        await self._request("PATCH", f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}/status",
                            {"status": status})

    # The Job controller.

    async def _on_job(self, event: str, job: Body) -> None:
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        if key[1] not in self.jobs_seen:
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
            state.task = self._spawn(self._control(state))
        state.job = job
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
        await self._patch_status(state.job, {"conditions": state.conditions, **extra})

    async def _control(self, state: JobState) -> None:
        """Run the Job to its end within activeDeadlineSeconds, report it, then honour ttlSecondsAfterFinished."""
        await state.unsuspended.wait()
        await self._patch_status(state.job, {"startTime": now()})
        try:
            async with asyncio.timeout(state.job["spec"].get("activeDeadlineSeconds")):
                outcome = await self._attempts(state)
        except TimeoutError:
            await self._delete_active_pod(state)
            outcome = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        await self._finish(state, *outcome)
        ttl = state.job["spec"].get("ttlSecondsAfterFinished")
        if ttl is not None:
            await asyncio.sleep(ttl)
            meta = state.job["metadata"]
            await self._request("DELETE", f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}",
                                propagationPolicy="Background")

    async def _attempts(self, state: JobState) -> tuple[str, str, str]:
        """Start pods until one succeeds, a FailJob rule matches, or failures exceed backoffLimit."""
        failures = 0
        while True:
            await state.unsuspended.wait()
            code, pod = await self._attempt(state)
            if not state.unsuspended.is_set():
                continue  # stopped by a suspend: not a failure
            if code == 0:
                return "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
            action, index = self._failure_rule(state.job, code)
            if action != "Ignore":
                failures += 1
                await self._patch_status(state.job, {"failed": failures})
            if action == "FailJob":
                container, namespace = first_container(state.job)["name"], state.job["metadata"]["namespace"]
                return ("Failed", "PodFailurePolicy", f"Container {container} for pod {namespace}/{pod} failed "
                        f"with exit code {code} matching FailJob rule at index {index}")
            if failures > state.job["spec"].get("backoffLimit", 6):
                return "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            await asyncio.sleep(self._retry_delay)

    async def _attempt(self, state: JobState) -> tuple[int | None, str]:
        """One pod, created through the API and run by the kubelet: its exit code (None if it never ran), its name."""
        meta = state.job["metadata"]
        pod = await self._request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods", self._pod_for(state.job))
        if pod is None:
            return None, ""
        name = state.active_pod = pod["metadata"]["name"]
        await self._patch_status(state.job, {"active": 1})
        run = self._spawn(self._run_pod(pod))
        try:
            return await asyncio.shield(run), name  # a deleted Job stops its controller, not its pod
        finally:
            state.active_pod = None
            await self._patch_status(state.job, {"active": None})

    @staticmethod
    def _pod_for(job: Body) -> Body:
        meta, template = job["metadata"], job["spec"]["template"]
        labels = {**template.get("metadata", {}).get("labels", {}), "job-name": meta["name"],
                  "batch.kubernetes.io/job-name": meta["name"], "controller-uid": meta["uid"],
                  "batch.kubernetes.io/controller-uid": meta["uid"]}
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": f"{meta['name']}-", "labels": labels, "ownerReferences": [owner],
                             "annotations": template.get("metadata", {}).get("annotations", {})},
                "spec": {**template["spec"], "nodeName": "emulated-node"}}

    @staticmethod
    def _failure_rule(job: Body, code: int | None) -> tuple[str, int]:
        """The action of the first podFailurePolicy rule whose onExitCodes match; disruption rules never match."""
        container = first_container(job)["name"]
        rules = (job["spec"].get("podFailurePolicy") or {}).get("rules", [])
        for index, rule in enumerate(rules):
            codes = rule.get("onExitCodes")
            if codes and code is not None and codes.get("containerName") in (None, container) \
                    and (code in codes["values"]) == (codes["operator"] == "In"):
                return rule["action"], index
        return "Count", -1

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
            await self._request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{state.active_pod}")

    # The kubelet.

    async def _on_pod(self, event: str, pod: Body) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if event == "DELETED":
            self._deleted_pods.add(key)
            if key in self._running:
                grace = min(pod["spec"].get("terminationGracePeriodSeconds", 30), self._max_grace)
                self._spawn(self._stop_process(self._running[key], grace))

    async def _stop_process(self, process: asyncio.subprocess.Process, grace: float) -> None:
        self._signal(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            self._signal(process, signal.SIGKILL)

    @staticmethod
    def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)  # the whole group: the command may have started children

    async def _run_pod(self, pod: Body) -> int | None:
        """Run the pod's first container as a local process and report its life in the pod's status."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        container = pod["spec"]["containers"][0]
        creating = {"waiting": {"reason": "ContainerCreating"}}
        await self._patch_status(pod, self._pod_status("Pending", container, creating))
        env = await self._wait_for_env(pod, container)
        if env is None:
            return None
        workdir = self._workdir / f"{key[0]}-{key[1]}"
        mounts = self._mounts(pod, container, workdir)
        termination, log = mounts[container.get("terminationMessagePath", TERMINATION_LOG)], workdir / "log"
        self._server.emulator.pod_logs[key] = log  # read by the emulator for pods/log (a dict write is atomic)
        env = {name: remap(value, mounts) for name, value in env.items()}
        started = now()
        process = await self._start_process(self._argv(container, env, mounts), env, workdir, log)
        code = 128 if process is None else await self._follow_process(pod, container, process, started)
        if key not in self._deleted_pods:
            await self._report_exit(pod, container, code, started, self._message(container, termination, log, code))
        return code

    async def _follow_process(self, pod: Body, container: Body, process: asyncio.subprocess.Process,
                              started: str) -> int:
        """Count the running process, report it Running, and wait for its exit code."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self._running[key] = process
        self.runs[pod["metadata"]["labels"].get("job-name", key[1])] += 1
        self.max_concurrency = max(self.max_concurrency, len(self._running))
        running = self._pod_status("Running", container, {"running": {"startedAt": started}})
        await self._patch_status(pod, {**running, "startTime": started})
        returncode = await process.wait()
        del self._running[key]
        return 128 - returncode if returncode < 0 else returncode  # killed by a signal: 128 + its number

    async def _start_process(self, argv: list[str], env: dict[str, str], workdir: Path,
                             log: Path) -> asyncio.subprocess.Process | None:
        executable = shutil.which(argv[0], path=env["PATH"]) if argv else None
        with log.open("ab") as output:
            if executable is None:
                output.write(f"kubelet: cannot run {argv[:1]}: no such executable on PATH\n".encode())
                return None
            return await asyncio.create_subprocess_exec(
                executable, *argv[1:], env=env, cwd=workdir,
                stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)

    async def _report_exit(self, pod: Body, container: Body, code: int, started: str, message: str) -> None:
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message,
                      "startedAt": started, "finishedAt": now()}
        await self._patch_status(pod, self._pod_status("Succeeded" if code == 0 else "Failed", container,
                                                       {"terminated": terminated}))

    @staticmethod
    def _pod_status(phase: str, container: Body, state: Body) -> Body:
        running = phase == "Running"
        return {"phase": phase, "conditions": [{"type": "PodScheduled", "status": "True"},
                                               {"type": "Ready", "status": str(running)}],
                "containerStatuses": [{"name": container["name"], "image": container.get("image", ""),
                                       "imageID": "", "ready": running, "started": running, "restartCount": 0,
                                       "state": state}]}

    @staticmethod
    def _message(container: Body, termination: Path, log: Path, code: int) -> str:
        message = termination.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-LOG_TAIL_LINES:])
            message = tail.encode()[-LOG_TAIL_BYTES:].decode(errors="ignore")
        return message

    def _argv(self, container: Body, env: dict[str, str], mounts: dict[str, Path]) -> list[str]:
        """command + args (or the image's entrypoint), $(VAR)s expanded, mounted paths pointed at their stand-ins."""
        argv = [*(container.get("command") or self._entrypoint), *(container.get("args") or [])]
        return [remap(expand(arg, env), mounts) for arg in argv]

    def _mounts(self, pod: Body, container: Body, workdir: Path) -> dict[str, Path]:
        """Local stand-ins for the container's mounts: a directory per emptyDir (per pod) or claim (shared), and
        a file for the termination message. ConfigMap and Secret volumes stay empty directories."""
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            claim = (volumes.get(mount["name"], {}).get("persistentVolumeClaim") or {}).get("claimName")
            shared = self._workdir / "claims" / f"{pod['metadata']['namespace']}-{claim}"
            base = shared if claim else workdir / mount["name"]
            mounts[mount["mountPath"]] = base / mount.get("subPath", "")
            mounts[mount["mountPath"]].mkdir(parents=True, exist_ok=True)
        termination = mounts[container.get("terminationMessagePath", TERMINATION_LOG)] = workdir / "termination-log"
        workdir.mkdir(parents=True, exist_ok=True)
        termination.touch()
        return mounts

    async def _wait_for_env(self, pod: Body, container: Body) -> dict[str, str] | None:
        """The container's environment; while a reference is missing the pod waits, like a real one, until deleted."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        while key not in self._deleted_pods:
            try:
                return await self._env(pod, container)
            except ConfigError as exc:
                waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                await self._patch_status(pod, self._pod_status("Pending", container, waiting))
                await asyncio.sleep(0.2)
        return None

    async def _env(self, pod: Body, container: Body) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)  # the venv's: `python` and `lensllm` resolve there first
        env = {**os.environ, **OFFLINE, "HOSTNAME": pod["metadata"]["name"],
               "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
        namespace = pod["metadata"]["namespace"]
        for source in container.get("envFrom") or []:
            data = await self._data(namespace, *reference(source, "secretRef", "configMapRef"))
            env.update({source.get("prefix", "") + name: value for name, value in (data or {}).items()})
        for var in container.get("env") or []:
            if "valueFrom" in var:
                value = await self._value_from(pod, var["valueFrom"])
            else:
                value = expand(var.get("value", ""), env)
            if value is not None:
                env[var["name"]] = value
        return env

    async def _value_from(self, pod: Body, source: Body) -> str | None:
        if "fieldRef" in source:
            value: Any = pod
            for part in re.findall(r"[^.\[\]']+", source["fieldRef"]["fieldPath"]):
                value = value.get(part, "") if isinstance(value, dict) else ""
            return str(value)
        kind, ref = reference(source, "secretKeyRef", "configMapKeyRef")
        data = await self._data(pod["metadata"]["namespace"], kind, ref)
        if data is not None and ref["key"] in data:
            return data[ref["key"]]
        if ref.get("optional"):
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {kind[:-1]} {pod['metadata']['namespace']}/{ref['name']}")

    async def _data(self, namespace: str, kind: str, ref: Body) -> dict[str, str] | None:
        """A Secret's (decoded) or ConfigMap's data; None if it is missing but optional."""
        obj = await self._request("GET", f"/api/v1/namespaces/{namespace}/{kind}/{ref['name']}")
        if obj is None:
            if ref.get("optional"):
                return None
            raise ConfigError(f'{kind[:-1]} "{ref["name"]}" not found')
        if kind == "secrets":
            return {name: base64.b64decode(value).decode() for name, value in (obj.get("data") or {}).items()}
        return obj.get("data") or {}


def first_container(job: Body) -> Body:
    return job["spec"]["template"]["spec"]["containers"][0]


def reference(source: Body, secret_field: str, config_map_field: str) -> tuple[str, Body]:
    """Which kind of object an env source refers to (as its API plural), and the reference itself."""
    return ("secrets", source[secret_field]) if secret_field in source else ("configmaps", source[config_map_field])


def remap(value: str, mounts: dict[str, Path]) -> str:
    """Point a path under a mount (the whole value, or after `--flag=`) at the local directory standing in for it."""
    if not mounts:
        return value
    targets = "|".join(re.escape(target) for target in sorted(mounts, key=len, reverse=True))
    return re.sub(rf"(^|=)({targets})(?=/|$)", lambda m: m[1] + str(mounts[m[2]]), value)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are replaced, unknown references are kept, $$ escapes."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)
