"""Prepare the Quickstart's local selection: a generated task and three tiny models.

Writes examples/local/data/{train,test}.jsonl and examples/local/models/<name>/, which
examples/local-selection.yaml refers to. Needs the runner extra (torch, transformers).
Usage: python examples/prepare_local.py [--out examples/local]
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "local")
    args = parser.parse_args()
    import torch

    from lensllm.demo import prepare

    torch.set_num_threads(1)  # tiny models: threads cost more than they give
    start = time.perf_counter()
    names = prepare(args.out)
    print(f"prepared {', '.join(names)} and the task in {args.out} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
