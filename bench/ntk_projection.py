"""The NTK's share of a trial's fine-tuning, projected from FLOP counts for the benchmark configs.

    python bench/ntk_projection.py [--probe 64] [--tokens 150] [--budgets 6200,31000]

Fine-tuning a trial costs (sizes x epochs) examples x T tokens x (6N full, 4N + 2T LoRA)
FLOPs. The NTK costs, per probe example and parameter chunk, one forward and backward of one
example: 2N + 2N for activation gradients + 2P_scope for the scoped weights' gradients, per
token; the sketch adds ~10 integer and float operations per scoped weight. The ratio of the
two is what the GPU spends if both run at the same FLOP rate; batch-1 passes run at a lower
rate than training's batches (on a GPU they are bound by reading the weights), so
`bench/gpu.sh` measures the real ratio whenever a GPU is available.
"""

import argparse
import json
from pathlib import Path

from lensllm.trial.architecture import estimated_parameters, lora_parameters, shape_of
from lensllm.trial.spec import LoraSpec

CONFIGS = Path(__file__).resolve().parent / "configs"
SKETCH_OPS_PER_WEIGHT = 10


def ntk_share(config: dict, *, method: str, scope: str, probe: int, tokens: int, examples: int) -> float:
    n = estimated_parameters(shape_of(config))
    trainable = lora_parameters(shape_of(config), LoraSpec()) if method == "lora" else n
    scoped = trainable if scope == "lora" else n
    training = examples * tokens * (6 * n if method == "full" else 4 * n + 2 * trainable)
    per_example = tokens * (4 * n + 2 * scoped) + (SKETCH_OPS_PER_WEIGHT * scoped if scope == "all" else 0)
    return probe * per_example / training


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe", type=int, default=64)
    p.add_argument("--tokens", type=int, default=150, help="mean tokens per example")
    p.add_argument("--budgets", default="6200,31000", help="examples fine-tuned per trial (sizes x epochs)")
    args = p.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    print(f"{'model':16}{'method':8}{'NTK scope':11}" + "".join(f"{f'{b} ex.':>12}" for b in budgets))
    for path in sorted(CONFIGS.glob("*.json")):
        config = json.loads(path.read_text())
        for method, scope in (("full", "all"), ("lora", "lora"), ("lora", "all")):
            shares = [
                ntk_share(config, method=method, scope=scope, probe=args.probe, tokens=args.tokens, examples=b)
                for b in budgets
            ]
            print(f"{path.stem:16}{method:8}{scope:11}" + "".join(f"{s:12.2%}" for s in shares))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
