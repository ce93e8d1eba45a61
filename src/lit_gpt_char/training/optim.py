"""The optimizer and its learning-rate schedule: what `optim.*` configures.

- algorithm=adamw: AdamW on every parameter, weight decay on the matrices only (not biases, norms'
  gains), one fused kernel where torch allows.
- algorithm=muon: torch.optim.Muon (orthogonalised momentum) on the blocks' 2-D weight matrices,
  AdamW as above on the rest (embeddings, head, gains, biases), stepped together as one optimizer.
- schedule: a linear warmup, then either a cosine decay to min_lr (cosine) or a constant rate and
  a linear warm-down to min_lr over the run's last warmdown_fraction (wsd), one value per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from lit_gpt_char.errors import UserError
from lit_gpt_char.options import Options, option


@dataclass
class OptimConfig(Options):
    """optim.*: the defaults are the CPU recipe's (sweeps preferred beta2 0.95 and a low floor)."""

    KEY = "optim"
    algorithm: str = option(
        "muon", "adamw | muon (Muon on the blocks' matrices, AdamW on the rest)", choices=("adamw", "muon")
    )
    lr: float = option(2e-3, "peak learning rate of AdamW, reached after warmup", gt=0, le=10)
    min_lr: float = option(
        1e-5, "AdamW's learning rate at the end of the decay (the schedule scales Muon's alike)", ge=0, le=10
    )
    weight_decay: float = option(0.1, "AdamW weight decay on the weight matrices (not biases or gains)", ge=0, le=10)
    betas: list[float] = option([0.9, 0.95], "AdamW's beta1, beta2", length=2, ge=0, lt=1)
    eps: float = option(1e-8, "AdamW's epsilon", gt=0, le=1)
    muon_lr: float = option(0.02, "muon: peak learning rate of Muon", gt=0, le=10)
    muon_momentum: float = option(0.95, "muon: momentum", ge=0, lt=1)
    muon_weight_decay: float = option(0.05, "muon: decoupled weight decay of the blocks' matrices", ge=0, le=10)
    schedule: str = option(
        "wsd",
        "cosine (decay from the peak to min_lr over the run) | wsd (warmup, stable, then a linear warm-down to min_lr)",
        choices=("cosine", "wsd"),
    )
    warmup_steps: int = option(100, "steps of linear warmup from lr/(warmup_steps+1) to lr", ge=0)
    warmdown_fraction: float = option(0.2, "wsd: the fraction of the run spent warming down", gt=0, le=1)
    decay_steps: int | None = option(
        None, "step at which the decay reaches min_lr; null: the run's last step (trainer.max_steps)", ge=1
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


def warmup_stable_decay(
    step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int, warmdown_fraction: float
) -> float:
    """Learning rate at step `step`: the same warmup, then lr until the last warmdown_fraction of
    decay_steps, then a straight line down to min_lr at decay_steps, then flat."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr
    start = max(warmup_steps, decay_steps - round(warmdown_fraction * decay_steps))
    if step < start:
        return lr
    return lr + (min_lr - lr) * (step - start) / max(1, decay_steps - start)


def schedule(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The factor each step's learning rates are multiplied by (1 at the peak)."""
    decay = cfg.decay_steps or total_steps
    if cfg.schedule == "wsd":
        return lambda step: (
            warmup_stable_decay(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, decay, cfg.warmdown_fraction) / cfg.lr
        )
    return lambda step: warmup_cosine(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, decay) / cfg.lr


class Optimizers(torch.optim.Optimizer):
    """Several optimizers stepped as one: Lightning's automatic optimization takes a single one.

    Its param_groups are the optimizers' own group dicts, so a learning-rate scheduler over it sets
    theirs; its state_dict holds each one's, so a checkpoint resumes each exactly. No arithmetic of
    its own: each optimizer steps as torch wrote it."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        super().__init__([p for o in optimizers for g in o.param_groups for p in g["params"]], {})
        self.param_groups = [g for o in optimizers for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for o, s in zip(self.optimizers, state_dict["optimizers"], strict=True):
            o.load_state_dict(s)
        # Loading gives each optimizer new group dicts: share those, or the schedule would set stale ones.
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]


def native_bf16_matmuls(device: torch.device) -> bool:
    """Whether bf16 matrix products run in hardware here: Ampere+ GPUs, CPUs with AVX512-BF16 or AMX.
    Elsewhere (most laptops' AVX2 CPUs, MPS) they are emulated, ~10-50x slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(
            getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        )
    return False


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation of g, in g's own dtype."""
    a, b, c = coefficients
    x = g.T if g.size(0) > g.size(1) else g
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if g.size(0) > g.size(1) else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon, whose Newton-Schulz iteration always runs in bf16. Where bf16 matmuls are
    emulated (an AVX2 CPU) that iteration took ~90% of a default-recipe step (2.8 s instead of
    0.2 s). There (float32_ns) this step runs it in float32: torch's update, state and
    hyperparameters, more exactly computed; elsewhere torch's own step runs."""

    def __init__(self, params: Iterable[torch.nn.Parameter], float32_ns: bool = False, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.float32_ns = float32_ns

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if not self.float32_ns:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update.float(), group["ns_coefficients"], group["ns_steps"], group["eps"])
                rows, cols = p.shape[:2]
                ratio = {None: math.sqrt(max(1, rows / cols)), "original": math.sqrt(max(1, rows / cols))}
                ratio["match_rms_adamw"] = 0.2 * math.sqrt(max(rows, cols))
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * ratio.get(group["adjust_lr_fn"], 1.0))
        return loss


def adamw(
    named: list[tuple[str, torch.nn.Parameter]], matrices: set[str], cfg: OptimConfig, fused: bool
) -> torch.optim.AdamW:
    groups = [
        {"params": [p for n, p in named if n in matrices], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if n not in matrices], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


def build_optimizer(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    matrices: set[str],
    cfg: OptimConfig,
    total_steps: int,
    fused: bool,
    factor: Callable[[int], float] | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer over the parameters (`matrices`: names of the 2-D weights, as built) and its
    per-step schedule (factor: another one, e.g. a budget run's). Muon takes the 2-D weights whose
    names start with "blocks."."""
    named = [(n, p) for n, p in named_params if p.requires_grad]
    if cfg.algorithm == "muon":
        hidden = [(n, p) for n, p in named if n in matrices and n.startswith("blocks.")]
        if any(p.dim() != 2 for _, p in hidden):
            raise UserError(
                "optim.algorithm=muon: needs the weight matrices whole (2-D), but they are sharded "
                "(trainer=fsdp): use optim=adamw with fsdp, or trainer=ddp"
            )
        device = hidden[0][1].device if hidden else torch.device("cpu")
        muon = Muon(
            [p for _, p in hidden],
            float32_ns=not native_bf16_matmuls(device),
            lr=cfg.muon_lr,
            momentum=cfg.muon_momentum,
            weight_decay=cfg.muon_weight_decay,
        )
        rest = [(n, p) for n, p in named if not (n in matrices and n.startswith("blocks."))]
        optimizer: torch.optim.Optimizer = Optimizers([muon, adamw(rest, matrices, cfg, fused)])
    else:
        optimizer = adamw(named, matrices, cfg, fused)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor or schedule(cfg, total_steps))
