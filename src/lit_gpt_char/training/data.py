"""Corpus -> tokenizer -> windows.

`TextDataModule` reads one UTF-8 text file (Tiny Shakespeare, downloaded on first use, by
default), builds the character tokenizer, splits the ids 90/10 like nanoGPT, and serves:

- training batches of random windows drawn by a seeded generator (one per rank), cut from one
  tensor by indexing, with the generator state saved in checkpoints for exact resume;
- validation over the WHOLE val split in consecutive non-overlapping windows (core.evaluation's,
  the ones `python -m lit_gpt_char.evaluate` scores), shared out across ranks and padded with
  masked windows so every rank runs as many batches: the val loss is the true per-character
  loss of the split;
- beside it, a fixed seeded sample of training windows scored the same way, so the train-split
  and val losses at each validation carry the same kind of noise (`train/split_loss`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_gpt_char.core.evaluation import DATA_DIR_ENV, Windows, consecutive_windows, random_windows, sha256_of
from lit_gpt_char.core.model import GPTConfig
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import Options, build, option

Batch = tuple[torch.Tensor, torch.Tensor]
TRAIN_SAMPLE_SEED = 2**32  # added to the run's seed: the train-split sample's own stream, apart from any rank's


@dataclass
class DataConfig(Options):
    """data.*: which text, and how it is cut into batches. The defaults are Tiny Shakespeare's,
    downloaded on first use and checked by sha256; data.path=FILE trains on any UTF-8 text."""

    KEY = "data"
    path: str | None = option(None, "your own UTF-8 text file; null: the corpus named by url/filename below")
    filename: str = option("tinyshakespeare.txt", "the corpus's file name in paths.data_dir")
    url: str | None = option(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "where the corpus is downloaded from when it is not in paths.data_dir; null: never "
        "(data.path is then required)",
    )
    sha256: str | None = option(
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "checksum of the downloaded corpus; null: not checked",
    )
    batch_size: int = option(16, "windows per training batch (per process)", ge=1, le=1 << 20)
    batches_per_epoch: int = option(1000, "batches per 'epoch' of random windows (only the progress bar sees it)", ge=1)
    repeat_batches: int | None = option(None, "cycle through the same N batches (debug=overfit); null: never", ge=1)
    val_batch_size: int | None = option(None, "windows per validation batch; null: batch_size", ge=1, le=1 << 20)
    val_max_batches: int | None = option(None, "score only the first N val batches; null: the whole split", ge=1)
    train_fraction: float = option(0.9, "the first fraction of the text trains, the rest validates", gt=0, lt=1)
    train_sample_chars: int | None = option(
        None,
        "characters of the fixed, seeded sample of training windows scored at each validation "
        "(logged as train/split_loss); null: as many as validation scores; 0: none",
        ge=0,
    )


def default_data_dir() -> str:
    """Where corpora are kept unless paths.data_dir says otherwise: $LIT_GPT_CHAR_DATA_DIR, else ./data."""
    return os.environ.get(DATA_DIR_ENV) or "data"


def download(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Fetch url into dest atomically (temporary file, then rename), so no half file is left."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_corpus(
    path: str | Path | None, data_dir: str | Path, filename: str, url: str | None, sha256: str | None
) -> Path:
    """The corpus file to train on: `path` as given, or data_dir/filename, downloaded from url if missing.

    The checksum guards the downloaded corpus only; a file passed as `path` is the user's own
    text and is taken as it is.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"data.path={path}: does not exist or is not a file: pass the path of a UTF-8 text file")
        return p
    if url is None:
        raise UserError("data.path is required: pass data.path=FILE (a UTF-8 text file)")
    p = Path(data_dir).expanduser() / filename
    if not p.is_file():
        rank_zero_info(f"Downloading {url} -> {p}")
        try:
            download(url, p)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            check = f" (sha256 {sha256})" if sha256 else ""
            raise UserError(
                f"could not download the corpus from {url} ({e}). Put the file at {p}{check}, or pass "
                "data.path=/path/to/text.txt to train on another UTF-8 text file."
            ) from None
    if sha256:
        got = sha256_of(p)
        if got != sha256:
            raise UserError(
                f"checksum mismatch for {p}: sha256 {got}, expected {sha256}. The file is damaged "
                "or not the expected corpus: delete it to download it again, or pass data.path=... "
                "to train on it as your own text."
            )
    return p


