"""Empirical NTK of a model on a probe set, reduced to the spectrum the LENSLLM law needs.

Called by the recipe once per trial, at the pre-trained weights. The scalar output f(x) is
the example's mean cross-entropy over its scored tokens, and the target y is 0 (a perfect
fit), so the initial residual r0 = f0(X) - y is the vector of per-example losses and
F(0) = ||r0||^2. Under NTK-linearised gradient flow on 1/2 ||f - y||^2 that residual
decays as exp(-eta Theta t) r0, which is the F(Theta, t) of the law.

Gradients come one example at a time from `torch.autograd.grad` with respect to the scoped
weights only (autograd computes no other weight's gradient). torch.func was tried and
dropped: on a peft-wrapped model its first call kept a copy the size of the base weights
(+612 MiB on SmolLM2-135M), and vmap was no faster on the CPU. The n x P Jacobian is never
held whole: the exact method accumulates the Gram matrix over parameter chunks, the sketch
reduces each gradient to k numbers (the memory plan picks which, and the chunks).
"""

import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from lensllm.trial.examples import Example, collate
from lensllm.trial.failures import InvalidSpec
from lensllm.trial.memory import GRAM_BLOCK_BYTES, SKETCH_BLOCK
from lensllm.trial.losses import token_losses

# The first numbered module in a parameter name is its block: model.layers.3., transformer.h.3., decoder.block.3.
_BLOCK = re.compile(r"^(.*?)\.(\d+)\.")


@dataclass(frozen=True)
class Kernel:
    """The n x n Gram matrix, the initial residuals and how many parameters it spans."""

    gram: np.ndarray
    residuals: np.ndarray
    parameters: int


def scoped_parameters(model, scope: str, last_blocks: int) -> dict[str, torch.Tensor]:
    """The weights the kernel differentiates: all of them, the LoRA adapters, or the last blocks."""
    named = dict(model.named_parameters())
    if scope == "all":
        return named
    if scope == "lora":
        picked = {n: p for n, p in named.items() if "lora_" in n}
        if not picked:
            raise InvalidSpec("ntk.scope lora: the model has no LoRA adapters")
        return picked
    return _last_blocks(named, last_blocks)


