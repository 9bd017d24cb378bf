"""The memory plan of a trial: what each phase holds on the device, and the settings that make it fit.

Pure arithmetic on the model's config (config.json, no weights), the trial spec and the
device's memory: no torch, so the runner can refuse a trial before it loads a single weight,
and `lensllm plan` (and the operator) can show the plan of every candidate of a selection.
The recipe then runs what the plan chose: micro-batch, gradient checkpointing, evaluation
batch, NTK scope and method.

Where the bytes come from:
- Weights, gradients, AdamW's two float32 moments and, for low-precision weights that
  train, a float32 master copy per trainable weight (see modeling.fp32_masters).
- Activations autograd keeps for backward, per token and transformer layer. The
  coefficients in `_LAYER_BYTES` were counted with torch.autograd.graph.saved_tensors_hooks
  (unique storages, weights excluded) on Hugging Face models (transformers 5.24, torch 2.13,
  sdpa attention) while varying one dimension at a time; tests/runner/test_memory.py recounts
  them, so a library upgrade that changes them fails a test instead of a plan.
  Attention that keeps its score matrix (attention dropout, eager attention) adds 12 bytes
  per head per key position.
- Logits exist for one chunk of scored positions at a time (modeling.HEAD_CHUNK_BYTES),
  except for encoder-decoders, which keep the model's own full-logit forward.
- The NTK holds one example's activations and gradient, plus its resident buffer: the
  probe's per-example gradients of one parameter chunk (exact) or their sketches.
"""

import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from lensllm.errors import LensLLMError
from lensllm.trial.spec import LoraSpec, TrialSpec, WireModel

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
HEAD_CHUNK_BYTES = 64 * 2**20  # float32 logits of one LM-head chunk (modeling.py uses the same bound)
SKETCH_BLOCK = 1 << 24  # gradient entries hashed at once by the sketch (ntk.py uses the same block)
GRAM_BLOCK_BYTES = 64 * 2**20  # float64 copy of the Jacobian columns one Gram update multiplies (ntk.py)
EVAL_MAX_EXAMPLES = 64  # larger evaluation batches gain nothing once a batch fills the device
EVAL_MIN_FILL = 0.9  # an evaluation batch ends before an example shorter than this share of its width
GPU_RESERVED = GIB // 2  # CUDA context, cuBLAS workspaces
GPU_USABLE = 0.92  # the rest of the margin: allocator fragmentation
# peft adapts these modules with target_modules "all-linear", per family; (input, output) widths.
_LINEARS = {
    "gated": lambda s: {
        "q_proj": (s.hidden, s.q_dim),
        "k_proj": (s.hidden, s.kv_dim),
        "v_proj": (s.hidden, s.kv_dim),
        "o_proj": (s.q_dim, s.hidden),
        "gate_proj": (s.hidden, s.intermediate),
        "up_proj": (s.hidden, s.intermediate),
        "down_proj": (s.intermediate, s.hidden),
    },
    "gpt2": lambda s: {
        "c_attn": (s.hidden, 3 * s.hidden),
        "attn.c_proj": (s.hidden, s.hidden),
        "c_fc": (s.hidden, s.intermediate),
        "mlp.c_proj": (s.intermediate, s.hidden),
    },
    "opt": lambda s: {
        "q_proj": (s.hidden, s.hidden),
        "k_proj": (s.hidden, s.hidden),
        "v_proj": (s.hidden, s.hidden),
        "out_proj": (s.hidden, s.hidden),
        "fc1": (s.hidden, s.intermediate),
        "fc2": (s.intermediate, s.hidden),
    },
}
# Bytes kept for backward per token and layer: coefficients of (hidden, q + kv widths, intermediate,
# LoRA rank x adapted modules, heads), by family, method and weight bytes. See the module docstring.
_LAYER_BYTES: dict[tuple[str, str, int], tuple[float, float, float, float, float]] = {
    ("gated", "full", 4): (24, 8, 16, 0, 4),
    ("gated", "full", 2): (16, 4, 8, 0, 4),
    ("gated", "lora", 4): (48, 13.33, 20, 4, 4),
    ("gated", "lora", 2): (48, 9.33, 14, 4, 4),
    ("gated", "loraNoDropout", 4): (16, 8, 16, 4, 4),
    ("gated", "loraNoDropout", 2): (28, 6.67, 10, 4, 4),
    ("gpt2", "full", 4): (40, 0, 20, 0, 0),
    ("gpt2", "full", 2): (26, 0, 10, 0, 0),
    ("opt", "full", 4): (40, 0, 4, 0, 4),
    ("opt", "full", 2): (20, 0, 2, 0, 4),
}
GATED_TYPES = frozenset(
    "llama mistral mixtral qwen2 qwen3 gemma phi3 olmo olmo2 granite smollm3 cohere internlm2 yi deepseek".split()
)


