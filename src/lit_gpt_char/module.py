"""The LightningModule: loss, optimizer, learning-rate schedule, logging, checkpoint contents.

Checkpoints hold plain Python values only: the hyperparameters (including the vocabulary) and,
beside Lightning's usual entries, ``model_config`` and ``tokenizer`` (the seed's JSON format),
so ``torch.load(path, weights_only=True)`` works and sampling needs nothing but the file.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from lit_gpt_char.errors import UserError
from lit_gpt_char.model import GPT, GPTConfig
from lit_gpt_char.tokenizer import CharTokenizer

# The val loss is summed over ranks by hand (per character, see on_validation_epoch_end), so
# Lightning's advice to log it with sync_dist=True under DDP does not apply.
warnings.filterwarnings("ignore", message=r".*self\.log\('val/(loss|bpc)', \.\.\., sync_dist=True\)")

FSDP_PREFIX = "_fsdp_wrapped_module."  # what FSDP puts into the names of the modules it wraps

TOKENS_EVERY = 50  # steps per train/tokens_per_s point

DEFAULT_OPTIM: dict[str, Any] = {
    "lr": 1e-3,
    "min_lr": 1e-4,
    "weight_decay": 0.1,
    "betas": (0.9, 0.99),
    "eps": 1e-8,
    "warmup_steps": 100,
    "decay_steps": 5000,
}


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


class LitGPT(L.LightningModule):
    """A character GPT with its tokenizer; `vocab` is the tokenizer's character list."""

    def __init__(
        self,
        vocab: list[str],
        block_size: int = 256,
        n_layer: int = 6,
        n_head: int = 6,
        n_embd: int = 384,
        dropout: float = 0.2,
        bias: bool = False,
        attn_dropout: float | None = None,
        compile: bool = False,
        optim: dict[str, Any] | None = None,
    ):
        super().__init__()
        unknown = set(optim or {}) - DEFAULT_OPTIM.keys()
        if unknown:
            raise UserError(f"unknown optim option(s) {sorted(unknown)}: valid ones are {sorted(DEFAULT_OPTIM)}")
        self.optim = {**DEFAULT_OPTIM, **(optim or {})}
        self.optim["betas"] = tuple(self.optim["betas"])
        self.save_hyperparameters()
        self.tokenizer = CharTokenizer(vocab)
        self.model = GPT(GPTConfig(len(vocab), block_size, n_layer, n_head, n_embd, dropout, bias, attn_dropout))
        self._matrices = {n for n, p in self.model.named_parameters() if p.dim() >= 2}
        # The compiled wrapper shares the model's parameters but is kept out of the module tree,
        # so state dicts never carry torch.compile's `_orig_mod.` prefix.
        self.__dict__["_compiled"] = torch.compile(self.model) if compile else None
        self._val_sum: torch.Tensor | None = None
        self._val_count = 0
        self._t_last: float | None = None
        self._tokens = 0

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        model = self._compiled if self._compiled is not None else self.model
        return model(idx, targets)

    # --- training and validation ------------------------------------------------------------
    def on_train_start(self) -> None:
        # Every rank starts from the same generator state (one seed, or the one state a
        # checkpoint saved), so every rank would draw the same dropout masks. Fork one stream
        # per rank from a number all ranks draw alike: still reproducible from the seed.
        if self.trainer.world_size > 1:
            base = int(torch.randint(2**62, (1,)))
            torch.manual_seed(base + self.global_rank)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self(x, y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Throughput over windows of TOKENS_EVERY steps: a self.log call costs ~0.1-7 ms, too
        # much to pay every step for a small model.
        now = time.perf_counter()
        self._tokens += batch[1].numel() * self.trainer.world_size
        if self._t_last is None:
            self._t_last, self._tokens = now, 0
        elif self.trainer.global_step % TOKENS_EVERY == 0:
            self.log("train/tokens_per_s", self._tokens / (now - self._t_last), on_step=True, on_epoch=False)
            self._t_last, self._tokens = now, 0

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self(x, y)
        # Sum over characters, not a mean of batch means: the last window may be shorter.
        self._val_sum += loss.double() * y.numel()
        self._val_count += y.numel()

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(
            torch.tensor(self._val_count, dtype=torch.float64, device=self.device), reduce_op="sum"
        )
        loss = (total / count).float()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/bpc", loss / math.log(2))
        self._t_last = None  # validation time is not training throughput

    # --- optimizer and schedule -----------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        o = self.optim
        # Decay the matrices, not biases and norms. Chosen by name, as shapes were before wrapping:
        # under trainer=fsdp the parameters are flat 1-D shards by now.
        named = [(n.replace(FSDP_PREFIX, ""), p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in self._matrices], "weight_decay": o["weight_decay"]},
            {"params": [p for n, p in named if n not in self._matrices], "weight_decay": 0.0},
        ]
        # One kernel for all parameters; not with fp16's GradScaler, which must unscale before clipping.
        precision = self._trainer.precision if self._trainer is not None else "32-true"  # also usable without a Trainer
        fused = self.device.type in ("cpu", "cuda") and precision != "16-mixed"
        optimizer = torch.optim.AdamW(groups, lr=o["lr"], betas=o["betas"], eps=o["eps"], fused=fused)

        def factor(step: int) -> float:
            return warmup_cosine(step, o["lr"], o["min_lr"], o["warmup_steps"], o["decay_steps"]) / o["lr"]

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip directly: Lightning refuses to clip for fused optimizers, a guard meant for fp16's
        GradScaler that also blocks bf16 and fp32, where there is nothing to unscale."""
        if not gradient_clip_val:
            return
        if self.trainer.precision == "16-mixed":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
        elif isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)  # the norm over all shards, not this rank's
        else:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    # --- checkpoint contents ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_config"] = self.model.config.to_dict()
        checkpoint["tokenizer"] = self.tokenizer.to_dict()
        # Dropout draws from the global generators: saving them makes a resumed run exact. With
        # several ranks, rank 0's state is saved and on_train_start forks it again on resume:
        # reproducible, though not the streams the uninterrupted run would have drawn.
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
