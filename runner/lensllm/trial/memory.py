"""The memory plan of a trial: what each phase holds on the device, and the settings that make it fit.

Pure arithmetic on the model's config (config.json, no weights), the trial spec and the
device's memory: no torch, so the runner can refuse a trial before it loads a single weight,
and `lensllm plan` (and the operator) can show the plan of every candidate of a selection.
The recipe then runs what the plan chose: micro-batch, gradient checkpointing, evaluation
batch, NTK scope and method.

Where the bytes come from:
- Weights, gradients, AdamW's two float32 moments and, for low-precision weights that
  train, a float32 master copy per trainable weight (see optim.fp32_masters).
- Activations autograd keeps for backward, per token and transformer layer
  (`architecture.layer_bytes`, counted from autograd's saved tensors).
- Logits exist for one chunk of scored positions at a time (HEAD_CHUNK_BYTES, losses.py),
  except for encoder-decoders, which keep the model's own full-logit forward.
- The NTK holds one example's activations and gradient, plus its resident buffer: the
  probe's per-example gradients of one parameter chunk (exact) or their sketches.

On a GPU the plan also counts what the trial holds in host memory beyond the process itself
(`host_bytes`): the copy of the starting trainable weights every subset size restarts from,
and one shard of a model it saves. A trial refuses to start when that alone exceeds the memory
it may use (a pod's limit), rather than be killed for memory once the model is loaded.
"""

import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from lensllm.trial.architecture import PlanError, Shape, estimated_parameters, layer_bytes, lora_parameters, shape_of
from lensllm.trial.spec import LoraSpec, TrialSpec, WireModel

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
HEAD_CHUNK_BYTES = 64 * 2**20  # float32 logits of one LM-head chunk (losses.py chunks by it)
SKETCH_BLOCK = 1 << 24  # gradient entries hashed at once by the sketch (ntk.py uses the same block)
GRAM_BLOCK_BYTES = 64 * 2**20  # float64 copy of the Jacobian columns one Gram update multiplies (ntk.py)
EVAL_MAX_EXAMPLES = 64  # larger evaluation batches gain nothing once a batch fills the device
EVAL_MIN_FILL = 0.9  # an evaluation batch ends before an example shorter than this share of its width
GPU_RESERVED = GIB // 2  # CUDA context, cuBLAS workspaces
GPU_USABLE = 0.92  # the rest of the margin: allocator fragmentation
# A saved model is written in shards of at most this much (a larger tensor is a shard of its own): safetensors
# copies a shard's tensors from the GPU to host memory before it writes them (recipe.save_model).
SAVE_SHARD_BYTES = GIB


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
    host_bytes: int = Field(
        default=0,
        description="Host memory a GPU trial holds beyond the process itself: the copy of the starting trainable "
        "weights, and one shard of the model it saves (0 on the CPU, where the phases count them).",
    )

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
        host = f"; host {gib(self.host_bytes)} beyond the process" if self.host_bytes else ""
        return (
            f"micro-batch {self.micro_batch_size} x {self.gradient_accumulation}, checkpointing "
            f"{'on' if self.gradient_checkpointing else 'off'}{ntk}; peak {phases} of {gib(self.capacity_bytes)}{host}"
        )

    def host_refusal(self, available: int) -> str | None:
        """One line for WillNotFit when what the trial holds on the host alone exceeds `available`, else None."""
        if self.host_bytes <= available:
            return None
        return (
            f"the copy of the starting weights (and a shard of the model it saves) needs {gib(self.host_bytes)} of "
            f"host memory beyond the process; it may use {gib(available)}: raise resources.memory, or use "
            "training.method lora"
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
    host = _host_bytes(model, saves=bool(spec.output.model_dir) and spec.target_size in spec.subset_sizes)
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
        host_bytes=0 if model.on_host else host,
        **ntk_fields,
    )


def _host_bytes(model: _Model, *, saves: bool) -> int:
    """The starting trainable weights' copy (modeling.snapshot) and, when the trial saves a model, its largest shard:
    a LoRA adapter whole, else SAVE_SHARD_BYTES or the largest tensor, at most the whole model."""
    snapshot = model.trainable * model.trainable_bytes
    if not saves:
        return snapshot
    if model.method == "lora":
        return 2 * snapshot
    whole = model.parameters * model.weight_bytes
    return snapshot + min(whole, max(SAVE_SHARD_BYTES, model.largest_tensor * model.weight_bytes))


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
    size = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if size < 1:  # a plan for no memory has a negative capacity once the reserve is taken off
        raise PlanError(f"{text!r} is not a positive size; use e.g. 80Gi, 80G or a number of bytes")
    return size


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