class PlanError(LensLLMError):
    """The plan cannot be made: a config it does not understand, a size it cannot parse."""


@dataclass(frozen=True)
class Shape:
    """What the plan needs to know of an architecture, read from its config."""

    family: Literal["gated", "gpt2", "opt", "seq2seq"]
    hidden: int
    layers: int
    heads: int
    q_dim: int
    kv_dim: int
    intermediate: int
    vocab: int
    tied: bool
    attention_scores: bool  # the attention keeps its softmax (dropout or eager): O(T) bytes per token
    positions: int = 0  # learned position embeddings

    @property
    def encoder_decoder(self) -> bool:
        return self.family == "seq2seq"


def shape_of(config: dict) -> Shape:
    """The Shape of a Hugging Face config dict; PlanError for an architecture the plan does not model."""
    kind = config.get("model_type", "")
    try:
        if kind == "gpt2":
            return _gpt2_shape(config)
        if kind == "opt":
            return _opt_shape(config)
        if config.get("is_encoder_decoder"):
            return _seq2seq_shape(config)
        if "intermediate_size" in config and "num_hidden_layers" in config:
            return _gated_shape(config)
    except (KeyError, TypeError) as err:
        raise PlanError(f"model config of type {kind!r} lacks {err}") from None
    raise PlanError(f"no memory model for architecture {kind!r}")


def _gated_shape(c: dict) -> Shape:
    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    head_dim = c.get("head_dim") or hidden // heads
    return Shape(
        family="gated",
        hidden=hidden,
        layers=c["num_hidden_layers"],
        heads=heads,
        q_dim=heads * head_dim,
        kv_dim=(c.get("num_key_value_heads") or heads) * head_dim,
        intermediate=c["intermediate_size"],
        vocab=c["vocab_size"],
        tied=bool(c.get("tie_word_embeddings", False)),
        attention_scores=bool(c.get("attention_dropout", 0.0)),
    )


def _gpt2_shape(c: dict) -> Shape:
    hidden = c["n_embd"]
    return Shape(
        family="gpt2",
        hidden=hidden,
        layers=c["n_layer"],
        heads=c["n_head"],
        q_dim=hidden,
        kv_dim=hidden,
        intermediate=c.get("n_inner") or 4 * hidden,
        vocab=c["vocab_size"],
        tied=bool(c.get("tie_word_embeddings", True)),
        attention_scores=bool(c.get("attn_pdrop", 0.1)),
        positions=c["n_positions"],
    )


def _opt_shape(c: dict) -> Shape:
    hidden = c["hidden_size"]
    return Shape(
        family="opt",
        hidden=hidden,
        layers=c["num_hidden_layers"],
        heads=c["num_attention_heads"],
        q_dim=hidden,
        kv_dim=hidden,
        intermediate=c["ffn_dim"],
        vocab=c["vocab_size"],
        tied=bool(c.get("tie_word_embeddings", True)),
        attention_scores=bool(c.get("attention_dropout", 0.0)),
        positions=c["max_position_embeddings"] + 2,
    )


