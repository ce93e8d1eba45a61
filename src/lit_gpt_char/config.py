"""Config helpers shared by the entry points: show a config, and the `${fast_precision:}` resolver.

Importing this module registers the resolver; the entry points that build a Trainer do.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf


def fast_precision(accelerator: str = "auto") -> str:
    """The Trainer precision that is fast on this machine's `accelerator`.

    bf16 autocast pays where bf16 matmuls run in hardware: Ampere+ GPUs, and CPUs with
    AVX512-BF16 or AMX (~3.5x float32 on the 2-core EPYC this project was tuned on). Elsewhere
    it is emulated: ~10x slower than float32 on an AVX2 CPU (most laptops), so float32 it is;
    older GPUs get fp16 with loss scaling. MPS and other accelerators: float32.
    """
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    if accelerator == "cpu" or (accelerator == "auto" and not torch.backends.mps.is_available()):
        cpu = torch.cpu
        native = [getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return "bf16-mixed" if any(native) else "32-true"
    return "32-true"


OmegaConf.register_new_resolver("fast_precision", fast_precision, replace=True)

PRINT_ORDER = ("model", "optim", "data", "trainer", "callbacks", "logger", "paths", "experiment", "seed", "ckpt_path")


def print_config_tree(cfg: DictConfig, order: Sequence[str] = PRINT_ORDER, resolve: bool = True) -> None:
    """Print the resolved config as a rich tree, main groups first, so a run's log shows what ran."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        node = cfg[key]
        branch = tree.add(str(key), style="bold")
        body = OmegaConf.to_yaml(node, resolve=resolve) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(body, "yaml", theme="ansi_dark", background_color="default"))
    rich.print(tree)
