"""The memory plan: its arithmetic against the models themselves, its choices, and its honesty."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, T5ForConditionalGeneration

from lensllm.trial.architecture import PlanError, estimated_parameters, layer_bytes, lora_parameters, shape_of
from lensllm.trial.memory import GIB, SAVE_SHARD_BYTES, Device, parse_bytes, plan_trial, unplanned
from lensllm.trial.model_files import host_memory_bytes
from lensllm.trial.modeling import apply_lora
from lensllm.trial.spec import LoraSpec, TrialSpec

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bench" / "configs"
GPU_80 = Device(kind="cuda", total_bytes=80 * GIB)


def config_of(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def meta_model(config: dict):
    hf_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        if hf_config.is_encoder_decoder:
            return T5ForConditionalGeneration(hf_config)
        return AutoModelForCausalLM.from_config(hf_config)


def spec(model: str = "m", **training) -> TrialSpec:
    return TrialSpec.model_validate(
        {
            "candidate": {"model": model},
            "dataset": {"source": "d", "inputField": "i", "targetField": "t"},
            "subsetSizes": [1000],
            "targetSize": 100000,
            "training": {"batchSize": 8, "maxSeqLength": 1024, **training},
            "ntk": {"probeSize": 64},
        }
    )


def qwen(size: str) -> dict:
    return json.loads((CONFIGS / f"qwen2.5-{size}.json").read_text())


@pytest.mark.parametrize("name", ["gpt2", "opt", "llama", "t5"])
def test_parameter_estimate_matches_the_tiny_models(tiny_models, name):
    config = config_of(tiny_models[name])
    exact = sum(p.numel() for p in meta_model(config).parameters())
    assert estimated_parameters(shape_of(config)) == pytest.approx(exact, rel=0.02 if name != "t5" else 0.1)


@pytest.mark.parametrize("size", ["0.5b", "1.5b", "7b"])
def test_parameter_estimate_matches_the_benchmark_configs(size):
    exact = sum(p.numel() for p in meta_model(qwen(size)).parameters())
    assert estimated_parameters(shape_of(qwen(size))) == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("name", ["gpt2", "opt", "llama"])
def test_lora_parameter_count_matches_peft(tiny_models, name):
    model = AutoModelForCausalLM.from_pretrained(tiny_models[name])
    lora = LoraSpec(r=4)
    trainable = sum(p.numel() for p in apply_lora(model, lora, seq2seq=False).parameters() if p.requires_grad)
    assert lora_parameters(shape_of(config_of(tiny_models[name])), lora) == trainable


def saved_bytes_per_token_and_layer(config: dict, *, dtype: torch.dtype, lora: LoraSpec | None, tokens: int) -> float:
    """What autograd keeps (unique storages, weights excluded), per token, from 1 to 2 layers."""
    totals = []
    for layers in (1, 2):
        torch.manual_seed(0)
        layered = {**config, **{key: layers for key in ("num_hidden_layers", "n_layer") if key in config}}
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**layered), dtype=dtype)
        if lora is not None:
            model = apply_lora(model, lora, seq2seq=False)
        model.train()
        storages = {}
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, config["vocab_size"], (2, tokens))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        totals.append(sum(size for ptr, size in storages.items() if ptr not in weights))
    return (totals[1] - totals[0]) / (2 * tokens)


LLAMA = {
    "model_type": "llama",
    "hidden_size": 192,
    "intermediate_size": 512,
    "num_hidden_layers": 1,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "vocab_size": 300,
}


@pytest.mark.parametrize(
    ("config", "dtype", "lora"),
    [
        (LLAMA, torch.float32, None),
        (LLAMA, torch.bfloat16, None),
        (LLAMA, torch.float32, LoraSpec(r=8)),
        (LLAMA, torch.bfloat16, LoraSpec(r=8, dropout=0.0)),
        ({"model_type": "gpt2", "n_embd": 96, "n_layer": 1, "n_head": 3, "vocab_size": 300}, torch.float32, None),
        (
            {"model_type": "opt", "hidden_size": 96, "ffn_dim": 256, "num_hidden_layers": 1, "num_attention_heads": 3,
             "word_embed_proj_dim": 96, "vocab_size": 300},
            torch.float32,
            None,
        ),
    ],
    ids=["llama-fp32", "llama-bf16", "llama-lora", "llama-lora-bf16-no-dropout", "gpt2", "opt"],
)
def test_activation_bytes_per_layer_are_what_autograd_keeps(config, dtype, lora):
    tokens = 48
    measured = saved_bytes_per_token_and_layer(config, dtype=dtype, lora=lora, tokens=tokens)
    predicted = layer_bytes(
        shape_of(AutoConfig.for_model(**config).to_dict()),  # with the defaults a saved config.json spells out
        method="full" if lora is None else "lora",
        weight_bytes=2 if dtype == torch.bfloat16 else 4,
        lora=lora or LoraSpec(),
        tokens_per_sequence=tokens,
    )
    assert predicted == pytest.approx(measured, rel=0.1)


def test_plan_splits_the_batch_into_micro_batches_that_keep_the_optimizer_step():
    roomy = plan_trial(spec(), qwen("0.5b"), GPU_80)
    tight = plan_trial(spec(), qwen("0.5b"), Device(kind="cuda", total_bytes=16 * GIB))
    assert (roomy.micro_batch_size, roomy.gradient_accumulation, roomy.gradient_checkpointing) == (8, 1, False)
    assert tight.fits and tight.micro_batch_size < 8 and not tight.gradient_checkpointing
    assert tight.micro_batch_size * tight.gradient_accumulation >= 8 > (tight.gradient_accumulation - 1) * tight.micro_batch_size
    assert tight.phase("train").bytes <= tight.capacity_bytes


def test_plan_turns_checkpointing_on_only_when_no_micro_batch_fits_without_it():
    device = Device(kind="cuda", total_bytes=40 * GIB)
    plan = plan_trial(spec(maxSeqLength=8192), qwen("1.5b"), device)
    without = plan_trial(spec(maxSeqLength=8192, gradientCheckpointing=False), qwen("1.5b"), device)
    shorter = plan_trial(spec(maxSeqLength=2048), qwen("1.5b"), device)
    assert plan.fits and plan.gradient_checkpointing
    assert not without.fits  # what the plan avoided
    assert shorter.fits and not shorter.gradient_checkpointing


def test_plan_refuses_a_trial_that_nothing_makes_fit_and_says_by_how_much():
    plan = plan_trial(spec(method="full"), qwen("7b"), GPU_80)
    assert not plan.fits
    assert (plan.micro_batch_size, plan.gradient_checkpointing) == (1, True)  # the smallest choice was tried
    message = plan.refusal()
    assert "train phase needs" in message and "optimizer 56.7" in message and "use training.method lora" in message


def test_a_7b_model_with_lora_fits_80gb_with_its_ntk_at_probe_64_over_the_adapters_or_all_weights():
    lora = plan_trial(spec(method="lora"), qwen("7b"), GPU_80)
    everything = plan_trial(
        spec(method="lora").model_copy(update={"ntk": spec().ntk.model_copy(update={"scope": "all"})}), qwen("7b"), GPU_80
    )
    assert lora.fits and (lora.ntk_scope, lora.ntk_method) == ("lora", "exact")
    assert everything.fits and (everything.ntk_scope, everything.ntk_method) == ("all", "sketch")
    # weights, one example's activations and its gradient over all 7.6B weights, the sketches
    assert everything.phase("ntk").bytes < 0.6 * everything.capacity_bytes


def test_a_gpu_trial_plans_the_host_memory_it_holds_and_refuses_a_pod_too_small_for_it():
    """A GPU trial keeps the starting trainable weights on the host, and a trial that saves its model on the target
    copies one shard at a time there; on the CPU the phases count the copy already."""
    full = plan_trial(spec(method="full"), qwen("1.5b"), GPU_80)
    assert full.fits and full.host_bytes == full.trainable_parameters * 2  # bfloat16
    saving = spec(method="full").model_copy(update={"subset_sizes": [1000, 100000],
                                                    "output": spec().output.model_copy(update={"model_dir": "/m"})})
    largest = 151936 * 1536 * 2  # the embedding, a shard of its own at 445 MiB < SAVE_SHARD_BYTES
    assert largest < SAVE_SHARD_BYTES
    assert plan_trial(saving, qwen("1.5b"), GPU_80).host_bytes == full.host_bytes + SAVE_SHARD_BYTES
    lora = plan_trial(spec(method="lora"), qwen("7b"), GPU_80)
    assert lora.host_bytes == lora.trainable_parameters * 4  # float32 adapters
    assert plan_trial(spec(method="full"), qwen("0.5b"), Device(kind="cpu", total_bytes=64 * GIB)).host_bytes == 0

    assert full.host_refusal(full.host_bytes) is None
    refusal = full.host_refusal(2 * GIB)
    assert "needs 2.88 GiB of host memory" in refusal and "may use 2.00 GiB" in refusal and "resources.memory" in refusal
    assert "host 2.88 GiB beyond the process" in full.explain()


def test_ntk_method_auto_is_exact_when_the_probe_gradients_fit_and_a_sketch_otherwise(tiny_models):
    small = plan_trial(spec(), config_of(tiny_models["llama"]), GPU_80)
    large = plan_trial(spec(), qwen("0.5b"), GPU_80)
    bounded = plan_trial(
        spec().model_copy(update={"ntk": spec().ntk.model_copy(update={"method": "exact", "max_resident_bytes": 2**28})}),
        qwen("0.5b"),
        GPU_80,
    )
    assert (small.ntk_method, small.ntk_chunks) == ("exact", 1)
    assert large.ntk_method == "sketch"
    assert bounded.ntk_method == "exact" and bounded.ntk_chunks > 100 and bounded.ntk_resident_bytes <= 2**28


def test_plan_rejects_configs_and_sizes_it_cannot_read():
    with pytest.raises(PlanError, match="no memory model for architecture 'mamba'"):
        shape_of({"model_type": "mamba"})
    assert parse_bytes("80Gi") == 80 * GIB and parse_bytes("80G") == 80 * 10**9 and parse_bytes("1024") == 1024
    with pytest.raises(PlanError, match="'eighty' is not a size"):
        parse_bytes("eighty")


def memory_check(spec_path: Path, *phases: str) -> dict[str, dict]:
    script = REPO / "bench" / "memory_plan_check.py"
    command = [sys.executable, str(script), "--spec", str(spec_path), "--phases", ",".join(phases)]
    proc = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    print(proc.stdout)
    return {row["phase"]: row for row in json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.fixture(scope="module")
def plannable_llama(tmp_path_factory, tokenizer):
    """A Llama large enough (7M parameters) that its phases' memory stands out of the process's noise."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("plannable")
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        vocab_size=8192,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", ["full", "lora"])
def test_predicted_peak_memory_is_within_25_percent_of_the_measured_peak_on_the_cpu(
    plannable_llama, text_dir, spec_file, method
):
    """One batch of training: the first optimizer step allocates AdamW's states, and later steps peak no higher."""
    path = spec_file(
        {
            "candidate": {"model": str(plannable_llama)},
            "dataset": {"source": str(text_dir), "textField": "text", "maxTestExamples": 64},
            "subsetSizes": [16],
            "targetSize": 1000,
            "device": "cpu",
            "training": {"method": method, "batchSize": 16, "maxSeqLength": 128},
            "ntk": {"probeSize": 32},
        }
    )
    rows = memory_check(path, "train", "evaluate", "ntk")
    for phase in ("train", "evaluate"):
        assert rows[phase]["ratio"] == pytest.approx(1, abs=0.25), rows[phase]
    predicted_peak = max(r["predicted"] for r in rows.values())
    measured_peak = max(r["measured"] for r in rows.values())
    assert predicted_peak == pytest.approx(measured_peak, rel=0.25)


