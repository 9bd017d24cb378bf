"""A language-modelling task with lognormal example lengths, and a tokenizer for it, made locally.

Used by `runner_throughput.py` and `compare_baseline.py` (no hub needed). Each example is a
`text` of whitespace-separated made-up words; the byte-level BPE tokenizer holds each word as
one token, so an example's length in tokens is its word count plus the start token (the runner's).
Byte-level BPE because transformers loads some architectures' tokenizers through their own class
whatever the folder's tokenizer_config says (Qwen2's rebuilds a byte-level BPE from the vocabulary
and merges): a word-level tokenizer read that way encodes every text to nothing. That class adds
no prefix space, so there the first word of a text costs a few tokens more. Lengths
follow a lognormal law (median `median` tokens, sigma 0.8) cut at `cap`: roughly what
instruction and summarisation data look like, and what makes padding expensive.
"""

import json
import string
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
SIGMA = 0.8
# Tokens that are not words: the 256 bytes, the specials and the merge of the space byte with "w".
NON_WORD_TOKENS = 256 + len(SPECIALS) + 1


def word_count(vocab_size: int, most: int = 16384) -> int:
    """How many words a tokenizer for a model of `vocab_size` token ids can hold."""
    return min(vocab_size - NON_WORD_TOKENS, most)


def words(vocab: int) -> list[str]:
    """`vocab` distinct made-up words: "w" and a number in base 26 written in letters (letters only, so a
    pre-tokenizer that splits digits from letters keeps each word whole; each word's prefixes are words too,
    so its byte-pair merges add no other token)."""
    return [f"w{_letters(i)}" for i in range(vocab)]


def _letters(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 26)
        digits = string.ascii_lowercase[digit] + digits
        if number == 0:
            return digits


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
    """A byte-level BPE tokenizer with each of the task's words as one token, saved into `folder`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=NON_WORD_TOKENS + vocab,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([" ".join(words(vocab))], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer
