"""Corpus -> windows: the corpus (core/corpus.py) served to Lightning as batches.

`TextDataModule` takes the corpus a DataConfig names (Tiny Shakespeare by default; any UTF-8
file; enwik8, text8) and serves:

- training batches of random windows drawn by a seeded generator (one per rank), cut from the
  mapped token file by indexing, with the generator state saved in checkpoints for exact resume;
- validation over the WHOLE val split in consecutive non-overlapping windows (core.windows',
  the ones `python -m lit_gpt_char.evaluate` scores), shared out across ranks and padded with
  masked windows so every rank runs as many batches: the val loss is the true per-character
  loss of the split. A val split larger than data.val_sample_tokens is scored during training
  on a fixed, seeded sample of those windows (logged as val_sample/*), and whole at the end;
- beside it, a fixed seeded sample of training windows scored the same way, so the train-split
  and val losses at each validation carry the same kind of noise (`train/split_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_gpt_char.core.corpus import (  # noqa: F401  (re-exported: the data layer's names)
    DATA_DIR_ENV,
    Corpus,
    CorpusConfig,
    Split,
    default_data_dir,
    ensure_corpus,
    sha256_of,
    split_ids,
    split_sizes,
)
from lit_gpt_char.core.model import GPTConfig
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.core.windows import Windows, consecutive_windows, random_windows
from lit_gpt_char.errors import UserError
from lit_gpt_char.loading import DATA_STATE_KEY, corpus_meta_of  # noqa: F401  (re-exported)
from lit_gpt_char.options import SEED, build

Batch = tuple[torch.Tensor, torch.Tensor]
VAL_SAMPLE_SEED = 0  # the sample of val windows is the same in every run (comparable curves)
TRAIN_SAMPLE_SEED = 2**32  # added to the run's seed: the train-split sample's own stream, apart from any rank's


@dataclass
class DataConfig(CorpusConfig):
    """data.*: which text, and how it is cut into batches (CorpusConfig: its defaults, types and
    ranges). The defaults are Tiny Shakespeare's; data.path=FILE trains on any UTF-8 text."""

    KEY = "data"
    _target_: str = f"{__name__}.TextDataModule"  # what Hydra builds (with the model's context: run.py)


