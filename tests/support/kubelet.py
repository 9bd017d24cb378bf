"""Plays the kubelet (and, through tests/support/job_controller.py, the Job controller) for end-to-end tests
against the emulated API server.

Nothing behind tests/support/kube_emulator.py runs pods. `Kubelet` runs, for each Job's pod, the first container's
`command` + `args` as a local process (env resolved from the emulator's Secrets and ConfigMaps; mounted paths, the
`terminationMessagePath` included, mapped to local stand-ins: a directory per emptyDir and pod, one per
PersistentVolumeClaim shared by all pods), keeps its output as the pod log, and reports the pod's life through the
/status subresource: the termination message (or the log tail under FallbackToLogsOnError), OOMKilled, and the
waiting reasons of pods that cannot start. Deleting a pod stops its process (SIGTERM, then SIGKILL after the grace
period); a pod deleted gracefully (`kube.faults.graceful_deletion`) reports how its container ended before the
kubelet removes it. A small volume controller binds PersistentVolumeClaims.

Faults (tests/support/pod_faults.py, `kubelet.faults`): Unschedulable, ErrImagePull/ImagePullBackOff, OOM kills,
evictions through the Eviction API, claims left unbound; derived from the pod spec: CreateContainerConfigError for a
missing Secret, ConfigMap or key, Unschedulable for a missing or unbound PersistentVolumeClaim.

Used by the `kubelet` fixture of tests/support/cluster.py; tests read `max_concurrency`, `jobs_seen`, `runs` and
`faults.injected`. Ignored: `workingDir`, resources, node selection, security contexts.
"""

import asyncio
import base64
import collections
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from api_client import ControllerClient, object_path
from job_controller import JobController, PodOutcome
from kube_emulator import BackgroundLoop, Body, EmulatorServer, now
from pod_faults import UNBOUND_CLAIM, UNSCHEDULABLE, PodFaults

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
MESSAGE_LIMIT = 4096  # bytes of the termination file a kubelet reports
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048  # what FallbackToLogsOnError reports
TERMINATION_LOG = "/dev/termination-log"  # the default terminationMessagePath
NODE = "emulated-node"
POLL = 0.2  # seconds between two looks at a pod that waits (for a Secret, a node, an image)
KUBELET_CONDITIONS = {"PodScheduled", "Ready", "Initialized", "ContainersReady"}  # the others are the server's


class ConfigError(Exception):
    """The env refers to a missing Secret, ConfigMap or key: the kubelet waits (CreateContainerConfigError)."""


