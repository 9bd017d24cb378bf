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


# Every size up to 256 is affordable on the demo's 1,024 examples; elimination at P(best) < 5%, a stop at >= 99%.
RACE_BUDGET = {"baseSize": 16, "doublings": 4, "targetSize": 1024, "maxComputeFraction": 1.0}
RACE_SETTINGS = {"epsilon": 0.05, "delta": 0.01}


def race_manifest(world: Path, name: str = "race") -> dict:
    """The demo's race over its three models. It names no strategy: the race is the default."""
    return selection_manifest(world, demo_models(world), name=name, strategy=None, budget=RACE_BUDGET,
                              race=RACE_SETTINGS, parallelism=3)
