"""Time one size of a trial's fine-tuning and its evaluation with whichever `lensllm` is importable.

Run by `compare_baseline.py` once per implementation, each in its own process with its own
PYTHONPATH, so the current runner and an older checkout run the same spec the same way:
`TrialRecipe(spec).setup()`, then `train(size)` and `evaluate()`. Prints one JSON line.
Padded positions are counted by wrapping the recipe's collate when the implementation does
not report them itself; peak memory is the growth of the process's resident set during
training (Linux: the high-water mark is reset through /proc/self/clear_refs).
"""

import argparse
import json
import re
import sys
from pathlib import Path

import torch


def resident_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, required=True)
    p.add_argument("--size", type=int, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    from lensllm.trial import recipe as recipe_module
    from lensllm.trial.spec import TrialSpec

    recipe = recipe_module.TrialRecipe(TrialSpec.model_validate_json(args.spec.read_text()))
    recipe.setup()
    counted = {"positions": 0}
    if hasattr(recipe_module, "collate"):  # an implementation that collates in the recipe itself
        real = recipe_module.collate

        def counting(examples, **kwargs):
            batch = real(examples, **kwargs)
            counted["positions"] += batch["input_ids"].numel()
            return batch

        recipe_module.collate = counting
    before = resident_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    stats = recipe.train(args.size)
    peak = resident_kib("VmHWM")
    positions = counted["positions"]
    padding = stats.padding_fraction if getattr(stats, "padding_fraction", None) is not None else 1 - stats.tokens / positions
    evaluation = recipe.evaluate()
    print(
        json.dumps(
            {
                "module": recipe_module.__file__,
                "tokens": stats.tokens,
                "seconds": stats.seconds,
                "tokensPerSecond": stats.tokens / stats.seconds,
                "padding": padding,
                "trainPeakGrowthBytes": (peak - before) * 1024,
                "evalSeconds": evaluation.seconds,
                "finalLoss": stats.final_loss,
                "testLoss": evaluation.loss,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
