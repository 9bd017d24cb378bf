"""What a selection may ask of the cluster, as the operator's settings allow (`OperatorConfig`).

The operator creates Jobs with its own permissions, so anything a selection creator could not
do directly (run any image, read any Secret, write a shared cache, tolerate any taint) is
checked here; a selection that asks for more fails with InvalidSpec and this message.
"""

from lensllm.selection.spec import LLMSelectionSpec
from lensllm_operator.config import OperatorConfig


def violation(spec: LLMSelectionSpec, config: OperatorConfig) -> str | None:
    """The first thing `spec` asks for that the operator's settings do not allow, or None."""
    for check in (_image, _model_cache, _token_secret, _tolerations):
        message = check(spec, config)
        if message:
            return message
    return None


def _image(spec: LLMSelectionSpec, config: OperatorConfig) -> str | None:
    image = spec.runner.image
    if image and not config.image_allowed(image):
        allowed = ", ".join(config.allowed_runner_images) or config.runner_image.rsplit(":", 1)[0]
        return f"spec.runner.image {image!r} is not an allowed runner image (allowed: {allowed})"
    return None


def _model_cache(spec: LLMSelectionSpec, config: OperatorConfig) -> str | None:
    if spec.model_cache and not spec.model_cache.read_only and not config.allow_writable_model_cache:
        return ("spec.modelCache.readOnly: false needs writable model caches, which this operator does not allow "
                "(chart value runner.allowWritableModelCache)")
    return None


def _token_secret(spec: LLMSelectionSpec, config: OperatorConfig) -> str | None:
    ref = spec.hf_token_secret_ref
    if ref and "*" not in config.allowed_token_secrets and ref.name not in config.allowed_token_secrets:
        allowed = ", ".join(config.allowed_token_secrets) or "none"
        return f"spec.hfTokenSecretRef.name {ref.name!r} is not an allowed token Secret (allowed: {allowed})"
    return None


def _tolerations(spec: LLMSelectionSpec, config: OperatorConfig) -> str | None:
    if "*" in config.allowed_toleration_keys:
        return None
    for index, toleration in enumerate(spec.tolerations):
        if not toleration.key or toleration.key not in config.allowed_toleration_keys:
            allowed = ", ".join(config.allowed_toleration_keys) or "none"
            return (f"spec.tolerations[{index}]: tolerating {toleration.key or 'every taint'!r} is not allowed "
                    f"(allowed taint keys: {allowed})")
    return None
