"""Throughput of the runner's own training, evaluation and NTK: real tokens per second, padding, MFU, memory.

Builds a trial whose candidate is a randomly initialised model from a config (no download),
on a task with lognormal example lengths (`lognormal_task.py`), and runs the recipe's own
`train`, `evaluate` and `measure_ntk` (`TrialRecipe`, the code a trial runs; nothing is
re-implemented here). Prints one JSON line per run; `--table FILE` prints those lines as a table.

Host memory: the process's resident set after the run, against what the plan counts on the host
(on a GPU, the starting weights' copy; the rest is Python, torch and the CUDA runtime, which the
plan does not count). `--save` then saves the fine-tuned model as a settling round's trial does
(`TrialRecipe.save_model`) and reports its seconds, files and how far the resident set rose while
it ran (sampled every 5 ms), against the shard bound the plan counts for it.

Model FLOPs are the runner's estimate (`modeling.training_flops`): per trained token 2N
forward, 2N for the activation gradients and 2T for the weight gradients of the T trainable
weights, i.e. 6N for full fine-tuning and 4N + 2T for LoRA; attention scores and recomputation
under gradient checkpointing are not counted (the usual MFU convention). MFU is that over the
device's dense bf16 peak.

    python bench/runner_throughput.py --tiny --device cpu                 # CPU smoke run
    python bench/runner_throughput.py --config bench/configs/qwen2.5-0.5b.json --examples 1024
    python bench/runner_throughput.py --config bench/configs/qwen2.5-7b.json --method lora --ntk-probe 64
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lognormal_task import word_count, write_task, write_tokenizer  # noqa: E402

from lensllm.trial.memory import SAVE_SHARD_BYTES  # noqa: E402
from lensllm.trial.modeling import evaluation_flops  # noqa: E402
from lensllm.trial.recipe import TrialRecipe  # noqa: E402
from lensllm.trial.spec import TrialSpec  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) by GPU name fragment, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
TINY = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "max_position_embeddings": 1024,
    "vocab_size": 2048,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="a Hugging Face config.json; the model is randomly initialised")
    source.add_argument("--tiny", action="store_true", help="a 1M-parameter Llama, for CPU checks")
    source.add_argument("--table", type=Path, metavar="RESULTS.jsonl", help="print earlier JSON lines as a table")
    p.add_argument("--name", help="label of the run (default: the config's file name)")
    p.add_argument("--method", choices=("full", "lora"), default="full")
    p.add_argument("--examples", type=int, default=256, help="training examples timed (one epoch); 0 skips training")
    p.add_argument("--warmup", type=int, default=32, help="examples trained first, untimed (kernels, allocator)")
    p.add_argument("--test-examples", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--median-len", type=int, default=150, help="median example length in tokens")
    p.add_argument("--max-len", type=int, default=512, help="longest example (training.maxSeqLength)")
    p.add_argument("--ntk-probe", type=int, default=0, help="NTK probe size (0: no NTK)")
    p.add_argument("--ntk-scope", choices=("auto", "all", "lora", "lastBlocks"), default="auto")
    p.add_argument("--ntk-method", choices=("auto", "exact", "sketch"), default="auto")
    p.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer body")
    p.add_argument("--save", action="store_true", help="save the fine-tuned model at the end, timed, with its host memory")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--gpu-memory", type=int, help="device bytes the plan may assume (default: the device's)")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--trial-examples",
        type=int,
        default=31_000,
        help="examples a whole trial fine-tunes on (sizes x epochs; default 1k..16k doubling), for the NTK share",
    )
    return p.parse_args(argv)


def trial_spec(args: argparse.Namespace, model_dir: Path, data_dir: Path) -> TrialSpec:
    checkpointing = {"auto": None, "on": True, "off": False}[args.gradient_checkpointing]
    return TrialSpec.model_validate(
        {
            "candidate": {"model": str(model_dir), "dtype": args.dtype},
            "dataset": {"source": str(data_dir), "textField": "text", "maxTestExamples": args.test_examples},
            "subsetSizes": [max(args.examples, args.warmup, args.ntk_probe, 1)],
            "targetSize": 10**6,
            "seed": args.seed,
            "device": args.device,
            "training": {
                "method": args.method,
                "learningRate": 1e-5,
                "batchSize": args.batch_size,
                "maxSeqLength": args.max_len,
                "gradientCheckpointing": checkpointing,
                "compile": args.compile,
            },
            "ntk": {
                "enabled": args.ntk_probe > 0,
                "probeSize": max(args.ntk_probe, 1),
                "scope": args.ntk_scope,
                "method": args.ntk_method,
            },
        }
    )


def prepare(args: argparse.Namespace, folder: Path) -> tuple[TrialSpec, dict]:
    """A model folder (config and tokenizer, no weights) and the task; the trial spec over them."""
    config = TINY if args.tiny else json.loads(args.config.read_text())
    model_dir, data_dir = folder / "model", folder / "data"
    model_dir.mkdir(parents=True)
    vocab = word_count(config["vocab_size"])  # the model's vocabulary may be larger
    write_tokenizer(model_dir, vocab)
    (model_dir / "config.json").write_text(json.dumps(config))
    size = max(args.examples, args.warmup, args.ntk_probe, 1)
    write_task(data_dir, train=size, test=args.test_examples, vocab=vocab, median=args.median_len, cap=args.max_len)
    return trial_spec(args, model_dir, data_dir), config


def random_model(config: dict, device: torch.device, dtype: torch.dtype):
    """The architecture of `config` with random weights, built on the device."""
    hf_config = AutoConfig.for_model(**config)
    with device:
        return AutoModelForCausalLM.from_config(hf_config, dtype=dtype)


def peak_tflops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_TFLOPS.items() if fragment in name), None)


def measured_peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="lensllm-bench-") as tmp:
        spec, config = prepare(args, Path(tmp))
        recipe = TrialRecipe(spec, device_memory=args.gpu_memory)
        recipe.setup_data()  # plans; raises WillNotFit before the model exists
        recipe.setup_model(random_model(config, recipe.device, recipe.dtype))
        report = describe_run(args, recipe)
        if args.examples:
            # Untimed, but its seconds are reported: with --compile they hold the training graph's compilation.
            report["warmupSeconds"] = recipe.train(args.warmup).seconds
            report |= time_training(args, recipe)
        if args.compile:  # evaluation compiles on its first call (no_grad is part of the guard): time it apart
            report["evalFirstSeconds"] = recipe.evaluate().seconds
        report |= time_evaluation(recipe)
        if args.ntk_probe:
            report |= time_ntk(recipe)
            if args.examples:
                per_example = report["trainSeconds"] / args.examples
                report["ntkShareOfTrial"] = report["ntkSeconds"] / (per_example * args.trial_examples)
        report |= {"hostRssBytes": host_rss(), "plannedHostBytes": recipe.plan.host_bytes}
        if args.save:
            report |= time_save(recipe, Path(tmp) / "saved")
        recipe.cleanup()
    return report


def describe_run(args: argparse.Namespace, recipe: TrialRecipe) -> dict:
    plan = recipe.plan
    return {
        "name": args.name or ("tiny-llama" if args.tiny else args.config.stem),
        "device": str(recipe.device) if recipe.device.type != "cuda" else torch.cuda.get_device_name(recipe.device),
        "dtype": str(recipe.dtype).removeprefix("torch."),
        "method": args.method,
        "compile": args.compile,
        "parameters": recipe.parameters,
        "trainableParameters": recipe.trainable,
        "microBatch": plan.micro_batch_size,
        "accumulation": plan.gradient_accumulation,
        "checkpointing": plan.gradient_checkpointing,
        "plannedPeakBytes": {p.name: p.bytes for p in plan.phases},
    }


def time_training(args: argparse.Namespace, recipe: TrialRecipe) -> dict:
    if recipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(recipe.device)
    stats = recipe.train(args.examples)
    peak = peak_tflops(args, recipe.device)
    tflops = stats.flops / stats.seconds / 1e12
    return {
        "trainExamples": args.examples,
        "trainTokens": stats.tokens,
        "trainSeconds": stats.seconds,
        "trainTokensPerSecond": stats.tokens / stats.seconds,
        "trainPadding": stats.padding_fraction,
        "trainTflops": tflops,
        "trainMfu": None if peak is None else tflops / peak,
        "trainPeakBytes": measured_peak(recipe.device),
        "flopsFormula": "6N" if args.method == "full" else "4N+2T",
    }


def time_evaluation(recipe: TrialRecipe) -> dict:
    if recipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(recipe.device)
    evaluation = recipe.evaluate()
    tokens = sum(e.n_tokens for e in recipe.test_examples)
    return {
        "evalTokensPerSecond": tokens / evaluation.seconds,
        "evalPadding": evaluation.padding_fraction,
        "evalTflops": evaluation_flops(recipe.parameters, tokens) / evaluation.seconds / 1e12,
        "evalPeakBytes": measured_peak(recipe.device),
    }


def time_ntk(recipe: TrialRecipe) -> dict:
    if recipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(recipe.device)
    start = time.perf_counter()
    summary = recipe.measure_ntk()
    seconds = time.perf_counter() - start
    return {
        "ntkProbe": summary.n,
        "ntkScope": summary.scope,
        "ntkMethod": summary.method,
        "ntkParameters": summary.parameters,
        "ntkSeconds": seconds,
        "ntkPeakBytes": measured_peak(recipe.device),
    }


def host_rss() -> int:
    """This process's resident set, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def time_save(recipe: TrialRecipe, folder: Path) -> dict:
    """The recipe's own save of the fine-tuned model: seconds, files written, and the resident set's rise meanwhile."""
    before, peak, done = host_rss(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], host_rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    saved = recipe.save_model(folder)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if saved is None:
        raise OSError(f"the model was not saved in {folder}")
    weights = sorted(folder.glob("*.safetensors"))
    return {
        "saveSeconds": seconds,
        "saveBytes": sum(f.stat().st_size for f in weights),
        "saveShards": len(weights),
        "saveHostRiseBytes": max(peak[0], host_rss()) - before,
        "saveShardBoundBytes": SAVE_SHARD_BYTES,
    }


