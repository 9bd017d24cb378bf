"""AdamW over float32 master weights: what fine-tuning updates when the model computes in bfloat16,
and its learning-rate schedule.

Called by the recipe and the throughput benchmark. Fused AdamW on CUDA (one kernel for all
weights); the default (foreach) elsewhere.
"""

import torch


def adamw(masters: list[torch.Tensor], *, lr: float, weight_decay: float, device: torch.device):
    return torch.optim.AdamW(masters, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")


def linear_warmup_then_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """The learning rate rises linearly from 0 over `warmup_steps`, then falls linearly to 0 at `total_steps`.

    The schedule of transformers' get_linear_schedule_with_warmup, step for step; importing that module
    imports peft too, about 3 s of every trial's start-up when no LoRA is asked for.
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fp32_masters(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """What the optimizer updates: float32 copies of low-precision weights, float32 weights themselves.

    In bfloat16 an update below ~1/256 of a weight rounds away; AdamW's steps near a 1e-5
    learning rate are mostly that small. The master copy accumulates them exactly and the
    bfloat16 weight follows it at each step.
    """
    return [p if p.dtype == torch.float32 else p.detach().float().requires_grad_() for p in params]


def grads_to_masters_(params: list[torch.Tensor], masters: list[torch.Tensor]) -> None:
    """Move each low-precision gradient onto its master as float32, freeing the original."""
    for p, m in zip(params, masters):
        if m is not p:
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None


@torch.no_grad()
def masters_to_weights_(params: list[torch.Tensor], masters: list[torch.Tensor]) -> None:
    """Round the updated masters into the model's low-precision weights (one foreach kernel per dtype)."""
    pairs = [(p, m) for p, m in zip(params, masters) if m is not p]
    if pairs:
        torch._foreach_copy_([p for p, _ in pairs], [m for _, m in pairs])
