"""Cross-entropy of a batch, computed where it is needed and no more.

Called by the recipe (training and evaluation), the NTK and the throughput benchmark. For
causal LMs whose logits are plain `lm_head(hidden)` the LM head runs only on the scored
positions (collate lists them), a chunk at a time, so logits never exist for the whole
batch; encoder-decoders and heads that post-process logits keep the model's own forward.
"""

import torch
import torch.nn.functional as F

from lensllm.trial.examples import IGNORE
from lensllm.trial.memory import HEAD_CHUNK_BYTES
from lensllm.trial.modeling import body_and_head

# Config fields of architectures whose logits are more than lm_head(hidden): soft-capped or
# scaled. Those keep the model's own forward (full logits) instead of the chunked head.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")


def chunked_head(model) -> bool:
    """Whether the loss may run the LM head itself, on scored positions only, chunk by chunk."""
    config = model.config
    if config.is_encoder_decoder:
        return False
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_POSTPROCESSING):
        return False
    return isinstance(body_and_head(model)[1], torch.nn.Linear)


def head_chunk_tokens(vocab_size: int) -> int:
    """Scored positions per LM-head chunk: float32 logits of a chunk stay under HEAD_CHUNK_BYTES."""
    return max(1, HEAD_CHUNK_BYTES // (4 * vocab_size))


def token_losses(model, batch: dict[str, torch.Tensor], *, seq2seq: bool):
    """Summed cross-entropy (nats) and scored-token count per example."""
    if chunked_head(model):
        hidden, head_weight, head_bias = _scored_hidden(model, batch)
        nats = torch.cat(
            [
                _chunk_nats(h, head_weight, head_bias, t, reduction="none")
                for h, t in _chunks(hidden, batch["score_target"], model.config.vocab_size)
            ]
        )
        rows, where = batch["input_ids"].shape[0], batch["score_example"]
        per_example = torch.zeros(rows, dtype=torch.float32, device=nats.device).index_add(0, where, nats)
        # index_add, not bincount: bincount syncs with the host to size its output.
        counts = torch.zeros(rows, dtype=torch.long, device=where.device).index_add(0, where, torch.ones_like(where))
        return per_example, counts
    return _full_logit_losses(model, batch, seq2seq=seq2seq)


def backward_losses(model, batch: dict[str, torch.Tensor], *, seq2seq: bool, scale: float) -> torch.Tensor:
    """Summed nats of a batch (detached); accumulates the gradients of scale x nats.

    With the chunked head, backward runs in two stages so that logits exist for one chunk of
    scored positions at a time: each chunk's loss is back-propagated to the LM head and to a
    detached copy of the hidden states as soon as it is computed, then the hidden states'
    gradient goes through the body in one backward call.
    """
    if not chunked_head(model):
        nats = _full_logit_losses(model, batch, seq2seq=seq2seq)[0].sum()
        (nats * scale).backward()
        return nats.detach()
    hidden, head_weight, head_bias = _scored_hidden(model, batch)
    cut = hidden.detach().requires_grad_(hidden.requires_grad)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for h, targets in _chunks(cut, batch["score_target"], model.config.vocab_size):
        nats = _chunk_nats(h, head_weight, head_bias, targets, reduction="sum")
        (nats * scale).backward()
        total += nats.detach()
    if cut.grad is not None:  # no grad when nothing below the head trains (and nothing to do then)
        hidden.backward(cut.grad)
    return total


def _scored_hidden(model, batch: dict[str, torch.Tensor]):
    """Last hidden states at the scored positions, and the LM head's weight and bias to apply."""
    body, head = body_and_head(model)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return hidden.flatten(0, 1).index_select(0, batch["score_index"]), head.weight, head.bias


def _chunks(hidden: torch.Tensor, targets: torch.Tensor, vocab_size: int):
    size = head_chunk_tokens(vocab_size)
    return zip(hidden.split(size), targets.split(size))


def _chunk_nats(hidden, weight, bias, targets, *, reduction: str) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, reduction=reduction)


def _full_logit_losses(model, batch: dict[str, torch.Tensor], *, seq2seq: bool):
    """The model's own forward with logits for every position (encoder-decoders, post-processed heads)."""
    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if seq2seq:
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(**inputs).logits
    if seq2seq:
        targets = labels
    else:  # position t predicts token t + 1
        logits, targets = logits[:, :-1], labels[:, 1:]
    nats = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    return nats.sum(dim=1), (targets != IGNORE).sum(dim=1)