def sample_val_starts(n_targets: int, block_size: int, n_tokens: int, seed: int = VAL_SAMPLE_SEED) -> list[int]:
    """Starts of about n_tokens / block_size of the split's consecutive windows (ValWindows'
    windows), drawn at random once by `seed` and sorted: a fixed sample for every validation."""
    n_windows = -(-n_targets // block_size)
    k = min(n_windows, max(1, math.ceil(n_tokens / block_size)))
    picked = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    return (picked * block_size).tolist()


class RandomWindows:
    """Training batches: `batch_size` random windows of block_size+1 ids, forever.

    `len()` is the number of batches per "epoch" (Lightning's loop stops there); the generator
    runs on across epochs. It is stateful so Lightning stores the generator in checkpoints and
    a resumed run draws exactly the batches an uninterrupted run would have drawn.
    """

    def __init__(
        self,
        data: torch.Tensor,
        block_size: int,
        batch_size: int,
        batches_per_epoch: int,
        seed: int,
        repeat_batches: int | None = None,
    ):
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.batches_per_epoch, self.seed, self.repeat_batches = batches_per_epoch, seed, repeat_batches
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0
        self.offsets = torch.arange(block_size + 1)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.draw()

    def draw(self) -> Batch:
        w = self.data[self._starts() + self.offsets].long()
        return w[:, :-1], w[:, 1:]

    def _starts(self) -> torch.Tensor:
        if self.repeat_batches and self.drawn % self.repeat_batches == 0:
            self.generator.manual_seed(self.seed)  # overfitting on purpose: the same batches again
        self.drawn += 1
        return torch.randint(len(self.data) - self.block_size, (self.batch_size, 1), generator=self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "drawn": self.drawn, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Resume after state["drawn"] batches. A checkpoint holds rank 0's state only, so another
        rank (another seed) replays its own stream up to that point instead of taking rank 0's."""
        if state.get("seed") == self.seed:
            self.generator.set_state(state["generator"])
            self.drawn = state["drawn"]
            return
        self.generator.manual_seed(self.seed)
        self.drawn = 0
        while self.drawn < state["drawn"]:
            self._starts()


class ValWindows(Windows):
    """Validation batches: the split cut into consecutive windows of block_size targets
    (core.windows.consecutive_windows, as `evaluate` cuts them).

    Window i covers targets [i*T+1, (i+1)*T] of the split; the last one may be shorter, so
    every target of the split is scored exactly once. With several ranks, rank r takes windows
    r, r+W, r+2W, ..., padded with a masked window where it has one fewer, so that every rank
    runs the same number of batches. `starts`: only the windows starting there (a sample, see
    sample_val_starts); max_batches: only the first max_batches * batch_size windows.
    """

    def __init__(
        self,
        data: torch.Tensor,
        block_size: int,
        batch_size: int,
        max_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        starts: list[int] | None = None,
    ):
        windows = consecutive_windows(len(data) - 1, block_size)
        if starts is not None:
            windows = windows[torch.as_tensor(starts, dtype=torch.long) // block_size]
        if max_batches is not None:
            windows = windows[: max_batches * batch_size]
        super().__init__(data, windows, block_size, batch_size, rank, world_size)


class TextDataModule(L.LightningDataModule):
    """One text file as a character-level language-modelling task (Tiny Shakespeare by default).

    block_size is the model's context (model.block_size), seed the run's; data_dir defaults to
    $LIT_GPT_CHAR_DATA_DIR or ./data; the tokenizer is written to tokenizer_path if given. The data
    options come as `data` or by name (`TextDataModule(path="my.txt")`: how Hydra builds it from the
    data group). Works without a Trainer too (setup(), then train_data / val_data / test_data).
    """

    def __init__(
        self,
        data: DataConfig | Mapping[str, Any] | None = None,
        *,
        block_size: int = GPTConfig.block_size,
        seed: int = SEED,
        data_dir: str | None = None,
        tokenizer_path: str | None = None,
        **options: Any,
    ):
        super().__init__()
        # data.* by name (options) over `data`; a CorpusConfig of core's as it is
        data = data if isinstance(data, CorpusConfig) and not options else build(DataConfig, data, **options)
        self.corpus = Corpus(data, data_dir)
        self.cfg = self.corpus.cfg
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise UserError(f"model.block_size={block_size}: must be an integer >= 1")
        self.block_size, self.seed = block_size, seed
        self.data_dir = self.corpus.data_dir
        self.tokenizer_path = tokenizer_path
        self.train_data: torch.Tensor | None = None
        self.val_data: torch.Tensor | None = None
        self.test_data: torch.Tensor | None = None

    # --- corpus and tokenizer -------------------------------------------------------------
    def prepare_data(self) -> None:
        self.corpus.path()

    def corpus_path(self) -> Any:
        return self.corpus.path()

    def tokens(self) -> Any:
        return self.corpus.tokens()

    @property
    def tokenizer(self) -> CharTokenizer:
        """Built once from the whole corpus (every character of train, val and test)."""
        return self.corpus.tokenizer

    def split_sizes(self) -> tuple[int, int, int]:
        return self.corpus.split_sizes()

    # --- splits ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        splits = self.corpus.splits()
        n_train, n_val, n_test = self.split_sizes()
        need = self.block_size + 1
        for name, n in (("train", n_train), ("val", n_val)):
            if n < need:
                raise UserError(
                    f"the {name} split of {self.corpus.path()} has {n} {self.cfg.unit}s, fewer than one window "
                    f"of model.block_size+1 = {need}: use a longer text or a smaller model.block_size"
                )
        self.train_data, self.val_data, self.test_data = splits["train"], splits["val"], splits["test"]
        if self.tokenizer_path and (self.trainer is None or self.trainer.is_global_zero):
            self.tokenizer.save(self.tokenizer_path)
        test = f" / test {n_test:,}" if n_test else ""
        rank_zero_info(
            f"Corpus {self.corpus.path()}: {len(self.tokens().ids):,} {self.cfg.unit}s, vocabulary "
            f"{self.tokenizer.vocab_size}, train {n_train:,} / val {n_val:,}{test} (token file {self.tokens().path})"
        )

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> RandomWindows:
        rank, _ = self._rank()
        # Each rank draws its own windows; the seed stays reproducible per rank.
        c = self.cfg
        return RandomWindows(
            self.train_data,
            self.block_size,
            c.batch_size,
            c.batches_per_epoch,
            seed=self.seed + 1000 * rank,
            repeat_batches=c.repeat_batches,
        )

    @property
    def val_sampled(self) -> bool:
        """True when validations during training score a sample of the val split (it is larger
        than data.val_sample_tokens): they log val_sample/*, and val/* comes from a whole pass."""
        n = self.cfg.val_sample_tokens
        return n is not None and self.split_sizes()[1] - 1 > n

    @property
    def val_tag(self) -> str:
        """The name validation logs under now: val_sample while fitting on a sampled split, else val."""
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        return "val_sample" if fitting and self.val_sampled else "val"

    def val_dataloader(self) -> ValWindows | list[Windows]:
        """The val split (or its fixed sample); and, unless data.train_sample_chars=0, the fixed
        sample of training windows (the second loader: the module logs its loss as train/split_loss)."""
        rank, world = self._rank()
        c = self.cfg
        batch_size = c.val_batch_size or c.batch_size
        starts = None
        if self.val_tag == "val_sample":
            starts = sample_val_starts(len(self.val_data) - 1, self.block_size, c.val_sample_tokens)
        val = ValWindows(self.val_data, self.block_size, batch_size, c.val_max_batches, rank, world, starts)
        if c.train_sample_chars == 0:
            return val
        if c.train_sample_chars is None:  # as many windows as validation scores: the same noise
            count = len(ValWindows(self.val_data, self.block_size, batch_size, c.val_max_batches, 0, 1, starts).windows)
        else:
            count = -(-c.train_sample_chars // self.block_size)
        # Every rank draws the same windows (one seed, unlike the training windows) and scores its share.
        windows = random_windows(len(self.train_data) - 1, self.block_size, count, seed=self.seed + TRAIN_SAMPLE_SEED)
        return [val, Windows(self.train_data, windows, self.block_size, batch_size, rank, world)]

    # --- what checkpoints record about the data (and evaluate needs) -----------------------
    def corpus_meta(self) -> dict[str, Any]:
        """Plain values: the corpus, its file and sha256, unit, split sizes and the data config."""
        return self.corpus.meta()

    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning in every checkpoint under DATA_STATE_KEY (read it with corpus_meta_of)."""
        return self.corpus.meta() if self.corpus.loaded else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sha = state.get("sha256") if isinstance(state, dict) else None
        if sha and sha != self.tokens().corpus_sha256:
            rank_zero_warn(
                f"resuming on another corpus than the checkpoint was trained on ({state.get('corpus')}, "
                f"sha256 {sha[:12]}...; now {self.corpus.path().name}, {self.tokens().corpus_sha256[:12]}...)"
            )
