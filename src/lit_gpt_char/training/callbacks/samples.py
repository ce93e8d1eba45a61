"""Text from the model during training (callbacks.generate_samples)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from lit_gpt_char.core.generation import SamplingOptions, generate
from lit_gpt_char.options import SEED, Options, build, option
from lit_gpt_char.training.loggers import log_text
from lit_gpt_char.training.module import LitGPT


@dataclass
class GenerateSamplesConfig(Options):
    """callbacks.generate_samples.*: text written during training."""

    KEY = "callbacks.generate_samples"
    _target_: str = f"{__name__}.GenerateSamples"  # what Hydra builds
    every_n_steps: int | None = option(
        500, "write a sample every N optimizer steps (and at the end); null: only at the end", ge=1
    )
    prompt: str = option("\n", "the text each sample continues (characters the corpus lacks are dropped)")
    max_new_tokens: int = option(300, "characters per sample; 0: no samples", ge=0, le=1_000_000)
    temperature: float = option(SamplingOptions.temperature, "0: greedy; 1: the model's distribution", ge=0, le=1e4)
    top_k: int | None = option(SamplingOptions.top_k, "sample among the k most likely characters only; null: all", ge=1)
    seed: int = option(
        SEED, "the samples' own generator seed (training's random streams are untouched)", ge=0, le=2**64 - 1
    )


class GenerateSamples(L.Callback):
    """Every `every_n_steps` optimizer steps and at the end of training, write some text.

    Seeing the text go from noise to Shakespeare is the quickest sanity check there is. The
    sample is printed on rank 0 and logged as text to every active logger (training.loggers). It uses its own seeded
    generator and restores train mode, so it never changes what training does next.
    With weight averaging on (callbacks.ema), it samples from the averaged weights, as validation
    and the checkpoints do. Options: GenerateSamplesConfig's.
    """

    def __init__(self, **options: Any):
        self.options = build(GenerateSamplesConfig, options)
        self._last_step = -1
        self._fsdp_warned = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step, every = trainer.global_step, self.options.every_n_steps
        if every and step > 0 and step % every == 0 and step != self._last_step:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step and not trainer.sanity_checking:
            self.sample(trainer, pl_module)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        self._last_step = trainer.global_step
        if isinstance(trainer.strategy, FSDPStrategy):
            # The weights are sharded: rank 0 alone cannot run the model (it would wait forever
            # for the other ranks to gather them). Checkpoints are whole files: sample from those.
            if not self._fsdp_warned:
                rank_zero_warn(
                    "GenerateSamples is off under FSDP (sharded weights); sample from a checkpoint instead: "
                    "python -m lit_gpt_char.sample ckpt=<run dir>"
                )
                self._fsdp_warned = True
            return None
        o = self.options
        if not trainer.is_global_zero or not isinstance(pl_module, LitGPT) or o.max_new_tokens <= 0:
            return None
        tok, model = pl_module.tokenizer, pl_module.model
        averaging = next((c for c in trainer.callbacks if isinstance(c, WeightAveraging)), None)
        if averaging is not None and getattr(averaging, "_average_model", None) is not None:
            model = averaging._average_model.module.model  # the weights validation and checkpoints use
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            return None  # diverged weights; StopOnNonFiniteLoss reports it
        prompt = "".join(c for c in o.prompt if not tok.unknown(c))
        idx = torch.tensor([tok.encode(prompt) if prompt else [0]], device=pl_module.device)
        prompt = prompt or tok.decode([0])
        generator = torch.Generator(device=pl_module.device).manual_seed(o.seed)
        was_training = model.training
        model.eval()
        try:
            out = generate(model, idx, o.max_new_tokens, temperature=o.temperature, top_k=o.top_k, generator=generator)
        finally:
            model.train(was_training)
        text = prompt + tok.decode(out[0, idx.shape[1] :])
        Console().print(Panel(Text(text), title=f"sample at step {trainer.global_step}", expand=False))
        log_text(trainer.loggers, "samples", text, trainer.global_step)  # to every active logger
        return text