def print_table(path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    table = Table(title=f"Runner throughput ({path})")
    columns = [
        ("name", lambda r: r["name"]),
        ("method", lambda r: r["method"] + (" +compile" if r.get("compile") else "")),
        ("params", lambda r: f"{r['parameters'] / 1e9:.2f}B" if r["parameters"] >= 1e8 else f"{r['parameters'] / 1e6:.1f}M"),
        ("micro x acc", lambda r: f"{r['microBatch']} x {r['accumulation']}" + (" ckpt" if r["checkpointing"] else "")),
        ("train tok/s", lambda r: _fmt(r.get("trainTokensPerSecond"), ",.0f")),
        ("pad %", lambda r: _fmt(r.get("trainPadding"), ".1%")),
        ("MFU", lambda r: _fmt(r.get("trainMfu"), ".1%")),
        ("eval tok/s", lambda r: _fmt(r.get("evalTokensPerSecond"), ",.0f")),
        ("warm-up s", lambda r: _fmt(r.get("warmupSeconds"), ".1f") + (
            f" + {r['evalFirstSeconds']:.1f}" if "evalFirstSeconds" in r else "")),
        ("train GiB (plan)", lambda r: _memory(r, "trainPeakBytes", "train")),
        ("NTK", lambda r: f"{r['ntkScope']}/{r['ntkMethod']} {r['ntkSeconds']:.1f}s" if "ntkSeconds" in r else "-"),
        ("NTK GiB (plan)", lambda r: _memory(r, "ntkPeakBytes", "ntk")),
        ("NTK/trial", lambda r: _fmt(r.get("ntkShareOfTrial"), ".2%")),
        ("host GiB (plan)", lambda r: _gib_against(r.get("hostRssBytes"), r.get("plannedHostBytes"))),
        ("save s, +GiB (bound)", lambda r: "-" if "saveSeconds" not in r else
         f"{r['saveSeconds']:.1f}, " + _gib_against(r["saveHostRiseBytes"], r["saveShardBoundBytes"])),
        ("error", lambda r: r.get("error", "").split(":")[0]),
    ]
    for title, _ in columns:
        table.add_column(title, justify="left" if title in ("name", "method", "NTK", "error") else "right")
    for row in rows:
        shown = ("name", "method", "error") if "error" in row else [title for title, _ in columns]
        table.add_row(*[str(cell(row)) if title in shown else "" for title, cell in columns])
    console = Console()
    console.width = max(console.width, 200)
    console.print(table)
    for row in rows:
        if "error" in row:
            console.print(f"{row['name']}: {row['error']}", soft_wrap=True)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _memory(row: dict, measured: str, phase: str) -> str:
    return _gib_against(row.get(measured), row.get("plannedPeakBytes", {}).get(phase))


def _gib_against(value: int | None, planned: int | None) -> str:
    """Measured GiB with the planned in brackets, or "-" when either is missing."""
    if value is None or planned is None:
        return "-"
    return f"{value / 2**30:.1f} ({planned / 2**30:.1f})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print_table(args.table)
        return 0
    if args.device == "cpu" or not torch.cuda.is_available():
        torch.set_num_threads(1)  # two threads ran 5-9x slower on the shared CPUs
    try:
        report = run(args)
    except Exception as err:  # noqa: BLE001 - one failed case must still print its row (WillNotFit, OOM)
        reason = getattr(err, "reason", type(err).__name__)
        report = {"name": args.name or ("tiny-llama" if args.tiny else args.config.stem), "method": args.method}
        report["error"] = f"{reason}: {str(err).splitlines()[0] if str(err) else ''}"
        print(json.dumps(report))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