def test_an_architecture_without_a_memory_model_runs_as_the_spec_says():
    plan = unplanned(spec(batchSize=16, microBatchSize=4, gradientCheckpointing=True), GPU_80, 512)
    assert (plan.micro_batch_size, plan.gradient_accumulation, plan.gradient_checkpointing) == (4, 4, True)
    assert plan.fits and plan.phases == [] and plan.eval_batch_tokens == 16 * 512


def test_a_cpu_trial_plans_for_its_cgroup_memory_limit_where_there_is_one_not_for_the_nodes_memory(tmp_path):
    """In a pod the node's physical memory is not what the trial may use: resources.memory is, as the cgroup's
    limit. cgroup v2 names the pod's path (a limit on an ancestor applies too); v1 inside a container often mounts
    the container's own cgroup as the root while /proc names its path on the host."""
    physical = host_memory_bytes(tmp_path / "none", tmp_path / "no-such-file")
    v2, proc = tmp_path / "v2", tmp_path / "cgroup"
    (v2 / "kubepods" / "pod1" / "ctr").mkdir(parents=True)
    (v2 / "kubepods" / "memory.max").write_text("max\n")
    (v2 / "kubepods" / "pod1" / "memory.max").write_text(f"{GIB}\n")
    (v2 / "kubepods" / "pod1" / "ctr" / "memory.max").write_text("max\n")
    proc.write_text("0::/kubepods/pod1/ctr\n")
    assert host_memory_bytes(v2, proc) == min(physical, GIB) == GIB

    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{2 * GIB}\n")
    proc.write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert host_memory_bytes(v1, proc) == 2 * GIB
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert host_memory_bytes(v1, proc) == physical
