"""The few Kubernetes API calls the operator makes, as async functions.

The official client is synchronous, so every call runs in a worker thread; kopf's event
loop never blocks on the network. "Already exists" on create and "not found" on read
are ordinary answers here, not errors; `transient` tells the failures worth retrying from
the refusals that retrying cannot change.
"""

import asyncio
import concurrent.futures
import functools
import json
from typing import Any

import urllib3
import yaml

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from lensllm import __version__
from lensllm.errors import LensLLMError
from lensllm.selection.spec import GROUP, PLURAL, VERSION

KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta1"
# API server audit logs (and the tests' request log) tell the operator's calls apart by this.
USER_AGENT = f"lensllm-operator/{__version__}"


# Calls in flight at once. The client is synchronous: each call holds a worker thread and a pooled
# connection, and the defaults (cpus + 4 threads, 4 connections) queue a busy operator's calls.
CONCURRENT_CALLS = 16


class NoCluster(LensLLMError):
    """Neither a pod's service account nor a kubeconfig says which API server to talk to."""


def login() -> None:
    """In a pod use the service account; elsewhere the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException as in_pod:
        try:
            config.load_kube_config()
        except (config.ConfigException, yaml.YAMLError, OSError) as kubeconfig:
            why = " ".join(str(kubeconfig).split())  # a YAML error spans lines
            raise NoCluster(f"no cluster to connect to: not in a pod ({in_pod}) and no usable kubeconfig ({why})") from None
    settings = client.Configuration.get_default_copy()
    settings.connection_pool_maxsize = CONCURRENT_CALLS
    client.Configuration.set_default(settings)


def use_worker_threads() -> None:
    """Give the running event loop's default executor (asyncio.to_thread) one thread per concurrent call."""
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENT_CALLS, thread_name_prefix="kube")
    )


@functools.cache
def _api_client() -> client.ApiClient:
    api = client.ApiClient()
    api.user_agent = USER_AGENT
    return api


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(_api_client())


def _batch() -> client.BatchV1Api:
    return client.BatchV1Api(_api_client())


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(_api_client())


def _json(response: Any) -> Any:
    """The body of a call made with _preload_content=False.

    Answers are read as plain JSON, never as the client's typed models: their client-side
    validation raises on objects the API server accepted (an affinity term it considers
    incomplete), which would wedge every reconciliation of the selection.
    """
    return json.loads(response.data or b"null")


def transient(err: BaseException) -> bool:
    """A failure that retrying later can fix: throttling, a server error, a broken connection."""
    if isinstance(err, ApiException):
        return err.status in (0, 408, 429) or err.status >= 500
    return isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def error_message(err: BaseException) -> str:
    """The API server's message of a refusal (its Status body), else the error itself."""
    if isinstance(err, ApiException):
        try:
            return str(json.loads(err.body)["message"])
        except (TypeError, ValueError, KeyError):
            return f"{err.status} {err.reason}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


async def get_selection(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return await asyncio.to_thread(_custom().get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


async def patch_selection_status(namespace: str, name: str, uid: str, status: dict[str, Any]) -> bool:
    """Merge-patch the status of the selection `uid`; False when the selection is gone.

    The uid makes the API server refuse the write (409) when the selection was deleted and created
    again under its name since it was read: a status built for the old one must not land on the new one.
    """
    body = {"metadata": {"uid": uid}, "status": status}
    try:
        await asyncio.to_thread(
            _custom().patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL, name, body
        )
    except ApiException as err:
        if err.status == 404:  # deleted meanwhile: nothing left to report to
            return False
        raise
    return True


async def list_jobs(namespace: str, selector: str) -> list[dict[str, Any]]:
    answer = await asyncio.to_thread(
        _batch().list_namespaced_job, namespace, label_selector=selector, _preload_content=False
    )
    return _json(answer).get("items") or []


async def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    answer = await asyncio.to_thread(
        _core().list_namespaced_pod, namespace, label_selector=selector, _preload_content=False
    )
    return _json(answer).get("items") or []


async def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _json(await asyncio.to_thread(_batch().read_namespaced_job, name, namespace, _preload_content=False))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


async def create_job(namespace: str, job: dict[str, Any]) -> bool:
    """Create the Job; False when one of that name already exists (the caller checks whose it is)."""
    try:
        await asyncio.to_thread(_batch().create_namespaced_job, namespace, job, _preload_content=False)
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


async def set_job_ttl(namespace: str, name: str, seconds: int) -> None:
    """Let the TTL controller collect a finished Job whose result has been recorded."""
    body = {"spec": {"ttlSecondsAfterFinished": seconds}}
    try:
        await asyncio.to_thread(_batch().patch_namespaced_job, name, namespace, body, _preload_content=False)
    except ApiException as err:
        if err.status != 404:
            raise


async def delete_job(namespace: str, name: str) -> None:
    """Delete a Job and, in the background, its pods (a candidate that will never run must not start later)."""
    try:
        await asyncio.to_thread(
            _batch().delete_namespaced_job, name, namespace, propagation_policy="Background", _preload_content=False
        )
    except ApiException as err:
        if err.status != 404:
            raise


async def list_workloads(namespace: str, selector: str) -> list[dict[str, Any]] | None:
    """Kueue's Workloads matching `selector`: none where Kueue is not installed, None where they are not readable."""
    try:
        answer = await asyncio.to_thread(
            _custom().list_namespaced_custom_object, KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads",
            label_selector=selector, _preload_content=False,
        )
    except ApiException as err:
        if err.status == 404:  # no such resource: Kueue's CRDs are not installed
            return []
        if err.status == 403:
            return None
        raise
    return _json(answer).get("items") or []
