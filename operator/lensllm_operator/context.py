"""What every reconciliation shares, and what one does once its status is written."""

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from lensllm_operator.config import OperatorConfig
from lensllm_operator.metrics import OperatorMetrics

T = TypeVar("T")
# Deleted selections remembered so that a pass which read one before its deletion exports nothing after it.
# Such a pass ends within seconds; the bound only keeps a year of deletions from growing the set.
DELETED_REMEMBERED = 10_000


@dataclass
class Context:
    """Settings, metrics, one lock per selection (its only status writer), error streaks for backoff, and the thread
    the science runs on."""

    config: OperatorConfig
    metrics: OperatorMetrics
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    waiting: set[tuple[str, str]] = field(default_factory=set)  # selections with a reconciliation waiting for the lock
    failures: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (namespace, name, kind) -> streak
    retry_due: dict[tuple[str, str], float] = field(default_factory=dict)  # when a transient error's retry is due
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    # Ended selections whose unfinished Jobs this process has deleted, or found none: (namespace, name) -> uid.
    ended_and_swept: dict[tuple[str, str], str] = field(default_factory=dict)
    # uids of deleted selections, oldest first (a dict as an ordered set).
    deleted: dict[str, None] = field(default_factory=dict)
    # Where races are decided and selections ranked: off the event loop, one at a time. Decisions of many
    # selections at once in threads of their own cost 60% more CPU (their numpy calls contend) for no gain.
    science: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="science"))

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the science thread."""
        return await asyncio.get_running_loop().run_in_executor(self.science, fn, *args)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())

    def forget_errors(self, namespace: str, name: str) -> None:
        """Drop a selection's error streaks and pending retry."""
        self.retry_due.pop((namespace, name), None)
        for kind in ("transient", "unexpected"):
            self.failures.pop((namespace, name, kind), None)

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        """Drop all a deleted selection left here (a new one may take its name), and remember it was deleted."""
        self.forget_errors(namespace, name)
        self.ended_and_swept.pop((namespace, name), None)
        if uid:
            self.deleted[uid] = None
            if len(self.deleted) > DELETED_REMEMBERED:
                del self.deleted[next(iter(self.deleted))]
        self.metrics.forget(namespace, name)

    def was_deleted(self, body: Any) -> bool:
        """Whether the selection that `body` was read from has since been deleted."""
        return body["metadata"].get("uid") in self.deleted


@dataclass
class Effects:
    """Metrics, Events and Job changes a reconciliation decided on, run only after its status was written.

    A status write that fails leaves the next reconciliation to decide them again, so none of
    them happens twice (a trial counted twice, an Event posted on every retry).
    """

    calls: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)

    def later(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.calls.append(lambda: fn(*args, **kwargs))

    async def run(self) -> None:
        """Run every call, even after one fails (a failed delete must not cost the metrics after it); then raise the
        first failure, so the selection is retried (effects that follow from the status are decided again)."""
        failures = []
        for call in self.calls:
            try:
                outcome = call()
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as err:  # noqa: BLE001 (raised below, once the other calls have run)
                failures.append(err)
        if failures:
            raise failures[0]
