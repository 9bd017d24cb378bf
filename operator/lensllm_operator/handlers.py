"""kopf handlers: each reacts to one kind of change and hands the selection to `reconcile`.

Registered on import; `lensllm operator` imports this module and starts kopf.
"""

import logging
from typing import Any

import kopf

from lensllm.selection.spec import GROUP, PLURAL, VERSION
from lensllm_operator import kube
from lensllm_operator.jobs import SELECTION_LABEL
from lensllm_operator.reconcile import Context, InvalidSpec, parse_spec, reconcile, reject


@kopf.on.startup()
def operator_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """When the operator starts, log in and serve metrics."""
    kube.login()
    # Events carry the outcome of every selection; keep info-level ones, not just warnings.
    settings.posting.level = logging.INFO
    # No cluster-wide namespace scanning: the namespaces to watch are given explicitly or all.
    settings.scanning.disabled = True
    # The watch stream should reconnect well before typical load balancer idle timeouts.
    settings.watching.server_timeout = 270
    # kopf keeps its handler progress in annotations: the status belongs to us alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="lensllm.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="lensllm.io")
    memo.ctx.metrics.serve(memo.ctx.config.metrics_port)
    logger.info("metrics on :%d/metrics", memo.ctx.config.metrics_port)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def selection_changed(body: kopf.Body, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> None:
    """When a selection appears, changes or the operator restarts, validate it and move it forward."""
    try:
        parse_spec(dict(spec))
    except InvalidSpec as err:
        await reject(memo.ctx, dict(body), str(err))
        raise kopf.PermanentError(str(err)) from None
    await _guarded(memo.ctx, body.metadata.namespace, body.metadata.name)


@kopf.on.event("batch", "v1", "jobs", labels={SELECTION_LABEL: kopf.PRESENT})
async def job_event(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """When one of our Jobs changes (or is listed at start-up), fold its state and result into its selection."""
    await _guarded(memo.ctx, namespace, labels[SELECTION_LABEL])


@kopf.on.event(GROUP, VERSION, PLURAL)
def selection_event(type: str | None, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """When a selection is gone, drop its metric series (Kubernetes collects its Jobs).

    A watch event rather than a delete handler: that would need a finalizer on every selection.
    """
    if type == "DELETED":
        memo.ctx.metrics.forget(namespace, name)


async def _guarded(ctx: Context, namespace: str, name: str) -> None:
    try:
        await reconcile(ctx, namespace, name)
    except InvalidSpec:
        raise
    except Exception:
        ctx.metrics.reconcile_errors.inc()
        raise
