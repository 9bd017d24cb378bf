"""Tokenised examples with loss masks, their padded batches, and the orders that keep padding low.

Called by the recipe (training and evaluation) and the NTK. Conventions:
- Causal models see `start + prompt + target + eos` with labels -100 on the start and
  prompt, so only target tokens are scored; for plain text every token after the start
  token is scored. The start token (BOS, else EOS, as GPT-2 does) makes the first real
  token predictable, so all of the text counts towards the loss and bits per byte.
- Encoder-decoder models get the prompt on the encoder and `target + eos` as labels.
- Too long: the target keeps its head, the prompt is cut from the left (its end, next to
  the target, matters most). `n_bytes` counts only the scored text that survived.

A causal batch also carries, built here on the host, where its scored tokens are: the flat
index of each position that predicts a scored token and that token. The loss then runs the
LM head on those positions only, and nothing on the device has to be counted back to the
host (a boolean mask would force a sync to learn its size).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lensllm.trial.data import Row
from lensllm.trial.memory import eval_batches

IGNORE = -100  # label value that torch's cross-entropy skips
LENGTH_WINDOW = 64  # batches whose examples are sorted by length together (see length_grouped)


@dataclass(frozen=True)
class Example:
    """One tokenised example; `labels` align with `input_ids` for causal models, are decoder targets otherwise."""

    input_ids: list[int]
    labels: list[int]
    n_bytes: int
    n_tokens: int  # tokens the model processes (encoder + decoder for seq2seq), for throughput and FLOPs

    @property
    def n_scored(self) -> int:
        """Tokens the loss scores (a causal model's first label is never predicted)."""
        return sum(label != IGNORE for label in self.labels)


@dataclass(frozen=True)
class Batch:
    """Tensors of a batch on the device, and its sizes counted on the host (no device sync needed)."""

    tensors: dict[str, torch.Tensor]
    examples: int
    tokens: int  # real tokens (no padding)
    positions: int  # token positions the model computes, padding included
    scored: int  # tokens the loss scores

    @property
    def padding(self) -> int:
        return self.positions - self.tokens


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
    """Right-padded tensors: input_ids, attention_mask and labels (-100 on padding).

    Causal batches add `score_index` (flat position in the batch x width grid of each
    position whose next token is scored), `score_target` (that token) and `score_example`
    (its row). Host tensors are pinned for a GPU, so the copies overlap with compute.
    """
    width = max(len(e.input_ids) for e in examples)
    label_width = max(len(e.labels) for e in examples) if seq2seq else width
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), label_width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    host = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if not seq2seq:
        host.update(_score_positions(examples, width))
    return {name: _to_device(tensor, device) for name, tensor in host.items()}


def _score_positions(examples: Sequence[Example], width: int) -> dict[str, torch.Tensor]:
    index, target, row = [], [], []
    for i, e in enumerate(examples):
        for t in range(len(e.labels) - 1):  # position t predicts token t + 1
            if e.labels[t + 1] != IGNORE:
                index.append(i * width + t)
                target.append(e.labels[t + 1])
                row.append(i)
    return {
        "score_index": torch.tensor(index, dtype=torch.long),
        "score_target": torch.tensor(target, dtype=torch.long),
        "score_example": torch.tensor(row, dtype=torch.long),
    }


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def make_batch(examples: Sequence[Example], *, pad_id: int, seq2seq: bool, device: torch.device) -> Batch:
    """A collated batch with its token counts."""
    tensors = collate(examples, pad_id=pad_id, seq2seq=seq2seq, device=device)
    positions = tensors["input_ids"].numel() + (tensors["labels"].numel() if seq2seq else 0)
    return Batch(
        tensors=tensors,
        examples=len(examples),
        tokens=sum(e.n_tokens for e in examples),
        positions=positions,
        scored=sum(e.n_scored for e in examples),
    )


def length_grouped(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, window: int = LENGTH_WINDOW
) -> list[list[int]]:
    """Seeded batches of indices whose members have similar lengths, in a random batch order.

    A random permutation is cut into windows of `window` batches; each window is sorted by
    length (longest first) and cut into batches; then the batches are shuffled. Each batch is
    thus a random draw from its window, padded only to its own longest member; on lognormal
    lengths a window of 64 batches leaves 1-3% padding where random batches leave ~50%.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = batch_size * window
    grouped = []
    for start in range(0, len(order), span):
        group = sorted(order[start : start + span], key=lambda i: -lengths[i])
        grouped += [group[j : j + batch_size] for j in range(0, len(group), batch_size)]
    return [grouped[i] for i in torch.randperm(len(grouped), generator=generator).tolist()]


def token_budget_batches(examples: Sequence[Example], max_tokens: int, max_examples: int) -> list[list[Example]]:
    """Evaluation batches: longest first, within `max_tokens` padded positions (see memory.eval_batches)."""
    groups = eval_batches([len(e.input_ids) for e in examples], max_tokens, max_examples)
    return [[examples[i] for i in group] for group in groups]
