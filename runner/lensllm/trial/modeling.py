"""Model side of a trial: device and dtype choice, loading, LoRA, weight snapshots, losses.

Called by the recipe, the NTK and `bench/runner_throughput.py`. Causal and encoder-decoder
models are told apart by `config.is_encoder_decoder`, never by name. The losses live in
`losses.py`, the optimizer in `optim.py`.
"""

import resource

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from lensllm.trial.failures import InvalidSpec, ModelNotFound, first_line
from lensllm.trial.model_files import check_local, model_not_found
from lensllm.trial.spec import CandidateSpec, LoraSpec

TOKENIZER_PROBE_TEXTS = 64  # enough to tell a tokenizer that reads nothing from texts that happen to be odd


def choose_device(requested: str) -> torch.device:
    """The device the spec asks for; auto takes the current CUDA device when one is visible."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise InvalidSpec("device: cuda requested but no CUDA device is visible")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def choose_dtype(requested: str, device: torch.device) -> torch.dtype:
    """bfloat16 where the GPU supports it (no loss scaling needed), float32 elsewhere."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def load_candidate(spec: CandidateSpec, *, dtype: torch.dtype, device: torch.device):
    """Model and tokenizer of the candidate; the model class follows the config."""
    tokenizer = load_tokenizer(spec)
    return load_model(spec, dtype=dtype, device=device), tokenizer


def load_tokenizer(spec: CandidateSpec):
    """The candidate's tokenizer, with a pad token (EOS when it has none)."""
    check_local(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.model, **_where(spec))
    except (OSError, ValueError) as err:  # not found, not downloadable, or not a tokenizer
        raise model_not_found(spec.model, err) from None
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        # transformers builds a tokenizer of its special tokens alone when a GPT-2 or OPT folder has no tokenizer
        # files: every text would encode to nothing, and the trial would measure noise.
        raise ModelNotFound(f"candidate.model {spec.model!r}: its tokenizer has no vocabulary ({len(tokenizer)} "
                            "tokens, all special): are its tokenizer files (tokenizer.json, or vocab.json and "
                            "merges.txt) missing?")
    if tokenizer.eos_token_id is None:
        raise InvalidSpec(f"candidate.model {spec.model!r}: its tokenizer has no EOS token to end targets with")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of attention and loss anyway
    return tokenizer


def check_tokenizer_reads(tokenizer, spec: CandidateSpec, texts: list[str], field: str) -> None:
    """Most non-blank `texts` encode to at least one token. transformers loads some model types' tokenizers through
    their own class whatever the folder says (a qwen2 folder's through Qwen2Tokenizer, which rebuilds a byte-level
    BPE from the vocabulary): a tokenizer of another kind read that way encodes every text to nothing, and the trial
    would score end tokens alone. `field`: where the texts come from, for the message."""
    texts = [text for text in texts if text.strip()][:TOKENIZER_PROBE_TEXTS]
    if not texts:
        return
    empty = sum(not ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    if 2 * empty > len(texts):
        raise ModelNotFound(f"candidate.model {spec.model!r}: its tokenizer ({type(tokenizer).__name__}) encodes "
                            f"{empty} of {len(texts)} non-blank texts of {field} to no tokens: are its tokenizer "
                            "files this model type's?")


def load_model(spec: CandidateSpec, *, dtype: torch.dtype, device: torch.device):
    """The candidate's weights on the device; the model class follows the config."""
    check_local(spec)
    where = _where(spec)
    try:
        config = AutoConfig.from_pretrained(spec.model, **where)
        model_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        # device_map puts the weights straight on the device: no full host copy of a large model first.
        model = model_class.from_pretrained(spec.model, config=config, dtype=dtype, device_map=device, **where)
    except (OSError, ValueError) as err:  # not found, not downloadable, or not a model these classes load
        raise model_not_found(spec.model, err) from None
    model.config.use_cache = False  # no generation here; the cache only costs memory in training
    return model


def _where(spec: CandidateSpec) -> dict[str, str]:
    return {k: v for k, v in {"revision": spec.revision, "gguf_file": spec.gguf_file}.items() if v is not None}


def enable_gradient_checkpointing_(model) -> None:
    """Recompute activations in backward; call it after any peft wrapping.

    The gradient_ name is deprecated in transformers 5.x for activation_, which 5.0 may lack; both go in v6.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Non-reentrant checkpointing needs no grad on its inputs (frozen embeddings under LoRA), so the
    # hook transformers adds for that is not needed; its requires_grad_() in forward breaks torch.func (the NTK).
    model.disable_input_require_grads()


def apply_lora(model, lora: LoraSpec, *, seq2seq: bool):
    """Wrap the model with peft LoRA adapters; only the adapters stay trainable."""
    from peft import LoraConfig, TaskType, get_peft_model  # imported here: 3 s of start-up a full fine-tune skips

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules or "all-linear",
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. target modules that the model does not have
        raise InvalidSpec(f"training.lora.targetModules: {first_line(err)}") from None


def snapshot(model) -> dict[str, torch.Tensor]:
    """Copies of the trainable weights, kept on the CPU so a GPU holds the model only once."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def restore_(model, weights: dict[str, torch.Tensor]) -> None:
    """Put the snapshot back in place: every subset size starts from the pre-trained weights."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in weights:
                p.copy_(weights[name])


def parameter_counts(model) -> tuple[int, int]:
    """(all parameters, trainable parameters); shared tensors count once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def body_and_head(model):
    """The transformer body (embeddings to final norm) and the LM head of a causal LM, peft-wrapped or not."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps in place
    return getattr(lm, lm.base_model_prefix), lm.get_output_embeddings()


def compile_body_(model) -> None:
    """torch.compile the transformer body in place (parameter names stay as they are); all of an encoder-decoder."""
    target = model if model.config.is_encoder_decoder else body_and_head(model)[0]
    target.compile(dynamic=True)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak bytes held: allocated on the GPU, else the process's peak resident set (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cudaAllocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "processRss"


def training_flops(total: int, trainable: int, tokens: int) -> float:
    """About 2N forward + 2N activation gradients + 2 x trainable weight gradients per token (6N in full)."""
    return float((4 * total + 2 * trainable) * tokens)


def evaluation_flops(total: int, tokens: int) -> float:
    return float(2 * total * tokens)
