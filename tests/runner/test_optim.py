import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from lensllm.trial.optim import adamw, fp32_masters, grads_to_masters_, linear_warmup_then_decay, masters_to_weights_

CPU = torch.device("cpu")
GRADIENT = torch.linspace(-1, 1, 64)


def train(weight: torch.Tensor, steps: int, *, masters: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """AdamW at lr 1e-5 on a fixed gradient; returns the weight and what the optimizer stepped."""
    params = [weight]
    stepped = fp32_masters(params) if masters else params
    optimizer = adamw(stepped, lr=1e-5, weight_decay=0.0, device=CPU)
    for _ in range(steps):
        weight.grad = GRADIENT.to(weight.dtype)
        if masters:
            grads_to_masters_(params, stepped)
        optimizer.step()
        if masters:
            masters_to_weights_(params, stepped)
        optimizer.zero_grad(set_to_none=True)
    return weight, stepped[0]


def test_small_updates_move_bfloat16_weights_as_they_move_float32_ones():
    start = torch.full((64,), 1.0)  # bfloat16 spacing at 1.0 is 2**-7; one AdamW step here is ~1e-5
    reference, _ = train(start.clone().requires_grad_(), 500, masters=False)
    plain, _ = train(start.to(torch.bfloat16).requires_grad_(), 500, masters=False)
    mixed, master = train(start.to(torch.bfloat16).requires_grad_(), 500, masters=True)
    moved = (reference - start).abs()
    assert moved.min() > 4e-3  # 500 steps of ~1e-5 each: past half the bfloat16 spacing
    assert torch.equal(plain.float(), start)  # pure bfloat16 AdamW loses every one of those steps
    torch.testing.assert_close(master, reference, rtol=0, atol=1e-7)  # the master moves exactly as float32
    assert torch.equal(mixed, reference.to(torch.bfloat16))  # the weight is the master, rounded


def test_float32_weights_are_their_own_masters():
    weight = torch.zeros(3, requires_grad=True)
    assert fp32_masters([weight])[0] is weight


@pytest.mark.parametrize("warmup, total", [(0, 1), (0, 7), (3, 10), (10, 10), (1, 64)])
def test_the_schedule_is_transformers_linear_warmup_then_decay_step_for_step(warmup, total):
    def rates(schedule) -> list[float]:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-4)
        scheduler = schedule(optimizer, warmup, total)
        seen = []
        for _ in range(total + 2):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    assert rates(linear_warmup_then_decay) == rates(get_linear_schedule_with_warmup)