def _last_blocks(named: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Parameters of the last k blocks of the last stack in the model (the decoder for seq2seq)."""
    located = {n: m for n in named if (m := _BLOCK.match(n))}
    if not located:
        raise InvalidSpec("ntk.scope lastBlocks: the model has no numbered blocks")
    stack = list(located.values())[-1].group(1)
    indices = [int(m.group(2)) for m in located.values() if m.group(1) == stack]
    first = max(indices) - k + 1  # all blocks when the model has fewer than k
    return {n: named[n] for n, m in located.items() if m.group(1) == stack and int(m.group(2)) >= first}


def measure_kernel(
    model,
    probe: list[Example],
    *,
    params: dict[str, torch.Tensor],
    seq2seq: bool,
    pad_id: int,
    chunks: int = 1,
    sketch_dim: int | None = None,
    seed: int = 0,
) -> Kernel:
    """Gram matrix of per-example gradients of the mean example loss, and those losses.

    Exact: the parameters are cut into `chunks` groups; each group's n x P_group Jacobian is
    the only one held, and the Gram matrix is the sum of the groups' Gram matrices (one pass
    over the probe per group). Sketch (`sketch_dim` k): each example's gradient is reduced to
    a k-vector by a seeded CountSketch as soon as it is computed, so n x k numbers are held.
    """
    device = next(iter(params.values())).device
    was_training = model.training
    model.eval()  # no dropout: the kernel of the deterministic function
    batches = [collate([example], pad_id=pad_id, seq2seq=seq2seq, device=device) for example in probe]

    def gradients(weights: list[torch.Tensor], batch: dict[str, torch.Tensor]):
        """The mean example loss and its gradient with respect to `weights` (zeros where unused)."""
        nats, tokens = token_losses(model, batch, seq2seq=seq2seq)
        loss = nats.sum() / tokens.sum().clamp(min=1)
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        return [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)], loss.detach()

    with torch.enable_grad(), _differentiable(list(params.values())):
        if sketch_dim is None:
            gram, residuals = _exact_gram(gradients, batches, params, chunks)
        else:
            gram, residuals = _sketched_gram(gradients, batches, params, sketch_dim, seed)
    model.train(was_training)
    size = sum(p.numel() for p in params.values())
    return Kernel(gram=gram.cpu().numpy(), residuals=residuals.double().cpu().numpy(), parameters=size)


@contextmanager
def _differentiable(weights: list[torch.Tensor]):
    """Let autograd differentiate the scoped weights, also frozen ones (lastBlocks under LoRA)."""
    frozen = [w for w in weights if not w.requires_grad]
    for w in frozen:
        w.requires_grad_(True)
    try:
        yield
    finally:
        for w in frozen:
            w.requires_grad_(False)


def _exact_gram(gradients, batches, params: dict[str, torch.Tensor], chunks: int):
    n = len(batches)
    device = next(iter(params.values())).device
    gram = torch.zeros((n, n), dtype=torch.float64, device=device)
    for group in parameter_chunks(params, chunks):
        weights = list(group.values())
        width = sum(p.numel() for p in weights)
        jac = torch.empty((n, width), dtype=torch.float32, device=device)  # the n x P memory chunks bound
        losses = []
        for i, batch in enumerate(batches):
            grads, loss = gradients(weights, batch)
            with torch.no_grad():
                torch.cat([g.reshape(-1).float() for g in grads], out=jac[i])
            losses.append(loss)
        # Accumulate in float64 a column block at a time: exact enough for tiny eigenvalues, no n x P float64 copy.
        for block in jac.split(max(1, GRAM_BLOCK_BYTES // (8 * n)), dim=1):
            wide = block.double()
            gram += wide @ wide.T
        del jac
    return gram, torch.stack(losses)


def parameter_chunks(params: dict[str, torch.Tensor], chunks: int) -> list[dict[str, torch.Tensor]]:
    """The parameters in `chunks` consecutive groups of about equal size (a tensor is never split)."""
    total = sum(p.numel() for p in params.values())
    groups: list[dict[str, torch.Tensor]] = [{}]
    filled = 0
    for name, p in params.items():
        if groups[-1] and filled >= total * len(groups) / chunks:
            groups.append({})
        groups[-1][name] = p
        filled += p.numel()
    return groups


def _sketched_gram(gradients, batches, params: dict[str, torch.Tensor], k: int, seed: int):
    device = next(iter(params.values())).device
    hashes = _tensor_hashes(list(params), seed)
    sketches = torch.zeros((len(batches), k), dtype=torch.float32, device=device)
    losses = []
    for i, batch in enumerate(batches):
        grads, loss = gradients(list(params.values()), batch)
        with torch.no_grad():
            for name, g in zip(params, grads):
                count_sketch_(sketches[i], g.reshape(-1), hashes[name])
        del grads
        losses.append(loss)
    sketches = sketches.double()
    return sketches @ sketches.T, torch.stack(losses)


_PRIME = 2**31 - 1  # hash modulus: a * x stays below 2**62 for x < 2**31, so int64 never overflows


def _tensor_hashes(names: list[str], seed: int) -> dict[str, tuple[int, int, int, int]]:
    """Independent seeded (a, b) pairs for each tensor's bucket and sign hashes."""
    rng = np.random.default_rng([seed, 7])
    draws = rng.integers(1, _PRIME, size=(len(names), 4))
    return {name: tuple(int(v) for v in row) for name, row in zip(names, draws)}


def count_sketch_(out: torch.Tensor, values: torch.Tensor, hashes: tuple[int, int, int, int]) -> None:
    """Add the CountSketch of `values` into `out`: entry x goes to bucket h1(x) with sign s(x).

    h(x) = (a x + b) mod (2^31 - 1) is 2-universal, drawn per tensor, so distinct entries
    collide with probability ~1/k and their signs are independent. For two vectors u, v the
    estimate <Su, Sv> is unbiased with variance at most (|u|^2 |v|^2 + <u, v>^2) / k
    (Charikar, Chen and Farach-Colton 2002; Weinberger et al. 2009): a diagonal entry of the
    Gram matrix is off by a relative sqrt(2/k) standard deviation, 0.55% at k = 65536.
    """
    if values.numel() >= _PRIME:
        raise InvalidSpec(f"ntk.method sketch: a weight tensor of {values.numel()} entries is too large to hash")
    a1, b1, a2, b2 = hashes
    k = out.numel()
    for start in range(0, values.numel(), SKETCH_BLOCK):
        part = values[start : start + SKETCH_BLOCK].float()
        index = torch.arange(start, start + part.numel(), device=values.device, dtype=torch.int64)
        bucket = (index * a1 + b1) % _PRIME % k
        sign = 1.0 - 2.0 * ((index * a2 + b2) % _PRIME % 2).to(torch.float32)
        out.index_add_(0, bucket, part * sign)


def spectrum(kernel: Kernel) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest first) and squared projections c_k^2 = (v_k . r0)^2, which sum to ||r0||^2."""
    values, vectors = np.linalg.eigh((kernel.gram + kernel.gram.T) / 2)  # symmetrise away rounding
    order = np.argsort(values)[::-1]
    return values[order], (vectors[:, order].T @ kernel.residuals) ** 2
