"""The LightningModule: loss, optimizer, learning-rate schedule, logging, checkpoint contents.

Checkpoints hold plain Python values only: the hyperparameters (including the vocabulary) and,
beside Lightning's usual entries, ``model_config``, ``tokenizer`` (the seed's JSON format) and
``corpus`` (which file, its sha256 and its splits: what `evaluate` scores by default), so
``torch.load(path, weights_only=True)`` works and sampling needs nothing but the file.

Validation scores the val split and, as a second loader, a fixed sample of training windows
(training.data): each is summed per character over every rank, and logged as ``val/loss`` (and
``val/bpc``) and ``train/split_loss``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.core.windows import loss_sum
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import build, option
from lit_gpt_char.training.budget import BudgetClock, budget_schedule
from lit_gpt_char.training.optim import OptimConfig, build_optimizer

# The val loss is summed over ranks by hand (per character, see on_validation_epoch_end), so
# Lightning's advice to log it with sync_dist=True under DDP does not apply.
SUMMED_BY_HAND = r"(val(_sample)?/(loss|bpc)|train/split_loss)"
warnings.filterwarnings("ignore", message=rf".*self\.log\('{SUMMED_BY_HAND}', \.\.\., sync_dist")

FSDP_PREFIX = "_fsdp_wrapped_module."  # what FSDP puts into the names of the modules it wraps

TOKENS_EVERY = 50  # steps per train/tokens_per_s point
VAL_TAGS = ("val/loss", "train/split_loss")  # the loss of validation loader 0 (the val split), 1 (the train sample)


@dataclass
class ModelConfig(GPTConfig):
    """model.*: the GPT's shape and parts (GPTConfig: its defaults, types and ranges) and compile; the
    corpus gives vocab_size."""

    KEY = "model"
    _target_: str = f"{__name__}.LitGPT"  # what Hydra builds (with the vocabulary: run.py)
    vocab_size: int | None = option(None, "taken from the corpus's tokenizer: leave it null", ge=1)
    compile: bool = option(False, "torch.compile the model for training (worth it on GPUs; no gain on CPUs)")

    def check(self) -> None:
        if self.vocab_size is not None:
            raise UserError(f"model.vocab_size={self.vocab_size}: the corpus decides the vocabulary: leave it out")
        super().check()


def gpt_config(vocab_size: int, model: ModelConfig) -> GPTConfig:
    """The GPTConfig of `model` for a vocabulary of vocab_size characters."""
    arch = {k: v for k, v in model.to_dict().items() if k not in ("compile", "vocab_size")}
    return GPTConfig(vocab_size=vocab_size, **arch)


class LitGPT(L.LightningModule):
    """A character GPT with its tokenizer; `vocab` is the tokenizer's character list, `unit` its
    unit (char, or byte: see core/tokenizer.py).

    `model` and `optim` default to the CLI's defaults (they are the same dataclasses), so
    LitGPT(vocab) here and `python -m lit_gpt_char.train` build the same model and optimizer. Model
    options may also come by name (`LitGPT(vocab, n_layer=2)`): that is how Hydra builds it from the
    model group (`_target_`, with `_partial_` until the corpus gives the vocabulary).
    """

    def __init__(
        self,
        vocab: list[str],
        model: ModelConfig | Mapping[str, Any] | None = None,
        optim: OptimConfig | Mapping[str, Any] | None = None,
        unit: str = "char",
        **options: Any,
    ):
        super().__init__()
        model = build(ModelConfig, model, **options)  # model.* by name (options) over `model`
        self.optim = optim if isinstance(optim, OptimConfig) else build(OptimConfig, optim)
        self.tokenizer = CharTokenizer(vocab, unit)
        # Plain values only, so checkpoints load with weights_only=True.
        self.save_hyperparameters(
            {"vocab": list(vocab), "unit": unit, "model": model.to_dict(), "optim": self.optim.to_dict()}
        )
        self.model = GPT(gpt_config(len(vocab), model))
        self._matrices = {n for n, p in self.model.named_parameters() if p.dim() >= 2}
        # The compiled wrapper shares the model's parameters but is kept out of the module tree,
        # so state dicts never carry torch.compile's `_orig_mod.` prefix.
        self.__dict__["_compiled"] = torch.compile(self.model) if model.compile else None
        self._val_sums: torch.Tensor | None = None  # per val loader: (sum of losses, characters)
        self._t_last: float | None = None
        self._tokens = 0

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
            # Straight to the loggers: Lightning would write a self.log value of this hook again at every
            # later step, and the curve would be a staircase of stale values. Logged at the step of the
            # batch that just ran, as its train/loss.
            rate = {"train/tokens_per_s": self._tokens / (now - self._t_last)}
            for logger in self.loggers:
                logger.log_metrics(rate, step=self.global_step - 1)
            self._t_last, self._tokens = now, 0
        # The last step is always validated (and so checkpointed as best/last), whether or not max_steps is a
        # multiple of val_check_interval: Lightning runs a validation for a run that asks to stop.
        if 0 < self.trainer.max_steps <= self.trainer.global_step:
            self.trainer.should_stop = True

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros((len(VAL_TAGS), 2), dtype=torch.float64, device=self.device)

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        logits, _ = self(x)
        # Summed per character, not a mean of batch means: windows may be short or padding (masked).
        total, count = loss_sum(logits, y)
        self._val_sums[dataloader_idx, 0] += total
        self._val_sums[dataloader_idx, 1] += count

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")  # one collective for both
        # val_sample/* when this validation scored a sample of a large val split (training/data.py)
        val = getattr(self.trainer.datamodule, "val_tag", "val")
        for i, tag in enumerate(VAL_TAGS):
            if sums[i, 1] > 0:
                loss = (sums[i, 0] / sums[i, 1]).float()
                if i == 0:
                    self.log(f"{val}/loss", loss, prog_bar=True)
                    self.log(f"{val}/bpc", loss / math.log(2))
                else:
                    self.log(tag, loss)
        self._t_last = None  # validation time is not training throughput

    # --- optimizer and schedule -----------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        # Decay the matrices, not biases and norms. Chosen by name, as shapes were before wrapping:
        # under trainer=fsdp the parameters are flat 1-D shards by now.
        named = [(n.replace(FSDP_PREFIX, ""), p) for n, p in self.model.named_parameters()]
        # One kernel for all parameters; not with fp16's GradScaler, which must unscale before clipping.
        precision = self._trainer.precision if self._trainer is not None else "32-true"  # also usable without a Trainer
        fused = self.device.type in ("cpu", "cuda") and precision != "16-mixed"
        clock = (
            next((c for c in self._trainer.callbacks if isinstance(c, BudgetClock)), None) if self._trainer else None
        )
        if clock is not None:  # budget=...: the schedule follows the clock, the run has no step count
            o = self.optim
            factor = budget_schedule(o.warmup_steps, o.lr, o.min_lr, o.schedule, o.warmdown_fraction, clock)
            optimizer, scheduler = build_optimizer(named, self._matrices, o, 1, fused, factor)
        else:
            total = self._trainer.estimated_stepping_batches if self._trainer is not None else 1
            optimizer, scheduler = build_optimizer(named, self._matrices, self.optim, int(total), fused)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
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
        # (Which corpus and splits it was trained on, for `evaluate`: the data module's state, Corpus.meta().)
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
