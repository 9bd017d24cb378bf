"""The LensBench zoo: small causal LMs of three families, pre-trained briefly on different text.

Each model is a (family, width, depth, tokenizer, pre-training corpus, steps) recipe, built
from a config (`lensllm.demo.tiny_config`), pre-trained with `lensllm.demo.pretrain` and
saved with its tokenizer like any Hugging Face checkpoint, so the runner loads it as it
would load a hub model. The recipes are chosen so that neither size nor the loss before
fine-tuning gives the ranking away: small models that saw text related to a task next to
large ones that saw unrelated text or none, and two tokenizer sizes.

Called by `lensllm_bench.generate`, one model per worker process.
"""

import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from lensllm.demo import SPECIAL_IDS, pretrain, tiny_config

BATCH_LINES = 16
MAX_POSITIONS = 64
PRETRAIN_LEARNING_RATE = 2e-3


@dataclass(frozen=True)
class ZooModel:
    """How one candidate of the zoo is made."""

    name: str
    family: str
    width: int
    depth: int
    vocab: int
    corpus: str  # a pre-training corpus name, or "none" for random initial weights
    steps: int

    @property
    def tokenizer(self) -> str:
        return f"bpe{self.vocab}"


def _m(family: str, size: str, vocab: int, corpus: str, steps: int) -> ZooModel:
    width, depth = {"xs": (32, 1), "s": (64, 2), "m": (96, 3), "l": (128, 4)}[size]
    return ZooModel(f"{family}-{size}-{corpus}-{vocab // 1024}k", family, width, depth, vocab, corpus, steps)


# 16 models, 3 families, 43K to 1.3M parameters (30x). Corpora: `dict`, `gloss`, `code` and
# `cipher` relate to one task each, `fortunes` to none, `mix` to all a little.
ZOO = (
    _m("gpt2", "xs", 1024, "mix", 1500),
    _m("gpt2", "s", 1024, "code", 800),
    _m("gpt2", "s", 4096, "cipher", 150),
    _m("gpt2", "m", 4096, "fortunes", 500),
    _m("gpt2", "l", 4096, "mix", 300),
    _m("gpt2", "l", 1024, "none", 0),
    _m("llama", "xs", 4096, "dict", 1500),
    _m("llama", "s", 1024, "mix", 1000),
    _m("llama", "m", 1024, "gloss", 400),
    _m("llama", "m", 4096, "none", 0),
    _m("llama", "l", 1024, "cipher", 200),
    _m("opt", "xs", 1024, "gloss", 1500),
    _m("opt", "s", 4096, "fortunes", 300),
    _m("opt", "m", 1024, "mix", 500),
    _m("opt", "l", 1024, "dict", 400),
    _m("opt", "l", 4096, "code", 500),
)

# The miniature for `--quick`: one tiny model per family, corpora that need no Debian package.
QUICK_ZOO = (
    _m("gpt2", "xs", 1024, "code", 60),
    _m("llama", "xs", 1024, "cipher", 60),
    _m("opt", "xs", 1024, "none", 0),
)


def model_seed(model: ZooModel, seed: int) -> int:
    """A seed of its own per model (crc32 of the name: stable across runs and Python versions)."""
    return (seed * 1_000_003 + zlib.crc32(model.name.encode())) % 2**31


def build_model(model: ZooModel, tokenizer_dir: Path, corpus: list[str], folder: Path, seed: int) -> int:
    """Build, pre-train and save one model with its tokenizer under `folder`; its parameter count."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    config = tiny_config(model.family, width=model.width, depth=model.depth, vocab_size=len(tokenizer),
                         max_positions=MAX_POSITIONS, **SPECIAL_IDS)
    own_seed = model_seed(model, seed)
    torch.manual_seed(own_seed)
    network = AutoModelForCausalLM.from_config(config)
    if model.steps:
        draw = lambda rng: [f"[BOS]{rng.choice(corpus)}[EOS]" for _ in range(BATCH_LINES)]  # noqa: E731
        pretrain(network, tokenizer, draw, steps=model.steps, seed=own_seed, learning_rate=PRETRAIN_LEARNING_RATE)
    folder.mkdir(parents=True, exist_ok=True)
    network.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in network.parameters())


def pretraining_corpora(related: dict[str, list[str]], fortunes: list[str] | None, seed: int) -> dict[str, list[str]]:
    """Corpus name -> text lines: each task's related text, fortunes, and `mix`, a sample of all."""
    corpora = {TASK_CORPUS[task]: lines for task, lines in related.items() if task in TASK_CORPUS}
    if fortunes is not None:
        corpora["fortunes"] = fortunes
    if corpora:  # folder tasks bring no related text: with --quick (no fortunes) there may be nothing to mix
        rng = random.Random(seed)
        per_corpus = min(len(lines) for lines in corpora.values())
        corpora["mix"] = [line for lines in corpora.values() for line in rng.sample(lines, per_corpus)]
    return corpora


TASK_CORPUS = {"de-en": "dict", "gloss": "gloss", "docstring": "code", "cipher": "cipher"}
