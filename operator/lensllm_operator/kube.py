"""The few Kubernetes API calls the operator makes, as async functions.

The official client is synchronous, so every call runs in a worker thread; kopf's event
loop never blocks on the network. "Already exists" on create and "not found" on read
are ordinary answers here, not errors.
"""

import asyncio
import functools
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from lensllm import __version__
from lensllm.selection.spec import GROUP, PLURAL, VERSION

# API server audit logs (and the tests' request log) tell the operator's calls apart by this.
USER_AGENT = f"lensllm-operator/{__version__}"


def login() -> None:
    """In a pod use the service account; elsewhere the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


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


async def get_selection(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return await asyncio.to_thread(_custom().get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


async def patch_selection_status(namespace: str, name: str, status: dict[str, Any]) -> bool:
    """Merge `status` into the selection's status; False when the selection is gone."""
    body = {"status": status}
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
    jobs = await asyncio.to_thread(_batch().list_namespaced_job, namespace, label_selector=selector)
    return [_api_client().sanitize_for_serialization(j) for j in jobs.items]


async def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    pods = await asyncio.to_thread(_core().list_namespaced_pod, namespace, label_selector=selector)
    return [_api_client().sanitize_for_serialization(p) for p in pods.items]


async def create_job(namespace: str, job: dict[str, Any]) -> bool:
    """Create the Job; False when one of that name already exists (created before a restart)."""
    try:
        await asyncio.to_thread(_batch().create_namespaced_job, namespace, job)
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True
