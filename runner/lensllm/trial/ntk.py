"""Empirical NTK of a model on a probe set, reduced to the spectrum the LENSLLM law needs.

Called by the recipe once per trial, at the pre-trained weights. The scalar output f(x) is
the example's mean cross-entropy over its scored tokens, and the target y is 0 (a perfect
fit), so the initial residual r0 = f0(X) - y is the vector of per-example losses and
F(0) = ||r0||^2. Under NTK-linearised gradient flow on 1/2 ||f - y||^2 that residual
decays as exp(-eta Theta t) r0, which is the F(Theta, t) of the law.

Gradients come one example at a time through `torch.func.grad` on a functional call with
only the scoped weights as inputs: no vmap (it was no faster on CPU, and sdpa attention
masks break under it) and no requires_grad juggling on the model.
"""

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad_and_value

from lensllm.trial.examples import Example, collate
from lensllm.trial.failures import InvalidSpec
from lensllm.trial.modeling import token_losses

# The first numbered module in a parameter name is its block: model.layers.3., transformer.h.3., decoder.block.3.
_BLOCK = re.compile(r"^(.*?)\.(\d+)\.")
_CHUNK = 1 << 22  # Jacobian columns per float64 Gram update


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
    model, probe: list[Example], *, params: dict[str, torch.Tensor], seq2seq: bool, pad_id: int
) -> Kernel:
    """Gram matrix of per-example gradients of the mean example loss, and those losses."""
    device = next(iter(params.values())).device
    inputs = {n: p.detach() for n, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the kernel of the deterministic function

    def mean_loss(weights: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        nats, tokens = token_losses(model, batch, seq2seq=seq2seq, params=weights)
        return nats.sum() / tokens.sum().clamp(min=1)

    size = sum(p.numel() for p in inputs.values())
    jac = torch.empty((len(probe), size), dtype=torch.float32, device=device)  # the n x P memory the scope bounds
    residuals = []
    for i, example in enumerate(probe):
        batch = collate([example], pad_id=pad_id, seq2seq=seq2seq, device=device)
        grads, loss = grad_and_value(mean_loss)(inputs, batch)
        torch.cat([g.reshape(-1).float() for g in grads.values()], out=jac[i])
        residuals.append(loss.item())
    model.train(was_training)
    # Accumulate in float64 a column chunk at a time: exact enough for tiny eigenvalues, no n x P float64 copy.
    gram = sum(chunk.double() @ chunk.double().T for chunk in jac.split(_CHUNK, dim=1))
    return Kernel(gram=gram.cpu().numpy(), residuals=np.array(residuals), parameters=size)


def spectrum(kernel: Kernel) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest first) and squared projections c_k^2 = (v_k . r0)^2, which sum to ||r0||^2."""
    values, vectors = np.linalg.eigh((kernel.gram + kernel.gram.T) / 2)  # symmetrise away rounding
    order = np.argsort(values)[::-1]
    return values[order], (vectors[:, order].T @ kernel.residuals) ** 2
