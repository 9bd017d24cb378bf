"""The emulated cluster's controllers' view of the API server: plain HTTP calls and informer-style watches.

tests/support/job_controller.py and tests/support/kubelet.py use one `ControllerClient` (an aiohttp session in the
kubelet's loop). Its watches behave like a client-go informer, so the controllers survive the faults the emulator
injects: a watch that ends is resumed from the last resourceVersion seen, a watch whose resourceVersion expired
(410) lists again and reports what changed meanwhile, and a refused request is retried after a short pause.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

Body = dict[str, Any]
Handler = Callable[[str, Body], Awaitable[None]]
USER_AGENT = "emulated-kubelet/1.0"  # fault rules can tell the cluster's own controllers from the operator
RETRY_PAUSE = 0.2


class ApiRefused(Exception):
    """The API server answered with an error a controller cannot shrug off."""


class ControllerClient:
    """HTTP calls to the emulated API server on behalf of the cluster's own controllers."""

    def __init__(self, url: str) -> None:
        # No overall timeout (watches stay open); lines up to 4 MiB (a watch event is one line).
        self._session = aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=None), read_bufsize=2**22,
                                              headers={"User-Agent": USER_AGENT})

    async def close(self) -> None:
        await self._session.close()

    async def request(self, method: str, path: str, body: Any = None, **params: str) -> Body | None:
        """One API call, retried while the server is briefly unavailable (429, 5xx); None when the object is gone
        (a controller shrugs at that); `ApiRefused` for anything else."""
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        data = None if body is None else json.dumps(body)
        while True:
            async with self._session.request(method, path, data=data, params=params,
                                             headers={"Content-Type": content_type}) as response:
                if response.status == 404:
                    return None
                if response.status == 429 or response.status >= 500:
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                if response.status >= 400:
                    raise ApiRefused(f"{method} {path} answered {response.status}: {await response.text()}")
                return await response.json()

    async def patch_status(self, obj: Body, status: Body) -> None:
        await self.request("PATCH", f"{object_path(obj)}/status", {"status": status})

    async def watch(self, path: str, handle: Handler) -> None:
        """Follow `path` for good: list, then watch from the list's resourceVersion, resume after every end."""
        seen: dict[tuple[str, str], Body] = {}
        since: str | None = None
        while True:
            if since is None:
                since = await self._relist(path, handle, seen)
            try:
                since = await self._follow(path, since, handle, seen)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(RETRY_PAUSE)

    async def _relist(self, path: str, handle: Handler, seen: dict[tuple[str, str], Body]) -> str:
        """List everything; what vanished since the last look is reported DELETED, the rest ADDED or MODIFIED."""
        listed = await self.request("GET", path)
        assert listed is not None, f"{path} cannot be listed"
        current = {key_of(item): item for item in listed["items"]}
        for key in set(seen) - set(current):
            await handle("DELETED", seen.pop(key))
        for key, item in current.items():
            event = "MODIFIED" if key in seen else "ADDED"
            seen[key] = item
            await handle(event, item)
        return str(listed["metadata"]["resourceVersion"])

    async def _follow(self, path: str, since: str, handle: Handler, seen: dict[tuple[str, str], Body]) -> str | None:
        """One watch request; the resourceVersion to resume from, or None when the history expired (list again)."""
        async with self._session.get(path, params={"watch": "true", "resourceVersion": since}) as response:
            if response.status >= 400:
                await asyncio.sleep(RETRY_PAUSE)
                return since
            async for line in response.content:
                event = json.loads(line)
                if event["type"] == "ERROR":
                    return None if event["object"].get("code") == 410 else since
                body = event["object"]
                since = body["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    seen.pop(key_of(body), None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    seen[key_of(body)] = body
                if event["type"] != "BOOKMARK":
                    await handle(event["type"], body)
        return since


def key_of(body: Body) -> tuple[str, str]:
    return body["metadata"].get("namespace", ""), body["metadata"]["name"]


def object_path(obj: Body) -> str:
    """The API path of a namespaced Job, Pod or PersistentVolumeClaim."""
    meta = obj["metadata"]
    prefix, plural = {"Job": ("/apis/batch/v1", "jobs"), "Pod": ("/api/v1", "pods"),
                      "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims")}[obj["kind"]]
    return f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
