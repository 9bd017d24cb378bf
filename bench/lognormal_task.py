"""A language-modelling task with lognormal example lengths, and a tokenizer for it, made locally.

Used by `runner_throughput.py` and `compare_baseline.py` (no hub needed). Each example is a
`text` of whitespace-separated made-up words; the WordLevel tokenizer maps each word to one
token, so an example's length in tokens is its word count plus the start token. Lengths
follow a lognormal law (median `median` tokens, sigma 0.8) cut at `cap`: roughly what
instruction and summarisation data look like, and what makes padding expensive.
"""

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
SIGMA = 0.8


def words(vocab: int) -> list[str]:
    """`vocab` distinct made-up words."""
    return [f"w{i:x}" for i in range(vocab)]


def lengths(n: int, *, median: int, cap: int, seed: int) -> np.ndarray:
    """Token counts (start token included) drawn from a lognormal law and cut to [8, cap]."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.lognormal(np.log(median), SIGMA, size=n)), 8, cap).astype(int)


def write_task(folder: Path, *, train: int, test: int, vocab: int, median: int, cap: int, seed: int = 0) -> Path:
    """train.jsonl and test.jsonl with a `text` column; Zipf-distributed words, lognormal lengths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    names = words(vocab)
    ranks = np.arange(1, vocab + 1)
    weights = 1 / ranks / np.sum(1 / ranks)
    for split, n, stream in (("train", train, seed), ("test", test, seed + 1)):
        counts = lengths(n, median=median, cap=cap, seed=stream) - 1  # the start token is the tokenizer's
        rows = [" ".join(names[i] for i in rng.choice(vocab, size=c, p=weights)) for c in counts]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    return folder


def write_tokenizer(folder: Path, vocab: int) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over the task's words, saved into `folder`."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator([" ".join(words(vocab))], trainers.WordLevelTrainer(special_tokens=SPECIALS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer
