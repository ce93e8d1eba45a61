"""Windows: how a text of ids is cut into the model's block_size inputs, for training, validation and
evaluation alike, and the loss of a batch of them.

A text of n ids has n - 1 targets (every character but the first, which nothing precedes). The
model sees at most block_size ids at a time, so the targets are scored in windows, cut one of
two ways:

- consecutive (`consecutive_windows`): windows at 0, T, 2T, ... (T = block_size), none overlapping,
  the last one shorter. Each character is scored once, with the context its window gives it (1
  to T characters). This is training's `val/loss` (training.data.ValWindows is built on it)
  and the number the README's results quote.
- sliding (`sliding_windows`, stride S): full windows every S characters, each scoring only the
  targets no earlier window scored. Each character is scored once, with at least T - S + 1
  characters of context (fewer only within the text's first T): lower, for a model that uses its
  context (a model that got worse late in its context could score higher).
- random (`random_windows`): training's batches.

`Windows` turns a list of windows into batches, shared out across ranks and padded so that every
rank runs the same number of batches of the same shape (a collective inside the forward, as
FSDP's, would otherwise wait forever on the rank with one batch fewer). Padding is masked: its
targets are IGNORE, which `loss_sum` leaves out of both the sum and the count, so padding
changes neither by a single bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor]
IGNORE = -100  # a target that is padding: F.cross_entropy's default ignore_index


# --- windows: (start, skip) rows; a window scores targets start+skip+1 .. start+length ---------------------------
def consecutive_windows(n_targets: int, block_size: int) -> torch.Tensor:
    """Windows at 0, T, 2T, ... scoring all their targets: (N, 2) rows of (start, skip=0)."""
    starts = torch.arange(0, n_targets, block_size, dtype=torch.long)
    return torch.stack([starts, torch.zeros_like(starts)], dim=1)


def sliding_windows(n_targets: int, block_size: int, stride: int) -> torch.Tensor:
    """Full windows every `stride` characters (the last one moved back to end at the text's end),
    each skipping the targets the window before it scored: (N, 2) rows of (start, skip)."""
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}")
    length = min(block_size, n_targets)
    starts = torch.arange(0, n_targets - length + 1, stride, dtype=torch.long)
    if starts[-1] + length < n_targets:
        starts = torch.cat([starts, torch.tensor([n_targets - length])])
    skips = torch.zeros_like(starts)
    skips[1:] = starts[:-1] + length - starts[1:]  # scored by the window before
    return torch.stack([starts, skips], dim=1)


def random_windows(n_targets: int, block_size: int, count: int, seed: int) -> torch.Tensor:
    """`count` full windows at seeded random places (a fixed sample of a split): (count, 2) rows."""
    length = min(block_size, n_targets)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(n_targets - length + 1, (count,), generator=generator)
    return torch.stack([starts, torch.zeros_like(starts)], dim=1)


def cut(data: torch.Tensor, windows: torch.Tensor, length: int) -> Batch:
    """Inputs and targets (rows, length) of the windows; targets outside a window's share
    (skipped, or past the end of data) are IGNORE."""
    starts, skips = windows[:, :1], windows[:, 1:]
    pos = torch.arange(length + 1)
    idx = (starts + pos).clamp_(max=len(data) - 1)
    w = data[idx].long()
    x, y = w[:, :-1], w[:, 1:].clone()
    i = pos[:-1]
    y[(i < skips) | (starts + i >= len(data) - 1)] = IGNORE
    return x, y


class Windows:
    """Batches of `batch_size` windows of data (its (start, skip) rows), rank `rank` of `world_size`.

    Rank r takes windows r, r + W, r + 2W, ... and, if it has one window fewer than rank 0, a
    padding window whose targets are all IGNORE: every rank yields len(self) batches of the same
    shapes. Every window is `length` = min(block_size, targets in data) long; a short last
    window is masked at its end.
    """

    def __init__(
        self,
        data: torch.Tensor,
        windows: torch.Tensor,
        block_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        n_targets = len(data) - 1
        if n_targets < 1:
            raise ValueError("data must hold at least 2 ids (one target)")
        self.data, self.batch_size = data, batch_size
        self.length = min(block_size, n_targets)
        per_rank = -(-len(windows) // world_size)
        mine = windows[rank::world_size]
        padding = torch.tensor([[0, self.length]], dtype=torch.long).expand(per_rank - len(mine), 2)
        self.windows = torch.cat([mine, padding])

    @property
    def num_targets(self) -> int:
        """Targets this rank scores (padding and skipped targets left out)."""
        n = len(self.data) - 1
        ends = (n - self.windows[:, 0]).clamp(max=self.length)
        return int((ends - self.windows[:, 1]).clamp(min=0).sum())

    def __len__(self) -> int:
        return -(-len(self.windows) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for i in range(0, len(self.windows), self.batch_size):
            yield cut(self.data, self.windows[i : i + self.batch_size], self.length)


# --- the loss of a batch of windows -----------------------------------------------------------------------------
def loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the per-target cross-entropies in float64, number of targets); IGNORE targets
    add exactly 0 to both. Summing, not averaging batch means, makes a split's loss its true
    per-character mean however its windows are batched or shared out."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return losses.double().sum(), (targets != IGNORE).sum()