def _seq2seq_shape(c: dict) -> Shape:
    """T5-style encoder-decoders: counted as a decoder stack as deep as both stacks, with full logits."""
    hidden = c["d_model"]
    heads, head_dim = c["num_heads"], c.get("d_kv") or hidden // c["num_heads"]
    return Shape(
        family="seq2seq",
        hidden=hidden,
        layers=c["num_layers"] + (c.get("num_decoder_layers") or c["num_layers"]),
        heads=heads,
        q_dim=heads * head_dim,
        kv_dim=heads * head_dim,
        intermediate=c["d_ff"],
        vocab=c["vocab_size"],
        tied=bool(c.get("tie_word_embeddings", True)),
        attention_scores=True,  # relative position bias: T5 attention is eager
    )


def estimated_parameters(shape: Shape) -> int:
    """Parameters of the model (shared tensors once), from its shape; biases and norms approximately."""
    s = shape
    attention = s.hidden * (2 * s.q_dim + 2 * s.kv_dim) + 2 * s.q_dim + 2 * s.kv_dim
    mlp = (3 if s.family == "gated" else 2) * s.hidden * s.intermediate + s.intermediate + s.hidden
    if s.family == "seq2seq":  # decoder layers also cross-attend
        attention = int(attention * 1.5)
    per_layer = attention + mlp + 4 * s.hidden
    embeddings = s.vocab * s.hidden * (1 if s.tied else 2) + s.positions * s.hidden
    return int(s.layers * per_layer + embeddings + 2 * s.hidden)


def lora_parameters(shape: Shape, lora: LoraSpec) -> int:
    """Adapter parameters peft adds: r x (in + out) per adapted linear layer."""
    widths = _adapted(shape, lora)
    return shape.layers * lora.r * sum(i + o for i, o in widths.values())


def _adapted(shape: Shape, lora: LoraSpec) -> dict[str, tuple[int, int]]:
    linears = _LINEARS.get(shape.family, _LINEARS["gated"])(shape)
    if not lora.target_modules:
        return linears
    wanted = [re.compile(rf"(^|\.){re.escape(t)}$") for t in lora.target_modules]
    return {name: w for name, w in linears.items() if any(p.search(name) for p in wanted)}


def layer_bytes(shape: Shape, *, method: str, weight_bytes: int, lora: LoraSpec, tokens_per_sequence: int) -> float:
    """Bytes autograd keeps per token in one transformer layer."""
    variant = method if method == "full" else ("lora" if lora.dropout > 0 else "loraNoDropout")
    key = (shape.family, variant, weight_bytes)
    if key not in _LAYER_BYTES:  # LoRA on gpt2/opt, and encoder-decoders: the gated counts, the nearest measured
        key = ("gated", variant, weight_bytes)
    c_hidden, c_attention, c_mlp, c_rank, c_heads = _LAYER_BYTES[key]
    modules = len(_adapted(shape, lora)) if method != "full" else 0
    value = (
        c_hidden * shape.hidden
        + c_attention * (shape.q_dim + shape.kv_dim)
        + c_mlp * shape.intermediate
        + c_rank * lora.r * modules
        + c_heads * shape.heads
    )
    if shape.attention_scores:
        value += 12 * shape.heads * tokens_per_sequence
    return value


class Phase(WireModel):
    """Peak device bytes of one phase of the trial, and what they are made of."""

    name: Literal["train", "evaluate", "ntk"] = Field(description="Phase of the trial.")
    bytes: int = Field(description="Predicted peak bytes of the phase.")
    parts: dict[str, int] = Field(description="Bytes by kind: weights, gradients, optimizer, activations, ...")


