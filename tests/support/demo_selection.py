"""LLMSelection manifests over the demo's tiny models, shared by local-mode and operator tests."""

from pathlib import Path


def selection_manifest(
    world: Path, models: dict[str, str], name: str = "demo", namespace: str | None = None,
    strategy: str | None = "fixed", **spec_changes
) -> dict:
    """An LLMSelection over the demo task: small budget, quick training, a small NTK probe. A fixed budget unless
    `strategy` says otherwise (None leaves it out: the spec's default, a race)."""
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "lensllm.io/v1alpha1",
        "kind": "LLMSelection",
        "metadata": metadata,
        "spec": {
            "candidates": [{"name": n, "model": m} for n, m in models.items()],
            "dataset": {"source": str(world / "data"), "inputField": "input", "targetField": "target",
                        "promptTemplate": "{input} =", "maxTestExamples": 32},
            "budget": {"baseSize": 16, "doublings": 3, "targetSize": 1024},
            "training": {"learningRate": 0.001, "epochs": 2, "batchSize": 16, "maxSeqLength": 32},
            "ntk": {"probeSize": 8, "enabled": True},  # measured whatever the method: the tests check it
            **({"strategy": strategy} if strategy else {}),
            **spec_changes,
        },
    }


def demo_models(world: Path, *names: str) -> dict[str, str]:
    return {n: str(world / "models" / n) for n in (names or ("tiny-gpt2", "tiny-opt", "tiny-llama"))}
