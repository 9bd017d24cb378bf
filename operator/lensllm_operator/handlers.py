"""kopf handlers: each wakes `reconcile` for one selection; none of them decides anything itself.

Registered on import; `lensllm operator` imports this module and starts kopf. Events are
hints: the resync loop (`resync.py`, started here) reconciles every unfinished selection every
`resync_seconds` whatever happened, so a lost event or a failed call is healed within one
interval. No handler needs a finalizer: deleting a selection never waits for the operator.
"""

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import kopf

from lensllm.selection.spec import GROUP, KIND, PLURAL, VERSION
from lensllm_operator import kube
from lensllm_operator.jobs import SELECTION_LABEL
from lensllm_operator.reconcile import reconcile
from lensllm_operator.resync import Resync


@kopf.on.startup()
async def operator_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """When the operator starts (logged in by `run_operator`), serve metrics."""
    kube.use_worker_threads()
    # Events carry the outcome of every selection; keep info-level ones, not just warnings.
    settings.posting.level = logging.INFO
    # No cluster-wide namespace scanning: the namespaces to watch are given explicitly or all.
    settings.scanning.disabled = True
    # The watch stream should reconnect well before typical load balancer idle timeouts.
    settings.watching.server_timeout = 270
    # kopf gives up on a failing API call after ~1 minute of retries, and a watch that gives up ends
    # the whole operator: during an API server outage, keep retrying (every 30 s at most) instead.
    settings.networking.error_backoffs = ErrorBackoffs()
    # Only our Jobs stream in, filtered by the API server: a handler's labels= filter is applied
    # client-side, after every Job of the cluster has been sent to this pod.
    settings.watching.label_selectors["batch", "jobs"] = SELECTION_LABEL
    # kopf keeps its handler progress in annotations: the status belongs to us alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="lensllm.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="lensllm.io")
    for namespace in memo.ctx.config.namespaces:  # known before any selection: their counters start at once
        memo.ctx.metrics.start_counters(namespace)
    memo.ctx.metrics.serve(memo.ctx.config.metrics_port)
    memo.resync = Resync()
    logger.info("metrics on :%d/metrics, resync every %gs", memo.ctx.config.metrics_port, memo.ctx.config.resync_seconds)


@kopf.on.cleanup()
async def operator_cleanup(memo: kopf.Memo, **_: Any) -> None:
    """When the operator stops, stop the resync loop and the metrics server."""
    await memo.resync.stop()
    memo.ctx.metrics.stop_serving()


class ErrorBackoffs:
    """kopf's delays between retries of a failed API call (1, 1, 2, 3, 5, ... s), then 30 s forever.

    Iterable anew for every call, as kopf expects; it has no length, which tells kopf there is no last retry.
    """

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1, 1, 2, 3, 5, 8, 13, 21), itertools.repeat(30))


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def selection_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """When a selection appears, changes or the operator restarts, move it forward."""
    await reconcile(memo.ctx, namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={SELECTION_LABEL: kopf.PRESENT})
async def job_event(body: kopf.Body, namespace: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """When one of our Jobs changes (or is listed at start-up), reconcile the selection that owns it."""
    owner = next((r for r in body.metadata.get("ownerReferences") or [] if r.get("kind") == KIND), None)
    if owner is None:
        return
    try:
        await reconcile(memo.ctx, namespace, owner["name"])
    except kopf.TemporaryError as err:  # event handlers are not retried: the resync timer will be
        logger.warning("selection %s: %s", owner["name"], err)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def selection_event(
    type: str | None, namespace: str, name: str, body: kopf.Body, status: kopf.Status, memo: kopf.Memo,
    logger: logging.Logger, **_: Any
) -> None:
    """When a selection appears, changes or is gone, tell the resync loop; when gone, drop its metric series.

    A watch event rather than a delete handler: that would need a finalizer on every selection.
    """
    # Started from a handler, not at start-up: its task inherits kopf's context for posting Events.
    memo.resync.start_once(memo.ctx, logger)
    memo.resync.selections.track(namespace, name, status.get("phase"), deleted=type == "DELETED")
    if type == "DELETED":
        memo.ctx.forget(namespace, name, body.get("metadata", {}).get("uid"))
