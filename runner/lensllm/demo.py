"""A self-contained demo world: a generated word-mapping task and three tiny causal LMs.

Used by `examples/prepare_local.py` (the Quickstart's local selection) and by tests that
need real models without a model hub. The task maps each word of a made-up source
language to its own target word, so loss falls as more pairs are seen; the candidates
differ in how much they were pre-trained on the dictionary, which makes their ranking
after fine-tuning predictable (more pre-training, lower loss).
"""

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig, PreTrainedTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
_SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "zu", "ba", "do", "fe", "gi", "hu"]


@dataclass(frozen=True)
class Candidate:
    name: str
    config: object
    pretrain_steps: int


def vocabulary(n_words: int, seed: int) -> dict[str, str]:
    """A seeded dictionary from made-up source words to made-up target words."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < 2 * n_words:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return dict(zip(ordered[:n_words], ordered[n_words:]))


def task_rows(dictionary: dict[str, str], n: int, rng: random.Random) -> list[dict[str, str]]:
    """`n` examples: `input` is a few source words, `target` their word-by-word translation."""
    source = sorted(dictionary)
    rows = []
    for _ in range(n):
        words = [rng.choice(source) for _ in range(rng.randint(1, 3))]
        rows.append({"input": "translate: " + " ".join(words), "target": " ".join(dictionary[w] for w in words)})
    return rows


def write_task(folder: Path, dictionary: dict[str, str], n_train: int, n_test: int, seed: int) -> None:
    """train.jsonl and test.jsonl of the task, no test row a training row: one-word rows repeat often, and the
    runner scores held-out rows only."""
    rng = random.Random(seed + 1)
    splits = {"train": task_rows(dictionary, n_train, rng)}
    trained = {row["input"] for row in splits["train"]}  # the input determines the target
    drawn = task_rows(dictionary, 100 * n_test, rng)  # a bound: a dictionary too small to hold any out fails
    splits["test"] = list(islice((row for row in drawn if row["input"] not in trained), n_test))
    if len(splits["test"]) < n_test:
        raise ValueError(f"{len(dictionary)} words leave too few phrases out of {n_train} training rows for {n_test} "
                         "test rows")
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(folder / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def build_tokenizer(dictionary: dict[str, str]) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + ["translate:", "="] + sorted(set(dictionary) | set(dictionary.values())))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def tiny_config(family: str, *, width: int, depth: int, vocab_size: int, max_positions: int = 64, **ids: int):
    """A small causal LM config of the GPT-2, OPT or Llama family: `width` hidden units, `depth` blocks.

    Heads are 32 units wide and the MLP is twice the width; `ids` are the special token ids.
    """
    heads = max(1, width // 32)
    common = {"vocab_size": vocab_size, **ids}
    if family == "gpt2":
        return GPT2Config(n_embd=width, n_layer=depth, n_head=heads, n_positions=max_positions, **common)
    if family == "opt":
        return OPTConfig(hidden_size=width, num_hidden_layers=depth, ffn_dim=2 * width, num_attention_heads=heads,
                         word_embed_proj_dim=width, max_position_embeddings=max_positions, **common)
    if family == "llama":
        return LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth,
                           num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=max_positions, **common)
    raise ValueError(f"unknown model family {family!r}; choose gpt2, opt or llama")


SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}  # the positions of SPECIALS


def candidates(vocab_size: int) -> list[Candidate]:
    """Three small architectures; the more pre-training, the better the expected rank."""
    return [
        Candidate("tiny-gpt2", tiny_config("gpt2", width=64, depth=2, vocab_size=vocab_size, **SPECIAL_IDS), 0),
        Candidate("tiny-opt", tiny_config("opt", width=64, depth=2, vocab_size=vocab_size, **SPECIAL_IDS), 300),
        Candidate("tiny-llama", tiny_config("llama", width=64, depth=2, vocab_size=vocab_size, **SPECIAL_IDS), 800),
    ]


def pretrain(model, tokenizer: PreTrainedTokenizerFast, draw: Callable[[random.Random], list[str]], *,
             steps: int, seed: int, learning_rate: float = 3e-3) -> None:
    """`steps` AdamW steps of language modelling on the batches of text lines `draw(rng)` returns.

    Lines longer than the model's positions are cut. This is the stand-in for pre-training that
    makes tiny models behave like real ones: briefly pre-trained beats random init.
    """
    if steps == 0:
        return
    torch.manual_seed(seed)
    rng = random.Random(seed + 2)  # not the task's draws: pre-training sees other sentences
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    max_length = model.config.max_position_embeddings
    model.train()
    for _ in range(steps):
        batch = tokenizer(draw(rng), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def dictionary_lines(dictionary: dict[str, str]) -> Callable[[random.Random], list[str]]:
    """Batches of 32 sentences of the task in its own format: relevant pre-training."""
    return lambda rng: [f"[BOS] {row['input']} = {row['target']} [EOS]" for row in task_rows(dictionary, 32, rng)]


def prepare(folder: Path, *, n_words: int = 300, n_train: int = 4096, n_test: int = 256, seed: int = 0) -> list[str]:
    """Write the task under folder/data and one saved model per candidate under folder/models."""
    dictionary = vocabulary(n_words, seed)
    write_task(folder / "data", dictionary, n_train, n_test, seed)
    tokenizer = build_tokenizer(dictionary)
    names = []
    for candidate in candidates(len(tokenizer)):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(candidate.config)
        pretrain(model, tokenizer, dictionary_lines(dictionary), steps=candidate.pretrain_steps, seed=seed)
        target = folder / "models" / candidate.name
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        names.append(candidate.name)
    return names
