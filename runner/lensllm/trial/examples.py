"""Tokenised examples with loss masks, and their padded batches.

Called by the recipe (training and evaluation) and the NTK. Conventions:
- Causal models see `start + prompt + target + eos` with labels -100 on the start and
  prompt, so only target tokens are scored; for plain text every token after the start
  token is scored. The start token (BOS, else EOS, as GPT-2 does) makes the first real
  token predictable, so all of the text counts towards the loss and bits per byte.
- Encoder-decoder models get the prompt on the encoder and `target + eos` as labels.
- Too long: the target keeps its head, the prompt is cut from the left (its end, next to
  the target, matters most). `n_bytes` counts only the scored text that survived.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from lensllm.trial.data import Row

IGNORE = -100  # label value that torch's cross-entropy skips


@dataclass(frozen=True)
class Example:
    """One tokenised example; `labels` align with `input_ids` for causal models, are decoder targets otherwise."""

    input_ids: list[int]
    labels: list[int]
    n_bytes: int
    n_tokens: int  # tokens the model processes (encoder + decoder for seq2seq), for throughput and FLOPs


def encode_rows(tokenizer, rows: Sequence[Row], *, max_length: int, seq2seq: bool) -> list[Example]:
    """Tokenise rows into examples of at most `max_length` tokens per sequence."""
    scored = tokenizer([r.scored for r in rows], add_special_tokens=False, return_offsets_mapping=True)
    if seq2seq:  # the tokenizer's own special tokens (T5 appends EOS) stay on the encoder input
        prompts = tokenizer([r.prompt for r in rows])["input_ids"]
    else:
        texts = [r.prompt or "" for r in rows]
        prompts = [_start_ids(tokenizer) + ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    examples = []
    for row, prompt, ids, offsets in zip(rows, prompts, scored["input_ids"], scored["offset_mapping"]):
        budget = max_length if seq2seq else max_length - 1  # a causal sequence keeps at least one prompt token
        target = (ids + ([tokenizer.eos_token_id] if row.prompt is not None else []))[:budget]
        kept = min(len(ids), len(target))
        n_bytes = len(row.scored.encode()) if kept == len(ids) else len(row.scored[: offsets[kept - 1][1]].encode())
        prompt = prompt[-max_length:] if seq2seq else prompt[-(max_length - len(target)) :]
        if seq2seq:
            examples.append(Example(prompt, target, n_bytes, len(prompt) + len(target)))
        else:
            examples.append(
                Example(prompt + target, [IGNORE] * len(prompt) + target, n_bytes, len(prompt) + len(target))
            )
    return examples


def _start_ids(tokenizer) -> list[int]:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [start]


def collate(
    examples: Sequence[Example], *, pad_id: int, seq2seq: bool, device: torch.device
) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask and labels (-100 on padding)."""
    width = max(len(e.input_ids) for e in examples)
    label_width = max(len(e.labels) for e in examples) if seq2seq else width
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), label_width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def batches(examples: Sequence[Example], size: int, order: Sequence[int] | None = None) -> Iterator[list[Example]]:
    """Consecutive batches of `size` examples, in `order` when given."""
    index = list(order) if order is not None else list(range(len(examples)))
    for start in range(0, len(index), size):
        yield [examples[i] for i in index[start : start + size]]
