"""A self-contained demo world: a generated word-mapping task and three tiny causal LMs.

Used by `examples/prepare_local.py` (the Quickstart's local selection) and by tests that
need real models without a model hub. The task maps each word of a made-up source
language to its own target word, so loss falls as more pairs are seen; the candidates
differ in how much they were pre-trained on the dictionary, which makes their ranking
after fine-tuning predictable (more pre-training, lower loss).
"""

import json
import random
from dataclasses import dataclass
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
    """train.jsonl and test.jsonl of the task."""
    rng = random.Random(seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(folder / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in task_rows(dictionary, n, rng))


def build_tokenizer(dictionary: dict[str, str]) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + ["translate:", "="] + sorted(set(dictionary) | set(dictionary.values())))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def candidates(vocab_size: int) -> list[Candidate]:
    """Three small architectures; the more pre-training, the better the expected rank."""
    common = {"vocab_size": vocab_size, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}
    return [
        Candidate("tiny-gpt2", GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=64, **common), 0),
        Candidate(
            "tiny-opt",
            OPTConfig(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=2,
                      word_embed_proj_dim=64, max_position_embeddings=64, **common),
            300,
        ),
        Candidate(
            "tiny-llama",
            LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2, max_position_embeddings=64, **common),
            800,
        ),
    ]


def pretrain(model, tokenizer: PreTrainedTokenizerFast, dictionary: dict[str, str], steps: int, seed: int) -> None:
    """Teach the model the dictionary in the task's own format, a stand-in for relevant pre-training."""
    if steps == 0:
        return
    torch.manual_seed(seed)
    rng = random.Random(seed + 2)  # not the task's draws: pre-training sees other sentences
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        lines = [f"[BOS] {row['input']} = {row['target']} [EOS]" for row in task_rows(dictionary, 32, rng)]
        batch = tokenizer(lines, return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def prepare(folder: Path, *, n_words: int = 300, n_train: int = 4096, n_test: int = 256, seed: int = 0) -> list[str]:
    """Write the task under folder/data and one saved model per candidate under folder/models."""
    dictionary = vocabulary(n_words, seed)
    write_task(folder / "data", dictionary, n_train, n_test, seed)
    tokenizer = build_tokenizer(dictionary)
    names = []
    for candidate in candidates(len(tokenizer)):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(candidate.config)
        pretrain(model, tokenizer, dictionary, candidate.pretrain_steps, seed)
        target = folder / "models" / candidate.name
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        names.append(candidate.name)
    return names
