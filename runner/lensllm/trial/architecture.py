"""What the memory plan knows of an architecture: its widths, its parameter count, its activations.

Read from a Hugging Face config dict (config.json), no weights and no torch. Used by
`memory.py`. The activation coefficients in `_LAYER_BYTES` are bytes autograd keeps per token
and transformer layer, counted with torch.autograd.graph.saved_tensors_hooks (unique
storages, weights excluded) on Hugging Face models (transformers 5.24, torch 2.13, sdpa
attention) while varying one width at a time; tests/runner/test_memory.py recounts them, so a
library upgrade that changes them fails a test instead of a plan. Attention that keeps its
score matrix (attention dropout, eager attention) adds 12 bytes per head per key position.
"""

import re
from dataclasses import dataclass
from typing import Literal

from lensllm.errors import LensLLMError
from lensllm.trial.spec import LoraSpec

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
