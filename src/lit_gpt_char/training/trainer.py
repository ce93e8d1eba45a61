"""trainer.*: the arguments of Lightning's Trainer that the configs use, and the machine's fast precision.

`TrainerConfig` holds their defaults, types and ranges (conf/trainer/*.yaml select and override them);
Hydra instantiates the Trainer from it (`_target_`). Any other Trainer argument: +trainer.NAME=VALUE,
checked by Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from lit_gpt_char.errors import UserError
from lit_gpt_char.options import Options, option

PRECISIONS = ("bf16-mixed", "16-mixed", "32-true", "64-true", "bf16-true", "16-true", "transformer-engine")
PRECISIONS += ("transformer-engine-float16", "16", "32", "64", "bf16", 16, 32, 64)  # Lightning's, short forms too


def fast_precision(accelerator: str = "auto") -> str:
    """The Trainer precision that is fast on this machine's `accelerator`: bf16 autocast where bf16
    matmuls run in hardware (Ampere+ GPUs; CPUs with AVX512-BF16 or AMX, ~3.5x float32 on the 2-core
    EPYC this project was tuned on), fp16 with loss scaling on older GPUs, float32 elsewhere (bf16 is
    emulated on an AVX2 CPU, ~10x slower; MPS)."""
    import torch

    from lit_gpt_char.training.optim import native_bf16_matmuls

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if native_bf16_matmuls(torch.device("cuda")) else "16-mixed"
    if accelerator == "cpu" or (accelerator == "auto" and not torch.backends.mps.is_available()):
        return "bf16-mixed" if native_bf16_matmuls(torch.device("cpu")) else "32-true"
    return "32-true"


OmegaConf.register_new_resolver("fast_precision", fast_precision, replace=True)  # trainer.precision's default


@dataclass
class TrainerConfig(Options):
    """trainer.*: arguments of lightning.pytorch.Trainer. These are the ones the configs use; any
    other Trainer argument can be added with +trainer.NAME=VALUE."""

    KEY = "trainer"
    OPEN = True  # +trainer.NAME=VALUE: any other Trainer argument, checked by Lightning
    _target_: str = "lightning.pytorch.Trainer"
    default_root_dir: str | None = option("${paths.output_dir}", "Lightning's own files (the run directory)")
    accelerator: str = option("auto", "cpu | gpu | mps | auto", choices=("auto", "cpu", "gpu", "cuda", "mps", "tpu"))
    devices: Any = option(1, "devices per node: N, a list of indices, 'auto' or -1 (all)")
    num_nodes: int = option(1, "machines (trainer=ddp on SLURM, see the README)", ge=1)
    precision: Any = option(
        "${fast_precision:${.accelerator}}",
        "bf16-mixed | 16-mixed | 32-true | ...; default: the fast one for the machine (bf16 "
        "autocast on Ampere+ GPUs and AVX512-BF16/AMX CPUs, 16-mixed on older GPUs, float32 "
        "elsewhere); master weights stay float32 either way",
    )
    strategy: Any = option("auto", "auto | ddp | ddp_spawn | fsdp | a strategy config (trainer=ddp, fsdp)")
    max_steps: int = option(3000, "optimizer steps to train for; -1: by max_epochs", ge=-1)
    max_epochs: int | None = option(-1, "epochs of data.batches_per_epoch batches; -1: by max_steps", ge=-1)
    max_time: Any = option(None, "stop after this much wall time, e.g. 00:00:10:00 (DD:HH:MM:SS); null: no limit")
    val_check_interval: Any = option(
        500, "validate every N training steps (an integer >= 1); the last step is always validated"
    )
    check_val_every_n_epoch: int | None = option(None, "null: count val_check_interval over the whole run", ge=1)
    limit_train_batches: Any = option(None, "train on N batches (or a fraction) per epoch; null: all")
    limit_val_batches: Any = option(None, "validate on N batches (or a fraction); 0: no validation; null: all")
    num_sanity_val_steps: int = option(2, "validation batches run before training, to catch errors early", ge=-1)
    gradient_clip_val: float | None = option(1.0, "clip the gradient norm to this; null or 0: no clipping", ge=0)
    gradient_clip_algorithm: str | None = option(None, "norm (default) | value", choices=("norm", "value"))
    accumulate_grad_batches: int = option(1, "batches whose gradients add up to one optimizer step", ge=1)
    log_every_n_steps: int = option(1, "steps between logged training points", ge=1)
    enable_checkpointing: bool = option(True, "the checkpoint callback (callbacks.model_checkpoint)")
    enable_progress_bar: bool = option(True, "a progress bar on the terminal")
    enable_model_summary: bool = option(True, "print the model's layers at the start")
    deterministic: Any = option(False, "deterministic algorithms only (slower): true | false | warn")
    benchmark: bool | None = option(None, "cudnn.benchmark")
    fast_dev_run: Any = option(False, "true or N: run N (1) batches of training and validation, no logs (debug=fdr)")
    detect_anomaly: bool = option(False, "torch.autograd's anomaly detection (slow)")
    profiler: str | None = option(None, "simple | advanced | pytorch")
    logger: Any = option(None, "set by the logger group; false: no logger")
    plugins: Any = option(
        help="Trainer plugins; the default writes checkpoints atomically",
        factory=lambda: [{"_target_": "lit_gpt_char.training.callbacks.checkpoint_io.AtomicCheckpointIO"}],
    )

    def check(self) -> None:
        import torch

        if self.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise UserError(
                f"trainer.accelerator={self.accelerator}: no GPU is available here: use "
                "trainer.accelerator=cpu (or auto), or trainer=cpu instead of trainer=gpu"
            )
        if self.accelerator == "mps" and not torch.backends.mps.is_available():
            raise UserError("trainer.accelerator=mps: MPS is not available here: use trainer.accelerator=cpu (or auto)")
        if self.precision not in PRECISIONS:
            raise UserError(
                f"trainer.precision={self.precision}: must be one of "
                f"{', '.join(str(p) for p in PRECISIONS if isinstance(p, str))}"
            )
        v = self.val_check_interval
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (isinstance(v, float) and v > 1):
            raise UserError(f"trainer.val_check_interval={v}: must be an integer >= 1 (steps between validations)")
        if self.max_steps == 0:
            raise UserError("trainer.max_steps=0: must be >= 1 (or -1 to train by max_epochs)")
        if self.max_steps == -1 and self.max_epochs in (None, -1) and self.max_time is None:
            raise UserError("trainer.max_steps=-1: with max_epochs=-1 the run would never end: set one of them")
        for name in ("limit_train_batches", "limit_val_batches"):
            lim = getattr(self, name)
            if lim is not None and (
                isinstance(lim, bool)
                or not isinstance(lim, (int, float))
                or lim < 0
                or (isinstance(lim, float) and lim > 1)
            ):
                raise UserError(f"trainer.{name}={lim}: must be null, an integer >= 0 or a fraction in [0, 1]")