class MemoryPlan(WireModel):
    """Settings chosen so every phase of the trial fits the device, and the bytes predicted for each."""

    device: str = Field(description="cuda or cpu.")
    capacity_bytes: int = Field(description="Device memory the plan may use (after the CUDA context and a margin).")
    dtype: str = Field(description="Weight dtype.")
    parameters: int = Field(description="Model parameters (from weight file headers when local, else the config).")
    trainable_parameters: int = Field(description="Parameters fine-tuning updates.")
    sequence_length: int = Field(description="Longest sequence planned for (tokens).")
    micro_batch_size: int = Field(description="Examples per forward pass.")
    gradient_accumulation: int = Field(description="Forward passes per optimizer step.")
    gradient_checkpointing: bool = Field(description="Whether activations are recomputed in backward.")
    eval_batch_tokens: int = Field(description="Padded token positions per evaluation batch.")
    ntk_scope: str | None = Field(default=None, description="Parameters the NTK differentiates.")
    ntk_method: Literal["exact", "sketch"] | None = Field(default=None, description="How the NTK Gram is computed.")
    ntk_chunks: int | None = Field(default=None, description="Parameter chunks of the exact method (passes).")
    ntk_resident_bytes: int | None = Field(default=None, description="Bytes of per-example gradients held at once.")
    phases: list[Phase] = Field(description="Predicted peak of each phase.")
    fits: bool = Field(description="Whether every phase fits capacityBytes.")

    @property
    def peak_bytes(self) -> int:
        return max(p.bytes for p in self.phases)

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def refusal(self) -> str:
        """One line for WillNotFit: the phase that does not fit, what it is made of, what would shrink it."""
        worst = max(self.phases, key=lambda p: p.bytes)
        parts = ", ".join(f"{name} {gib(size)}" for name, size in worst.parts.items() if size)
        return (
            f"the {worst.name} phase needs {gib(worst.bytes)} ({parts}) at micro-batch {self.micro_batch_size}, "
            f"checkpointing {'on' if self.gradient_checkpointing else 'off'}, {self.sequence_length} tokens; "
            f"{self.device} has {gib(self.capacity_bytes)} usable: use training.method lora, a shorter "
            "training.maxSeqLength or a larger device"
        )

    def explain(self) -> str:
        """One line: the chosen settings and each phase against the capacity."""
        phases = ", ".join(f"{p.name} {gib(p.bytes)}" for p in self.phases)
        ntk = f", NTK {self.ntk_scope}/{self.ntk_method}" if self.ntk_method else ""
        return (
            f"micro-batch {self.micro_batch_size} x {self.gradient_accumulation}, checkpointing "
            f"{'on' if self.gradient_checkpointing else 'off'}{ntk}; peak {phases} of {gib(self.capacity_bytes)}"
        )


@dataclass(frozen=True)
class Device:
    """Where the trial runs and how much memory that device has in all."""

    kind: Literal["cuda", "cpu"]
    total_bytes: int

    @property
    def capacity_bytes(self) -> int:
        if self.kind == "cpu":
            return self.total_bytes
        return int(self.total_bytes * GPU_USABLE) - GPU_RESERVED


