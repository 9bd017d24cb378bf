"""Start the operator: kopf in this process, with the handlers of `lensllm_operator.handlers`."""

import asyncio
import dataclasses

import kopf

from lensllm_operator import handlers, kube  # noqa: F401  (handlers: registers the handlers)
from lensllm_operator.config import OperatorConfig
from lensllm_operator.metrics import OperatorMetrics
from lensllm_operator.context import Context


def run_operator(config: OperatorConfig) -> None:
    # Before kopf: it would retry a failed login every minute, forever, where no retry can help.
    kube.login()
    ctx = Context(config=config, metrics=OperatorMetrics())
    kopf.configure(verbose=False)
    asyncio.run(
        kopf.operator(
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            standalone=True,
            liveness_endpoint=f"http://0.0.0.0:{config.liveness_port}/healthz",
            memo=kopf.Memo(ctx=ctx),
        )
    )


def with_overrides(config: OperatorConfig, **changes: object) -> OperatorConfig:
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
