"""Deployment configuration of the operator, read once from the environment.

The Helm chart sets these variables; `lensllm operator` flags override them.
"""

import os
from dataclasses import dataclass


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator needs to know about where it runs."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace (cluster-wide)
    metrics_port: int = 8000
    liveness_port: int = 8080
    runner_image: str = "ghcr.io/lensllm/runner:0.1.0"
    runner_pull_policy: str = "IfNotPresent"
    job_ttl_seconds: int | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "OperatorConfig":
        env = dict(os.environ if env is None else env)
        defaults = cls()
        ttl = env.get("LENSLLM_JOB_TTL_SECONDS", "")
        return cls(
            namespaces=_split(env.get("LENSLLM_NAMESPACES", "")),
            metrics_port=int(env.get("LENSLLM_METRICS_PORT", defaults.metrics_port)),
            liveness_port=int(env.get("LENSLLM_LIVENESS_PORT", defaults.liveness_port)),
            runner_image=env.get("LENSLLM_RUNNER_IMAGE", defaults.runner_image),
            runner_pull_policy=env.get("LENSLLM_RUNNER_PULL_POLICY", defaults.runner_pull_policy),
            job_ttl_seconds=int(ttl) if ttl else None,
        )