@dataclass(frozen=True)
class _Model:
    """The per-trial constants every phase's arithmetic shares."""

    shape: Shape
    method: str
    lora: LoraSpec
    weight_bytes: int
    parameters: int
    trainable: int
    trainable_bytes: int  # bytes per trainable weight (LoRA adapters are float32)
    on_host: bool

    @property
    def weights(self) -> int:
        adapters = self.trainable * self.trainable_bytes if self.method == "lora" else 0
        return self.parameters * self.weight_bytes + adapters

    @property
    def largest_tensor(self) -> int:
        s = self.shape
        return max(s.vocab * s.hidden, s.hidden * s.intermediate, s.hidden * (s.q_dim + 2 * s.kv_dim))

    @property
    def snapshot(self) -> int:
        """The starting weights the recipe restores before each size live in host memory."""
        return self.trainable * self.trainable_bytes if self.on_host else 0

    def activations(self, tokens: int, sequence: int, *, checkpointing: bool, training: bool = True) -> tuple[int, int]:
        """(bytes kept for backward, one layer's transient bytes) for a micro-batch of `tokens`.

        Not training (the NTK runs the model in eval mode), LoRA's dropout keeps no copies.
        """
        lora = self.lora if training else self.lora.model_copy(update={"dropout": 0.0})
        layer = layer_bytes(
            self.shape, method=self.method, weight_bytes=self.weight_bytes, lora=lora, tokens_per_sequence=sequence
        )
        head = 3 * self.weight_bytes * self.shape.hidden  # body output, scored hidden states, their gradient
        kept = self.shape.layers * (self.weight_bytes * self.shape.hidden if checkpointing else layer) + head
        return int(tokens * kept), int(tokens * layer)

    def logits(self, tokens: int, *, training: bool) -> int:
        """Logits of one LM-head chunk: float32 logits and log-softmax, and in training their gradient.

        (The weight-dtype logits die as soon as they are cast to float32.)
        """
        per_logit = 8 + (4 if training else 0)
        if self.shape.encoder_decoder:  # the model's own forward: logits for every position
            return tokens * self.shape.vocab * per_logit
        return min(tokens, max(1, HEAD_CHUNK_BYTES // (4 * self.shape.vocab))) * self.shape.vocab * per_logit


def plan_trial(
    spec: TrialSpec,
    config: dict,
    device: Device,
    *,
    parameters: int | None = None,
    sequence_length: int | None = None,
    eval_lengths: list[int] | None = None,
) -> MemoryPlan:
    """Choose micro-batch, checkpointing, evaluation batch and NTK method so that each phase fits.

    `parameters` is the exact count when the weight files tell it; `sequence_length` the
    longest tokenised example and `eval_lengths` the test examples' lengths when the data is
    at hand (else every sequence is planned at training.maxSeqLength). When no choice fits,
    the plan says so (fits False) with the numbers of the smallest choice.
    """
    shape = shape_of(config)
    training = spec.training
    dtype = spec.candidate.dtype if spec.candidate.dtype != "auto" else ("bfloat16" if device.kind == "cuda" else "float32")
    total = parameters or estimated_parameters(shape)
    lora = training.method == "lora"
    trainable = lora_parameters(shape, training.lora) if lora else total
    model = _Model(
        shape=shape,
        method=training.method,
        lora=training.lora,
        weight_bytes=DTYPE_BYTES[dtype],
        parameters=total,
        trainable=trainable,
        trainable_bytes=4 if lora else DTYPE_BYTES[dtype],
        on_host=device.kind == "cpu",
    )
    sequence = min(sequence_length or training.max_seq_length, training.max_seq_length)
    capacity = device.capacity_bytes
    micro, checkpointing, train = _choose_training(model, spec, sequence, capacity, fused=device.kind == "cuda")
    evaluate, eval_tokens = _choose_evaluation(model, sequence, capacity, eval_lengths)
    phases = [train, evaluate]
    ntk_fields: dict = {}
    if spec.ntk.enabled:
        ntk_phase, ntk_fields = _choose_ntk(model, spec, sequence, capacity)
        phases.append(ntk_phase)
    step_examples = training.batch_size * training.gradient_accumulation
    return MemoryPlan(
        device=device.kind,
        capacity_bytes=capacity,
        dtype=dtype,
        parameters=total,
        trainable_parameters=trainable,
        sequence_length=sequence,
        micro_batch_size=micro,
        gradient_accumulation=math.ceil(step_examples / micro),
        gradient_checkpointing=checkpointing,
        eval_batch_tokens=eval_tokens,
        phases=phases,
        fits=all(p.bytes <= capacity for p in phases),
        **ntk_fields,
    )


def unplanned(spec: TrialSpec, device: Device, sequence: int) -> MemoryPlan:
    """The spec's own settings, for an architecture the memory plan cannot model."""
    training = spec.training
    micro = min(training.micro_batch_size or training.batch_size, training.batch_size)
    return MemoryPlan(
        device=device.kind,
        capacity_bytes=device.capacity_bytes,
        dtype=spec.candidate.dtype,
        parameters=0,
        trainable_parameters=0,
        sequence_length=sequence,
        micro_batch_size=micro,
        gradient_accumulation=math.ceil(training.batch_size * training.gradient_accumulation / micro),
        gradient_checkpointing=bool(training.gradient_checkpointing),
        eval_batch_tokens=training.batch_size * sequence,
        ntk_scope=spec.ntk_scope,
        ntk_method="sketch" if spec.ntk.method == "sketch" else "exact",
        ntk_chunks=1,
        phases=[],
        fits=True,
    )


def _choose_training(model: _Model, spec: TrialSpec, sequence: int, capacity: int, *, fused: bool):
    """The largest micro-batch that fits, without checkpointing if any does (unless the spec decides)."""
    training = spec.training
    largest = min(training.micro_batch_size or training.batch_size, training.batch_size)
    sizes = [largest] if training.micro_batch_size else list(range(largest, 0, -1))
    options = [training.gradient_checkpointing] if training.gradient_checkpointing is not None else [False, True]
    accumulates = training.batch_size * training.gradient_accumulation > 1
    for checkpointing in options:
        for micro in sizes:
            phase = _train_phase(model, micro, sequence, checkpointing, accumulates, fused=fused)
            if phase.bytes <= capacity:
                return micro, checkpointing, phase
    return sizes[-1], options[-1], _train_phase(model, sizes[-1], sequence, options[-1], accumulates, fused=fused)


def _train_phase(model: _Model, micro: int, sequence: int, checkpointing: bool, accumulates: bool, *, fused: bool):
    tokens = micro * sequence
    kept, layer = model.activations(tokens, sequence, checkpointing=checkpointing)
    gradients = model.trainable * model.trainable_bytes
    masters = model.trainable * 4 if model.trainable_bytes < 4 else 0
    # At the step: float32 gradients of the masters, or foreach AdamW's float32 temporaries.
    step_extra = masters + (0 if fused else model.trainable * 4)
    parts = {
        "weights": model.weights,
        "masterWeights": masters,
        "optimizer": 8 * model.trainable,
        "snapshot": model.snapshot,
    }
    logits = model.logits(tokens, training=True)
    forward_backward = kept + layer + logits + (gradients if accumulates else 0)
    step = gradients + step_extra
    if forward_backward >= step:
        parts |= {"activations": kept + layer, "logits": logits}
        parts["gradients"] = gradients if accumulates else 0
    else:
        parts |= {"gradients": gradients, "stepTemporaries": step_extra}
    return Phase(name="train", bytes=sum(parts.values()), parts=parts)


def _choose_evaluation(
    model: _Model, sequence: int, capacity: int, lengths: list[int] | None
) -> tuple[Phase, int]:
    """The largest token budget per evaluation batch that fits; the phase as its largest real batch."""
    for examples in range(EVAL_MAX_EXAMPLES, 0, -1):
        budget = examples * sequence
        largest = budget
        if lengths:
            largest = max(len(b) * lengths[b[0]] for b in eval_batches(lengths, budget, EVAL_MAX_EXAMPLES))
        phase = _eval_phase(model, largest, sequence)
        if phase.bytes <= capacity or examples == 1:
            return phase, budget
    raise AssertionError("unreachable")


def _eval_phase(model: _Model, tokens: int, sequence: int) -> Phase:
    shape, b = model.shape, model.weight_bytes
    # Without autograd only one layer's intermediates live at once: the residual stream and its
    # normalised copy (float32 inside RMSNorm), and two of the attention's or the MLP's widest.
    widest = max(shape.q_dim + shape.kv_dim, shape.intermediate)
    per_token = b * (2 * shape.hidden + 2 * widest) + 8 * shape.hidden
    if shape.attention_scores:
        per_token += 12 * shape.heads * sequence
    parts = {
        "weights": model.weights,
        "snapshot": model.snapshot,
        "activations": tokens * per_token,
        "logits": model.logits(tokens, training=False),
    }
    return Phase(name="evaluate", bytes=sum(parts.values()), parts=parts)


def _choose_ntk(model: _Model, spec: TrialSpec, sequence: int, capacity: int) -> tuple[Phase, dict]:
    ntk = spec.ntk
    scope = spec.ntk_scope
    scoped, scoped_bytes = _scope_size(model, scope, ntk.last_blocks)
    n = ntk.probe_size
    kept, layer = model.activations(sequence, sequence, checkpointing=False, training=False)
    base = {
        "weights": model.weights,
        "snapshot": model.snapshot,
        "activations": kept + layer,
        "logits": model.logits(sequence, training=True),
        "gram": 8 * n * n,
    }
    jacobian = n * scoped * 4
    free = capacity - sum(base.values()) - scoped * scoped_bytes
    budget = ntk.max_resident_bytes or max(free, 1)
    chunks = max(1, math.ceil(jacobian / budget))
    method = ntk.method if ntk.method != "auto" else ("exact" if chunks == 1 else "sketch")
    if method == "exact":
        resident = min(jacobian, math.ceil(scoped / chunks) * n * 4)
        # A low-precision gradient is copied to float32 on its way into the Jacobian.
        converted = 4 if scoped_bytes < 4 else 0
        parts = base | {
            "exampleGradient": math.ceil(scoped / chunks) * (scoped_bytes + converted),
            "resident": resident + min(GRAM_BLOCK_BYTES, 2 * resident),
        }
    else:
        chunks, resident = 1, n * ntk.sketch_dim * 4
        # The sketch hashes a block of a weight tensor's gradient at a time: index, bucket, sign, value.
        block = min(SKETCH_BLOCK, model.largest_tensor)
        parts = base | {"exampleGradient": scoped * scoped_bytes, "resident": resident + block * 24}
    label = f"lastBlocks:{ntk.last_blocks}" if scope == "lastBlocks" else scope
    phase = Phase(name="ntk", bytes=sum(parts.values()), parts=parts)
    return phase, {"ntk_scope": label, "ntk_method": method, "ntk_chunks": chunks, "ntk_resident_bytes": resident}


def _scope_size(model: _Model, scope: str, last_blocks: int) -> tuple[int, int]:
    """(parameters, bytes per gradient entry) of the NTK scope."""
    if scope == "lora":
        return model.trainable, 4
    if scope == "lastBlocks":
        shape = model.shape
        embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
        per_block = (model.parameters - embeddings) / shape.layers
        return int(per_block * min(last_blocks, shape.layers)), model.weight_bytes
    return model.parameters, model.weight_bytes


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def parse_bytes(text: str) -> int:
    """A Kubernetes-style quantity of bytes: 80Gi, 80G, 81920Mi, 85899345920."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kMGT]i?)?\s*", text)
    if not match:
        raise PlanError(f"{text!r} is not a size; use e.g. 80Gi, 80G or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def eval_batches(lengths: list[int], max_tokens: int, max_examples: int) -> list[list[int]]:
    """Indices of evaluation batches: longest first, each within `max_tokens` padded positions.

    A batch also ends where the next example is shorter than EVAL_MIN_FILL of the batch's
    width, so no example is more than 10% padding. Here (pure) so the plan sizes the
    evaluation phase by the batches the recipe will really run.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        current = out[-1] if out else None
        width = lengths[current[0]] if current else 0  # longest first: the first member sets the width
        if (
            current
            and len(current) < max_examples
            and (len(current) + 1) * width <= max_tokens
            and lengths[i] >= EVAL_MIN_FILL * width
        ):
            current.append(i)
        else:
            out.append([i])
    return out


def gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"
