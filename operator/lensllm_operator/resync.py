"""The periodic resync: every unfinished selection is reconciled every `resync_seconds`, events or not.

One loop for the whole operator rather than a kopf timer per selection: kopf puts a finalizer on
every object that has a timer, and a finalizer makes `kubectl delete llmsel` hang whenever the
operator is down or uninstalled. The loop learns which selections exist from the selection watch
(`track`), so it needs no extra API call to find them; a selection whose reconciliation met a
transient error waits for the retry that set (`Context.retry_due`), and no longer once any call
has reconciled it since.
"""

import asyncio
import logging
from dataclasses import dataclass, field
from time import monotonic

import kopf

from lensllm.selection.status import TERMINAL_PHASES
from lensllm_operator.context import Context
from lensllm_operator.reconcile import reconcile

# Selections reconciled at once within one pass: a pass stays short, the API server is not flooded.
CONCURRENCY = 8

Key = tuple[str, str]


@dataclass
class Unfinished:
    """The selections the watch has shown and their phase."""

    phases: dict[Key, str | None] = field(default_factory=dict)

    def track(self, namespace: str, name: str, phase: str | None, deleted: bool) -> None:
        key = (namespace, name)
        if deleted:
            self.phases.pop(key, None)
        else:
            self.phases[key] = phase

    def due(self, now: float, retry_due: dict[Key, float]) -> list[Key]:
        """The unfinished selections, less those waiting for a retry due after `now`."""
        return [key for key, phase in self.phases.items()
                if phase not in TERMINAL_PHASES and retry_due.get(key, 0.0) <= now]


@dataclass
class Resync:
    """The operator's one resync loop and the selections it serves.

    kopf hands every object's handlers a shallow copy of the operator's memo: an attribute set on
    one copy is seen neither by the handlers of other selections nor by the cleanup at shutdown.
    So the loop lives in this object, created once at start-up and shared by every copy.
    """

    selections: Unfinished = field(default_factory=Unfinished)
    task: asyncio.Task[None] | None = None

    def start_once(self, ctx: Context, logger: logging.Logger) -> None:
        if self.task is None:
            self.task = asyncio.create_task(resync_forever(ctx, self.selections, ctx.config.resync_seconds, logger))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def resync_forever(ctx: Context, selections: Unfinished, interval: float, logger: logging.Logger) -> None:
    """Reconcile every unfinished selection, wait `interval` seconds, again; until cancelled at shutdown."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(key: Key) -> None:
        async with limit:
            try:
                await reconcile(ctx, *key)
            except kopf.TemporaryError as err:  # reconcile set when to retry (ctx.retry_due)
                logger.warning("selection %s/%s: %s", *key, err)
            except Exception:  # noqa: BLE001 (reconcile counts it; one selection's bug must not stop the others)
                logger.exception("selection %s/%s: reconciliation failed", *key)

    while True:
        await asyncio.sleep(interval)
        await asyncio.gather(*(one(key) for key in selections.due(monotonic(), ctx.retry_due)))