class Kubelet:
    """The kubelet, volume controller and Job controller of an emulated cluster, in their own thread and loop."""

    def __init__(self, server: EmulatorServer, workdir: Path, *, entrypoint: Sequence[str] = (),
                 retry_delay: float = 0.0, max_grace_period: float = 2.0, seed: int = 0,
                 commands: dict[str, Sequence[str]] | None = None, env: dict[str, str] | None = None,
                 max_running: int | None = None) -> None:
        self.runs: collections.Counter[str] = collections.Counter()  # processes started per Job name
        self.max_concurrency = 0  # most pod processes running at once
        self.errors: list[BaseException] = []  # failures of the kubelet itself; the fixture fails the test on any
        self.faults = PodFaults(seed)
        self._server, self._workdir = server, workdir
        self._entrypoint, self._retry_delay, self._max_grace = list(entrypoint), retry_delay, max_grace_period
        self._commands = {name: list(argv) for name, argv in (commands or {}).items()}  # stand-ins for executables
        self._node_env = dict(env or {})  # what every pod's process inherits, under the pod's own env
        self._max_running = max_running  # the node's room: further pods wait in ContainerCreating
        self._running: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self._conditions: dict[tuple[str, str], list[Body]] = {}  # what the server says of each pod
        self._gone: set[tuple[str, str]] = set()  # pods deleted, or marked for deletion
        self._removed: set[tuple[str, str]] = set()  # pods deleted for good
        self._oom_killed: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = BackgroundLoop("kubelet")
        self._loop.run(self._start())

    @property
    def jobs_seen(self) -> list[str]:
        """Every Job name the Job controller saw, in the order first seen."""
        return self.controller.jobs_seen

    @property
    def running(self) -> int:
        """How many pod processes are running now."""
        return len(self._running)

    def stop(self) -> None:
        """Kill every pod process and stop watching; safe to call once at teardown."""
        self._loop.run(self._stop(), timeout=30)
        self._loop.close()

    async def _start(self) -> None:
        self._slots = asyncio.Semaphore(self._max_running or 2**30)
        self._client = ControllerClient(self._server.url)
        self.controller = JobController(self._client, self, self._retry_delay)
        self.spawn(self._client.watch("/apis/batch/v1/jobs", self.controller.on_job))
        self.spawn(self._client.watch("/api/v1/pods", self._on_pod))
        self.spawn(self._client.watch("/api/v1/persistentvolumeclaims", self._on_claim))

    async def _stop(self) -> None:
        for process in self._running.values():
            self._signal(process, signal.SIGKILL)
        await asyncio.gather(*(process.wait() for process in self._running.values()))  # reaped before the loop closes
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(task.exception())  # type: ignore[arg-type]

    # Watch events.

    async def _on_pod(self, event: str, pod: Body) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self._conditions[key] = (pod.get("status") or {}).get("conditions") or []
        if event == "DELETED" or pod["metadata"].get("deletionTimestamp"):
            if key not in self._gone and key in self._running:
                grace = min(pod["metadata"].get("deletionGracePeriodSeconds",
                                                pod["spec"].get("terminationGracePeriodSeconds", 30)), self._max_grace)
                self.spawn(self._stop_process(self._running[key], grace))
            self._gone.add(key)
        if event == "DELETED":
            self._removed.add(key)

    async def _on_claim(self, event: str, claim: Body) -> None:
        if event != "DELETED":
            await self._bind(claim)

    async def _bind(self, claim: Body) -> bool:
        """The volume controller: a claim is bound at once unless an unbound-claim fault holds it."""
        if (claim.get("status") or {}).get("phase") == "Bound":
            return True
        if self.faults.holds_claim(claim["metadata"]["name"]):
            return False
        requested = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
        await self._client.patch_status(claim, {"phase": "Bound", "accessModes": claim["spec"].get("accessModes", []),
                                                "capacity": requested})
        return True

    # A pod's life.

    async def run_pod(self, pod: Body) -> PodOutcome:
        """Schedule the pod, pull its image, resolve its env, run its container, report how it ended."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        container = pod["spec"]["containers"][0]
        code = None
        if await self._wait_while(pod, lambda: self._unschedulable(pod)):
            await self._bind_pod(pod)
            if await self._wait_while(pod, lambda: self._image_missing(pod, container)):
                async with self._slots:
                    code = await self._run_container(pod, container)
        if key in self._gone and key not in self._removed:
            await self._client.request("DELETE", object_path(pod), gracePeriodSeconds="0")  # the pod has stopped
        return PodOutcome(code, key[1], self._conditions.get(key, []))

    async def _wait_while(self, pod: Body, waiting: Callable[[], Awaitable[Body | None]]) -> bool:
        """Report the pod's waiting status for as long as `waiting` gives one; False if the pod went meanwhile."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        reported = None
        while key not in self._gone:
            status = await waiting()
            if status is None:
                return True
            if status != reported:
                await self._client.patch_status(pod, status)
                reported = status
            await asyncio.sleep(POLL)
        return False

    async def _unschedulable(self, pod: Body) -> Body | None:
        """The scheduler's verdict: None when the pod fits, else its Pending status with the scheduler's message."""
        message = None
        for volume in pod["spec"].get("volumes") or []:
            name = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if name and message is None:
                claim = await self._client.request(
                    "GET", f"/api/v1/namespaces/{pod['metadata']['namespace']}/persistentvolumeclaims/{name}")
                message = f'persistentvolumeclaim "{name}" not found' if claim is None else (
                    None if await self._bind(claim) else UNBOUND_CLAIM)
        if message is None and (rule := self.faults.hit("unschedulable", pod)) is not None:
            message = rule.message or UNSCHEDULABLE
        if message is None:
            return None
        scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                     "lastProbeTime": None, "lastTransitionTime": now()}
        return {"phase": "Pending", "conditions": [scheduled, *self._server_conditions(pod)]}

    async def _bind_pod(self, pod: Body) -> None:
        await self._client.request("PATCH", object_path(pod), {"spec": {"nodeName": NODE}})
        pod["spec"]["nodeName"] = NODE

    async def _image_missing(self, pod: Body, container: Body) -> Body | None:
        """ErrImagePull, then ImagePullBackOff, for as long as an image-pull fault holds the pod."""
        if self.faults.hit("image-pull", pod) is None:
            return None
        image = container.get("image", "")
        backing_off = int(asyncio.get_running_loop().time() / 1.0) % 2 == 1
        reason, message = ("ImagePullBackOff", f'Back-off pulling image "{image}"') if backing_off else (
            "ErrImagePull", f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and '
                            f'unpack image "{image}": failed to resolve reference "{image}": {image}: not found')
        return self._pod_status(pod, "Pending", container, {"waiting": {"reason": reason, "message": message}})

    async def _run_container(self, pod: Body, container: Body) -> int | None:
        """Run the container as a local process and report its life in the pod's status; its exit code."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        creating = {"waiting": {"reason": "ContainerCreating"}}
        await self._client.patch_status(pod, self._pod_status(pod, "Pending", container, creating))
        env = await self._wait_for_env(pod, container)
        if env is None:
            return None
        workdir = self._workdir / f"{key[0]}-{key[1]}"
        mounts = self._mounts(pod, container, workdir)
        termination, log = mounts[container.get("terminationMessagePath", TERMINATION_LOG)], workdir / "log"
        self._server.emulator.pod_logs[key] = log  # read by the emulator for pods/log (a dict write is atomic)
        declared = {var["name"] for var in container.get("env") or []}  # the node's own variables stay as they are
        env = {name: remap(value, mounts) if name in declared else value for name, value in env.items()}
        if key in self._gone:  # deleted while its environment was read: a kubelet starts no container for it
            return None
        started = now()
        process = await self._start_process(self._argv(container, env, mounts), env, workdir, log)
        code = 128 if process is None else await self._follow_process(pod, container, process, started)
        if key not in self._removed:  # a pod shutting down gracefully still reports how its container ended
            message = self._message(container, termination, log, code)
            await self._report_exit(pod, container, code, started, message, oom=key in self._oom_killed)
        return code

    async def _follow_process(self, pod: Body, container: Body, process: asyncio.subprocess.Process,
                              started: str) -> int:
        """Count the running process, report it Running, arm its faults, and wait for its exit code."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self._running[key] = process
        if key in self._gone:  # deleted while its process was starting: the deletion found nothing to stop
            self._signal(process, signal.SIGKILL)
        self.runs[pod["metadata"]["labels"].get("job-name", key[1])] += 1
        self.max_concurrency = max(self.max_concurrency, len(self._running))
        running = self._pod_status(pod, "Running", container, {"running": {"startedAt": started}})
        await self._client.patch_status(pod, {**running, "startTime": started})
        self._arm_faults(pod, process)
        returncode = await process.wait()
        del self._running[key]
        return 128 - returncode if returncode < 0 else returncode  # killed by a signal: 128 + its number

    def _arm_faults(self, pod: Body, process: asyncio.subprocess.Process) -> None:
        """Schedule the OOM kill or eviction a fault has in store for this running pod."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        loop = asyncio.get_running_loop()
        if (oom := self.faults.hit("oom-kill", pod)) is not None:
            def kill() -> None:
                if process.returncode is None:
                    self._oom_killed.add(key)
                    self._signal(process, signal.SIGKILL)
            loop.call_later(oom.after, kill)
        if (evict := self.faults.hit("evict", pod)) is not None:
            eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                        "metadata": {"name": key[1], "namespace": key[0]}}
            loop.call_later(evict.after, lambda: process.returncode is None and self.spawn(
                self._client.request("POST", f"{object_path(pod)}/eviction", eviction)))

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

    async def _report_exit(self, pod: Body, container: Body, code: int, started: str, message: str,
                           oom: bool = False) -> None:
        reason = "OOMKilled" if oom else "Completed" if code == 0 else "Error"
        terminated = {"exitCode": code, "reason": reason, "message": message, "startedAt": started,
                      "finishedAt": now()}
        phase = "Succeeded" if code == 0 else "Failed"
        await self._client.patch_status(pod, self._pod_status(pod, phase, container, {"terminated": terminated}))

    def _server_conditions(self, pod: Body) -> list[Body]:
        """Conditions the API server set on the pod (DisruptionTarget): a status patch must not drop them."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        return [c for c in self._conditions.get(key, []) if c["type"] not in KUBELET_CONDITIONS]

    def _pod_status(self, pod: Body, phase: str, container: Body, state: Body) -> Body:
        running = phase == "Running"
        conditions = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": str(running)},
                      *self._server_conditions(pod)]
        return {"phase": phase, "conditions": conditions,
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
        """command + args (or the image's entrypoint), $(VAR)s expanded, mounted paths pointed at their stand-ins,
        and an executable named in `commands` replaced by its stand-in (e.g. a fast fake of `lensllm`)."""
        argv = [*(container.get("command") or self._entrypoint), *(container.get("args") or [])]
        argv = [remap(expand(arg, env), mounts) for arg in argv]
        return [*self._commands[argv[0]], *argv[1:]] if argv and argv[0] in self._commands else argv

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
        env: dict[str, str] | None = None

        async def missing() -> Body | None:
            nonlocal env
            try:
                env = await self._env(pod, container)
            except ConfigError as exc:
                waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                return self._pod_status(pod, "Pending", container, waiting)
            return None

        return env if await self._wait_while(pod, missing) else None

    async def _env(self, pod: Body, container: Body) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)  # the venv's: `python` and `lensllm` resolve there first
        env = {**os.environ, **OFFLINE, **self._node_env, "HOSTNAME": pod["metadata"]["name"],
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
        kind_name = "Secret" if kind == "secrets" else "ConfigMap"
        raise ConfigError(f"couldn't find key {ref['key']} in {kind_name} {pod['metadata']['namespace']}/{ref['name']}")

    async def _data(self, namespace: str, kind: str, ref: Body) -> dict[str, str] | None:
        """A Secret's (decoded) or ConfigMap's data; None if it is missing but optional."""
        obj = await self._client.request("GET", f"/api/v1/namespaces/{namespace}/{kind}/{ref['name']}")
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
