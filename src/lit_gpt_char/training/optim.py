"""The optimizer and its learning-rate schedule: what `optim.*` configures.

AdamW with weight decay on the matrices only (not biases, norms' gains), one fused kernel where
torch allows, and a per-step schedule: linear warmup, then cosine decay to min_lr.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from lit_gpt_char.errors import UserError
from lit_gpt_char.options import Options, option


@dataclass
class OptimConfig(Options):
    """optim.*: the defaults are the CPU recipe's (sweeps preferred beta2 0.95 and a low floor)."""

    KEY = "optim"
    lr: float = option(2e-3, "peak learning rate, reached after warmup", gt=0, le=10)
    min_lr: float = option(1e-5, "learning rate at the end of the decay (and after it)", ge=0, le=10)
    weight_decay: float = option(0.1, "AdamW weight decay on the weight matrices (not biases or gains)", ge=0, le=10)
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW's beta1, beta2", length=2, ge=0, lt=1)
    eps: float = option(1e-8, "AdamW's epsilon", gt=0, le=1)
    warmup_steps: int = option(200, "steps of linear warmup from lr/(warmup_steps+1) to lr", ge=0)
    decay_steps: int | None = option(
        None, "step at which the cosine decay reaches min_lr; null: the run's last step (trainer.max_steps)", ge=1
    )

    def check(self) -> None:
        if self.min_lr > self.lr:
            raise UserError(f"optim.min_lr={self.min_lr:g}: must be <= optim.lr={self.lr:g}")


def warmup_cosine(step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, cosine to min_lr, then flat.

    Warmup starts at lr/(warmup_steps+1), never at 0, so the first step already learns.
    """
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def build_optimizer(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    matrices: set[str],
    cfg: OptimConfig,
    total_steps: int,
    fused: bool,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the parameters (decay on those named in `matrices`) and its per-step schedule."""
    named = [(n, p) for n, p in named_params if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in matrices], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if n not in matrices], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
    decay_steps = cfg.decay_steps or total_steps

    def factor(step: int) -> float:
        return warmup_cosine(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, decay_steps) / cfg.lr

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
