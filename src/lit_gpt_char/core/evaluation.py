"""Scoring a model on text without Lightning: the loss per character (nats), bits per character and
perplexity over consecutive or sliding windows (core/windows.py), and reading the text to score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lit_gpt_char.core.windows import Windows, consecutive_windows, loss_sum, sliding_windows
from lit_gpt_char.errors import UserError


@dataclass
class Score:
    """A loss summed over `chars` scored characters, in nats."""

    loss_sum: float
    chars: int

    @property
    def loss(self) -> float:
        """Mean cross-entropy per character (nats)."""
        return self.loss_sum / self.chars

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def ppl(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf


@torch.inference_mode()
def score(
    model: nn.Module,
    data: torch.Tensor,
    batch_size: int = 32,
    stride: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Score:
    """The loss of `model` (a core.model.GPT, in eval mode, on its device) on the ids `data`:
    consecutive windows (stride None, training's val/loss) or sliding ones (stride S).
    progress(done, total) is called after each batch."""
    block_size = model.config.block_size
    n_targets = len(data) - 1
    if n_targets < 1:
        raise ValueError("data must hold at least 2 ids (one target)")
    windows = (
        consecutive_windows(n_targets, block_size) if stride is None else sliding_windows(n_targets, block_size, stride)
    )
    batches = Windows(data, windows, block_size, batch_size)
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.long, device=device)
    for i, (x, y) in enumerate(batches):
        logits, _ = model(x.to(device))
        s, c = loss_sum(logits, y.to(device))
        total += s
        count += c
        if progress is not None:
            progress(i + 1, len(batches))
    return Score(float(total), int(count))


# --- files ------------------------------------------------------------------------------------------------------
def read_text(path: str | Path, key: str = "text") -> str:
    """A UTF-8 file's text; UserError naming `key`=path for a missing, unreadable, binary or empty file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{key}={path}: does not exist or is not a file: pass the path of a UTF-8 text file")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UserError(f"{key}={path}: cannot be read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{key}={path}: is not UTF-8 text (bad byte at offset {e.start}): convert it, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt"
        ) from None
    if not text:
        raise UserError(f"{key}={path}: is empty: give a file with at least 2 characters")
    return text
