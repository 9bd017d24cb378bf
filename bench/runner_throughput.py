"""Training throughput of the runner's step: tokens per second and model FLOP utilisation.

Times the same forward, loss, backward and AdamW step the trial recipe runs, on random
token ids of a fixed batch shape, and reports one JSON line. Model FLOPs use the runner's
own estimate (about 6 x parameters per trained token, 2 x per evaluated token; attention
FLOPs are left out, as in the trial results), so MFU here matches what a trial reports.

    python bench/runner_throughput.py --tiny                       # CPU smoke run, no files needed
    python bench/runner_throughput.py --model Qwen/Qwen2.5-0.5B --batch-size 8 --seq-len 1024
    python bench/runner_throughput.py --model DIR --method lora --gradient-checkpointing --peak-tflops 989
"""

import argparse
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lensllm.trial.modeling import (
    apply_lora,
    choose_device,
    choose_dtype,
    describe,
    enable_gradient_checkpointing_,
    evaluation_flops,
    load_candidate,
    parameter_counts,
    peak_memory,
    token_losses,
    training_flops,
)
from lensllm.trial.spec import CandidateSpec, LoraSpec

# Dense bf16 tensor-core peaks (TFLOP/s) by GPU name fragment, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id or local directory (as candidate.model in a trial spec)")
    source.add_argument("--tiny", action="store_true", help="a 1M-parameter Llama built from a config, for CPU checks")
    p.add_argument("--gguf-file", help="GGUF file inside --model")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, kernels, autotuning)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--method", choices=("full", "lora"), default="full")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs only)")
    return p.parse_args(argv)


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    if args.tiny:
        config = LlamaConfig(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=256,
            vocab_size=512,
            max_position_embeddings=max(args.seq_len, 64),
            use_cache=False,
        )
        return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    model, _ = load_candidate(CandidateSpec(model=args.model, gguf_file=args.gguf_file), dtype=dtype, device=device)
    return model


def random_batch(model, batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def timed(fn, steps: int, warmup: int, device: torch.device) -> list[float]:
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def peak_tflops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_TFLOPS.items() if fragment in name), None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    device = choose_device(args.device)
    dtype = choose_dtype(args.dtype, device)
    model = build_model(args, device, dtype)
    seq2seq = bool(model.config.is_encoder_decoder)
    if args.method == "lora":
        model = apply_lora(model, LoraSpec(), seq2seq=seq2seq)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing_(model)
    total, trainable = parameter_counts(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = random_batch(model, args.batch_size, args.seq_len, device)
    # Encoder-decoder models process the sequence twice: once in the encoder, once as labels in the decoder.
    tokens = args.batch_size * args.seq_len * (2 if seq2seq else 1)

    def train_step() -> None:
        nats, scored = token_losses(model, batch, seq2seq=seq2seq)
        (nats.sum() / scored.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_step() -> None:
        token_losses(model, batch, seq2seq=seq2seq)

    model.train()
    train_s = statistics.median(timed(train_step, args.steps, args.warmup, device))
    model.eval()
    eval_s = statistics.median(timed(eval_step, args.steps, args.warmup, device))
    peak = peak_tflops(args, device)
    train_tflops = training_flops(total, trainable, tokens) / train_s / 1e12
    eval_tflops = evaluation_flops(total, tokens) / eval_s / 1e12
    memory, memory_kind = peak_memory(device)
    report = {
        "model": "tiny-llama" if args.tiny else args.model,
        "device": describe(device),
        "dtype": str(dtype).removeprefix("torch."),
        "method": args.method,
        "parameters": total,
        "trainableParameters": trainable,
        "batchSize": args.batch_size,
        "seqLen": args.seq_len,
        "trainStepSeconds": train_s,
        "trainTokensPerSecond": tokens / train_s,
        "trainTflops": train_tflops,
        "trainMfu": None if peak is None else train_tflops / peak,
        "evalTokensPerSecond": tokens / eval_s,
        "evalTflops": eval_tflops,
        "evalMfu": None if peak is None else eval_tflops / peak,
        "peakMemoryBytes": memory,
        "peakMemoryKind": memory_kind,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