def read_corpus(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read the corpus {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"the corpus {path} is not UTF-8 text (bad byte at offset {e.start}): convert it, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt"
        ) from None
    if not text:
        raise UserError(f"the corpus {path} is empty: pass data.path= a file with text in it")
    return text


def split_sizes(n: int, train_fraction: float) -> tuple[int, int]:
    n_train = int(n * train_fraction)
    return n_train, n - n_train


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
    (core.evaluation.consecutive_windows, as `evaluate` cuts them).

    Window i covers targets [i*T+1, (i+1)*T] of the split; the last one may be shorter, so
    every target of the split is scored exactly once. With several ranks, rank r takes windows
    r, r+W, r+2W, ..., padded with a masked window where it has one fewer, so that every rank
    runs the same number of batches. max_batches: only the first max_batches * batch_size windows.
    """

    def __init__(
        self,
        data: torch.Tensor,
        block_size: int,
        batch_size: int,
        max_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        windows = consecutive_windows(len(data) - 1, block_size)
        if max_batches is not None:
            windows = windows[: max_batches * batch_size]
        super().__init__(data, windows, block_size, batch_size, rank, world_size)


class TextDataModule(L.LightningDataModule):
    """One text file as a character-level language-modelling task (Tiny Shakespeare by default).

    block_size is the model's context (model.block_size), seed the run's; data_dir defaults to
    $LIT_GPT_CHAR_DATA_DIR or ./data; the tokenizer is written to tokenizer_path if given.
    """

    def __init__(
        self,
        data: DataConfig | Mapping[str, Any] | None = None,
        *,
        block_size: int = GPTConfig.block_size,
        seed: int = 1337,
        data_dir: str | None = None,
        tokenizer_path: str | None = None,
    ):
        super().__init__()
        self.cfg = data if isinstance(data, DataConfig) else build(DataConfig, data)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise UserError(f"model.block_size={block_size}: must be an integer >= 1")
        self.block_size, self.seed = block_size, seed
        self.data_dir = data_dir or default_data_dir()
        self.tokenizer_path = tokenizer_path
        self._corpus: Path | None = None
        self._sha256: str | None = None
        self._text: str | None = None
        self._tokenizer: CharTokenizer | None = None
        self.train_data: torch.Tensor | None = None
        self.val_data: torch.Tensor | None = None

    # --- corpus and tokenizer -------------------------------------------------------------
    def prepare_data(self) -> None:
        self.corpus_path()

    def corpus_path(self) -> Path:
        """Checked (and downloaded) once per process."""
        if self._corpus is None:
            c = self.cfg
            self._corpus = ensure_corpus(c.path, self.data_dir, c.filename, c.url, c.sha256)
        return self._corpus

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = read_corpus(self.corpus_path())
        return self._text

    @property
    def tokenizer(self) -> CharTokenizer:
        """Built once from the whole corpus (every character of train and val)."""
        if self._tokenizer is None:
            self._tokenizer = CharTokenizer.from_text(self.text)
        return self._tokenizer

    # --- splits ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        ids = self.tokenizer.encode_tensor(self.text)
        n_train, n_val = split_sizes(len(ids), self.cfg.train_fraction)
        need = self.block_size + 1
        for name, n in (("train", n_train), ("val", n_val)):
            if n < need:
                raise UserError(
                    f"the {name} split of {self.corpus_path()} has {n} characters, fewer than one window "
                    f"of model.block_size+1 = {need}: use a longer text or a smaller model.block_size"
                )
        self.train_data, self.val_data = ids[:n_train], ids[n_train:]
        if self.tokenizer_path and (self.trainer is None or self.trainer.is_global_zero):
            self.tokenizer.save(self.tokenizer_path)
        rank_zero_info(
            f"Corpus {self.corpus_path()}: {len(ids):,} characters, vocabulary {self.tokenizer.vocab_size}, "
            f"train {n_train:,} / val {n_val:,}"
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

    def val_dataloader(self) -> ValWindows | list[Windows]:
        """The val split; and, unless data.train_sample_chars=0, the fixed sample of training windows
        (the second loader: the module logs its loss as train/split_loss)."""
        rank, world = self._rank()
        c = self.cfg
        batch_size = c.val_batch_size or c.batch_size
        val = ValWindows(self.val_data, self.block_size, batch_size, c.val_max_batches, rank, world)
        if c.train_sample_chars == 0:
            return val
        if c.train_sample_chars is None:  # as many windows as validation scores: the same noise
            count = len(ValWindows(self.val_data, self.block_size, batch_size, c.val_max_batches).windows)
        else:
            count = -(-c.train_sample_chars // self.block_size)
        # Every rank draws the same windows (one seed, unlike the training windows) and scores its share.
        windows = random_windows(len(self.train_data) - 1, self.block_size, count, seed=self.seed + TRAIN_SAMPLE_SEED)
        return [val, Windows(self.train_data, windows, self.block_size, batch_size, rank, world)]

    def corpus_record(self) -> dict[str, Any] | None:
        """What a checkpoint records of the corpus (plain values), so that `evaluate` can find and
        check it and cut the same splits: ids [start, end) of each split. None before setup."""
        if self.train_data is None or self.val_data is None:
            return None
        path = self.corpus_path().resolve()
        if self._sha256 is None:
            verified = self.cfg.path is None and self.cfg.sha256  # ensure_corpus checked it
            self._sha256 = self.cfg.sha256 if verified else sha256_of(path)
        n_train = len(self.train_data)
        n = n_train + len(self.val_data)
        return {
            "path": str(path),
            "name": path.name,
            "sha256": self._sha256,
            "train_fraction": self.cfg.train_fraction,
            "length": n,
            "splits": {"train": [0, n_train], "val": [n_train, n]},
        }
