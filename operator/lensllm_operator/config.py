"""Deployment configuration of the operator, read once from the environment.

The Helm chart sets these variables; `lensllm operator` flags override some of them. The
`allowed_*` settings are the platform team's policy: a selection creator may only use the
runner images, token Secrets and tolerations listed here, so creating an LLMSelection never
grants more than the chart allows.
"""

import math
import os
import re
from dataclasses import dataclass

from lensllm.errors import LensLLMError
from lensllm.selection.formats import DNS_LABEL, LABEL_LIMIT

DEFAULT_RUNNER_IMAGE = "ghcr.io/lensllm/runner:0.1.0"


class ConfigError(LensLLMError):
    """A LENSLLM_* variable holds a value the operator cannot use."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def image_repository(image: str) -> str:
    """`registry/path/name` of an image reference, without its tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator needs to know about where it runs and what it allows."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace (cluster-wide)
    metrics_port: int = 8000
    liveness_port: int = 8080
    runner_image: str = DEFAULT_RUNNER_IMAGE
    runner_pull_policy: str = "IfNotPresent"
    job_ttl_seconds: int | None = None
    # How often every unfinished selection is reconciled even without an event.
    resync_seconds: float = 20.0
    # Default of spec.pendingTimeoutSeconds.
    pending_timeout_seconds: int = 1800
    # Image repositories (or prefixes ending in '/') a selection may name in spec.runner.image;
    # empty: only the repository of runner_image.
    allowed_runner_images: tuple[str, ...] = ()
    allow_writable_model_cache: bool = False
    # Taint keys selections may tolerate; '*' allows any toleration.
    allowed_toleration_keys: tuple[str, ...] = ("nvidia.com/gpu",)
    # Secrets spec.hfTokenSecretRef may name; '*' allows any Secret of the selection's namespace.
    allowed_token_secrets: tuple[str, ...] = ("hf-token",)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "OperatorConfig":
        env = dict(os.environ if env is None else env)
        d = cls()
        ttl = env.get("LENSLLM_JOB_TTL_SECONDS", "")
        return cls(
            namespaces=_split(env.get("LENSLLM_NAMESPACES", "")),
            metrics_port=_number(env, "LENSLLM_METRICS_PORT", d.metrics_port, int),
            liveness_port=_number(env, "LENSLLM_LIVENESS_PORT", d.liveness_port, int),
            runner_image=env.get("LENSLLM_RUNNER_IMAGE", d.runner_image),
            runner_pull_policy=env.get("LENSLLM_RUNNER_PULL_POLICY", d.runner_pull_policy),
            job_ttl_seconds=_number(env, "LENSLLM_JOB_TTL_SECONDS", 0, int) if ttl else None,
            resync_seconds=_number(env, "LENSLLM_RESYNC_SECONDS", d.resync_seconds, float),
            pending_timeout_seconds=_number(env, "LENSLLM_PENDING_TIMEOUT_SECONDS", d.pending_timeout_seconds, int),
            allowed_runner_images=_split(env.get("LENSLLM_ALLOWED_RUNNER_IMAGES", "")),
            allow_writable_model_cache=_flag(env, "LENSLLM_ALLOW_WRITABLE_MODEL_CACHE"),
            allowed_toleration_keys=_split(env.get("LENSLLM_ALLOWED_TOLERATION_KEYS", ",".join(d.allowed_toleration_keys))),
            allowed_token_secrets=_split(env.get("LENSLLM_ALLOWED_TOKEN_SECRETS", ",".join(d.allowed_token_secrets))),
        )

    def __post_init__(self) -> None:
        """Settings from flags (`with_overrides`) are checked as those from the environment are."""
        for name in ("metrics_port", "liveness_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ConfigError(f"{name.replace('_', ' ')} {port}: expected 1 to 65535")
        if self.metrics_port == self.liveness_port:
            raise ConfigError(f"metrics port and liveness port are both {self.metrics_port}: give two ports")
        if not self.resync_seconds > 0:  # also NaN: a resync that never runs
            raise ConfigError(f"resync seconds {self.resync_seconds}: expected a positive number")
        for namespace in self.namespaces:
            # kopf reads '*', '?' and '!' as namespace patterns, and an empty name matches none: a typo would watch
            # other namespaces than those named, or none.
            if len(namespace) > LABEL_LIMIT or not re.match(DNS_LABEL, namespace):
                raise ConfigError(f"namespace {namespace!r}: expected a namespace name (an RFC 1123 label: at most "
                                  f"{LABEL_LIMIT} lower-case letters, digits and '-')")

    def image_allowed(self, image: str) -> bool:
        allowed = self.allowed_runner_images or (image_repository(self.runner_image),)
        repository = image_repository(image)
        return any(repository == entry or (entry.endswith("/") and repository.startswith(entry)) for entry in allowed)


def _number(env: dict[str, str], name: str, default: float, kind: type) -> int | float:
    value = env.get(name, "")
    if value == "":
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected a {kind.__name__}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name}={value!r}: expected a finite number")
    if number < 0:
        raise ConfigError(f"{name}={value!r}: must be >= 0")
    return number


def _flag(env: dict[str, str], name: str) -> bool:
    value = env.get(name, "false").strip().lower()
    if value not in ("true", "false", ""):
        raise ConfigError(f"{name}={value!r}: expected true or false")
    return value == "true"
