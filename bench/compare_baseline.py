"""The runner's fine-tuning against an earlier implementation, on the same lognormal-length task, on CPU.

    git worktree add --detach /tmp/baseline main
    nice -n 10 python bench/compare_baseline.py --baseline /tmp/baseline --repeats 3

Builds one randomly initialised Llama-style model (saved with save_pretrained, so both
implementations load it the same way) and one task whose example lengths are lognormal
(median 150 tokens, cut at 512), then runs `trial_driver.py` for each implementation in
its own process (PYTHONPATH = that checkout's runner/), alternating, `--repeats` times.
Prints the median real tokens per second, padding and resident-memory growth of each, and
the ratios. The CPU is shared: repeats and medians are there because others' load is noise.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lognormal_task import NON_WORD_TOKENS, write_task, write_tokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
CURRENT = HERE.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True, help="checkout of the implementation to compare against")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--examples", type=int, default=256, help="training examples (one epoch)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--median-len", type=int, default=150)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument(
        "--vocab", type=int, default=8192, help="words in the task (the model's vocabulary adds bytes and specials)"
    )
    return p.parse_args()


def build(args: argparse.Namespace, folder: Path) -> Path:
    model_dir, data_dir = folder / "model", folder / "data"
    tokenizer = write_tokenizer(model_dir, args.vocab)
    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 8 / 3) // 16 * 16,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        vocab_size=args.vocab + NON_WORD_TOKENS,
        max_position_embeddings=args.max_len,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    write_task(data_dir, train=args.examples, test=128, vocab=args.vocab, median=args.median_len, cap=args.max_len)
    spec = {
        "candidate": {"model": str(model_dir), "dtype": "float32"},
        "dataset": {"source": str(data_dir), "textField": "text", "maxTestExamples": 128},
        "subsetSizes": [args.examples],
        "targetSize": 10 * args.examples,
        "device": "cpu",
        "training": {"learningRate": 1e-4, "batchSize": args.batch_size, "maxSeqLength": args.max_len},
        "ntk": {"enabled": False},
    }
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def drive(checkout: Path, spec: Path, size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout / "runner"), "OMP_NUM_THREADS": "1"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, str(HERE / "trial_driver.py"), "--spec", str(spec), "--size", str(size)]
    proc = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=spec.parent)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    args = parse_args()
    runs: dict[str, list[dict]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory(prefix="lensllm-compare-") as tmp:
        spec = build(args, Path(tmp))
        for _ in range(args.repeats):
            for label, checkout in (("baseline", args.baseline), ("current", CURRENT)):
                runs[label].append(drive(checkout, spec, args.examples))
    medians = {
        label: {key: statistics.median(r[key] for r in rows) for key in ("tokensPerSecond", "padding", "trainPeakGrowthBytes")}
        for label, rows in runs.items()
    }
    for label, rows in runs.items():
        print(f"{label}: {rows[0]['module']}")
        print("  tokens/s " + ", ".join(f"{r['tokensPerSecond']:.0f}" for r in rows))
    base, cur = medians["baseline"], medians["current"]
    print(f"{'':10}{'tokens/s':>12}{'padding':>10}{'train RSS growth':>20}")
    for label, m in medians.items():
        print(f"{label:10}{m['tokensPerSecond']:12.0f}{m['padding']:10.1%}{m['trainPeakGrowthBytes'] / 2**20:17.0f} MiB")
    print(
        f"ratios: real tokens/s x{cur['tokensPerSecond'] / base['tokensPerSecond']:.2f}, "
        f"peak memory growth x{cur['trainPeakGrowthBytes'] / base['trainPeakGrowthBytes']:.2f}"
    )
    print(json.dumps({"runs": runs, "medians": medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
