"""Corpus -> tokenizer -> windows.

`TextDataModule` takes one UTF-8 text file (Tiny Shakespeare, downloaded on first use, by
default; enwik8 and text8 as zips), tokenizes it once into a token file that every later run
and rank maps read-only (core/tokens.py), splits the ids 90/10 like nanoGPT (or into fixed
train/val/test sizes, as the benchmarks do), and serves:

- training batches of random windows drawn by a seeded generator (one per rank), cut from one
  tensor by indexing, with the generator state saved in checkpoints for exact resume;
- validation over the WHOLE val split in consecutive non-overlapping windows, sharded across
  ranks without padding, so the val loss is the true per-character loss of the split. A val
  split larger than data.val_sample_tokens is scored during training on a fixed, seeded
  sample of those windows (logged as val_sample/loss), and whole at the end (val/loss).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_gpt_char.core.model import GPTConfig
from lit_gpt_char.core.tokenizer import UNITS, CharTokenizer
from lit_gpt_char.core.tokens import TokenFile, file_sha256, load_tokens
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import Options, build, option

Batch = tuple[torch.Tensor, torch.Tensor]
DATA_DIR_ENV = "LIT_GPT_CHAR_DATA_DIR"


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
    unit: str = option(
        "char", "char: a token per Unicode character; byte: per UTF-8 byte (enwik8's unit)", choices=UNITS
    )
    train_size: int | None = option(
        None, "tokens in the train split (the corpus must then hold exactly train+val+test); null: the rest", ge=1
    )
    val_size: int | None = option(None, "tokens in the val split; null: by train_fraction", ge=1)
    test_size: int = option(0, "tokens held out at the end as the test split (for evaluate); 0: none", ge=0)
    val_sample_tokens: int | None = option(
        262_144,
        "a val split larger than this is scored during training on a fixed, seeded sample of about "
        "this many tokens of its windows (val_sample/loss), whole at the end (val/loss); null: always whole",
        ge=1,
    )
    cache_dir: str | None = option(None, "where the token file is kept; null: beside the corpus")


def default_data_dir() -> str:
    """Where corpora are kept unless paths.data_dir says otherwise: $LIT_GPT_CHAR_DATA_DIR, else ./data."""
    return os.environ.get(DATA_DIR_ENV) or "data"


sha256_of = file_sha256  # computed once per process for an unchanged file


def is_zip_url(url: str) -> bool:
    return urllib.parse.urlparse(url).path.lower().endswith(".zip")


def download(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Fetch url into dest atomically (temporary file, then rename), so no half file is left. A
    .zip url is an archive that holds dest's name: that member is what lands at dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    archive = None
    try:
        if is_zip_url(url):
            os.close(fd)
            fd, archive = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".zip.part")
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        if archive is not None:
            extract_member(Path(archive), dest.name, Path(tmp), url)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if archive is not None:
            Path(archive).unlink(missing_ok=True)


def extract_member(archive: Path, member: str, out: Path, source: str) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            if member not in names:
                raise UserError(f"the archive {source} holds no file {member} (it holds {', '.join(names[:5])})")
            with z.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise UserError(f"the download from {source} is not a readable zip archive ({e})") from None


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
            unzip = f", unzipped from {Path(urllib.parse.urlparse(url).path).name}," if is_zip_url(url) else ""
            raise UserError(
                f"could not download the corpus from {url} ({e}). Put the file{unzip} at {p}{check}, or pass "
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


def split_sizes(n: int, cfg: DataConfig) -> tuple[int, int, int]:
    """(train, val, test) tokens of a corpus of n tokens, in that order along the text: the test
    split is the last test_size tokens, val the val_size before it (or 1 - train_fraction of
    the rest), train what precedes (or exactly train_size)."""
    rest = n - cfg.test_size
    if cfg.train_size is not None and cfg.val_size is not None and cfg.train_size + cfg.val_size != rest:
        raise UserError(
            f"data.train_size={cfg.train_size} + data.val_size={cfg.val_size} + data.test_size={cfg.test_size} = "
            f"{cfg.train_size + cfg.val_size + cfg.test_size:,} tokens, but the corpus holds {n:,}: is it the "
            "right file? (data.train_size=null trains on all tokens before the val split)"
        )
    if cfg.val_size is not None:
        n_val = cfg.val_size
        n_train = rest - n_val if cfg.train_size is None else cfg.train_size
    elif cfg.train_size is not None:
        n_train, n_val = cfg.train_size, rest - cfg.train_size
    else:
        n_train = int(rest * cfg.train_fraction)
        n_val = rest - n_train
    if min(n_train, n_val, rest) < 0:
        asked = ", ".join(
            f"data.{k}={'null' if getattr(cfg, k) is None else getattr(cfg, k)}"
            for k in ("train_size", "val_size", "test_size")
        )
        raise UserError(f"the corpus holds {n:,} tokens, fewer than {asked} ask for: use smaller splits or more text")
    return n_train, n_val, cfg.test_size


VAL_SAMPLE_SEED = 0  # the sample of val windows is the same in every run (comparable curves)


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


class ValWindows:
    """Validation batches: the split cut into consecutive windows of block_size targets.

    Window i covers targets [i*T+1, (i+1)*T] of the split; the last one may be shorter, so
    every target of the split is scored exactly once. With several ranks, rank r takes windows
    r, r+W, r+2W, ... (no padding, no duplicates). `starts` scores only the windows starting
    there (a sample, see sample_val_starts).
    """

    def __init__(
        self,
        data: torch.Tensor,
        block_size: int,
        batch_size: int,
        max_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        starts: Sequence[int] | None = None,
    ):
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        n_targets = len(data) - 1
        starts = list(range(0, n_targets, block_size)) if starts is None else list(starts)
        if max_batches is not None:
            starts = starts[: max_batches * batch_size]
        self.starts = starts[rank::world_size]

    @property
    def num_targets(self) -> int:
        n = len(self.data) - 1
        return sum(min(self.block_size, n - s) for s in self.starts)

    def _batches(self) -> list[list[int]]:
        n = len(self.data) - 1
        full = [s for s in self.starts if s + self.block_size <= n]
        tail = [s for s in self.starts if s + self.block_size > n]
        groups = [full[i : i + self.batch_size] for i in range(0, len(full), self.batch_size)]
        return groups + [[s] for s in tail]

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[Batch]:
        for group in self._batches():
            t = min(self.block_size, len(self.data) - 1 - group[0])
            idx = torch.tensor(group)[:, None] + torch.arange(t + 1)
            w = self.data[idx].long()
            yield w[:, :-1], w[:, 1:]


class TextDataModule(L.LightningDataModule):
    """One text file as a character-level language-modelling task (Tiny Shakespeare by default).

    block_size is the model's context (model.block_size), seed the run's; data_dir defaults to
    $LIT_GPT_CHAR_DATA_DIR or ./data; the tokenizer is written to tokenizer_path if given.
    Works without a Trainer too (setup(), then train_data / val_data / test_data).
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
        self._tokens: TokenFile | None = None
        self.train_data: torch.Tensor | None = None
        self.val_data: torch.Tensor | None = None
        self.test_data: torch.Tensor | None = None

    # --- corpus and tokenizer -------------------------------------------------------------
    def prepare_data(self) -> None:
        self.corpus_path()

    def corpus_path(self) -> Path:
        """Checked (and downloaded) once per process."""
        if self._corpus is None:
            c = self.cfg
            self._corpus = ensure_corpus(c.path, self.data_dir, c.filename, c.url, c.sha256)
        return self._corpus

    def tokens(self) -> TokenFile:
        """The corpus's ids, mapped read-only from its token file (built on first use)."""
        if self._tokens is None:
            corpus = self.corpus_path()
            try:
                self._tokens = load_tokens(corpus, self.cfg.unit, self.cfg.cache_dir)
            except OSError as e:
                raise UserError(f"cannot read the corpus {corpus}: {e.strerror or e}") from None
        return self._tokens

    @property
    def tokenizer(self) -> CharTokenizer:
        """Built once from the whole corpus (every character of train, val and test)."""
        return self.tokens().tokenizer

    def split_sizes(self) -> tuple[int, int, int]:
        return split_sizes(len(self.tokens().ids), self.cfg)

    # --- splits ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        ids = self.tokens().ids
        n_train, n_val, n_test = self.split_sizes()
        need = self.block_size + 1
        for name, n in (("train", n_train), ("val", n_val)):
            if n < need:
                raise UserError(
                    f"the {name} split of {self.corpus_path()} has {n} {self.cfg.unit}s, fewer than one window "
                    f"of model.block_size+1 = {need}: use a longer text or a smaller model.block_size"
                )
        self.train_data, self.val_data = ids[:n_train], ids[n_train : n_train + n_val]
        self.test_data = ids[n_train + n_val :]
        if self.tokenizer_path and (self.trainer is None or self.trainer.is_global_zero):
            self.tokenizer.save(self.tokenizer_path)
        test = f" / test {n_test:,}" if n_test else ""
        rank_zero_info(
            f"Corpus {self.corpus_path()}: {len(ids):,} {self.cfg.unit}s, vocabulary {self.tokenizer.vocab_size}, "
            f"train {n_train:,} / val {n_val:,}{test} (token file {self.tokens().path})"
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

    def val_dataloader(self) -> ValWindows:
        rank, world = self._rank()
        c = self.cfg
        starts = None
        if self.val_tag == "val_sample":
            starts = sample_val_starts(len(self.val_data) - 1, self.block_size, c.val_sample_tokens)
        return ValWindows(
            self.val_data,
            self.block_size,
            c.val_batch_size or c.batch_size,
            c.val_max_batches,
            rank,
            world,
            starts=starts,
        )

    # --- what checkpoints record about the data (and evaluate needs) -----------------------
    def corpus_meta(self) -> dict[str, Any]:
        """Plain values: the corpus, its sha256, unit, split sizes and the data config."""
        n_train, n_val, n_test = self.split_sizes()
        tokens = self.tokens()
        return {
            "corpus": self.corpus_path().name,
            "sha256": tokens.corpus_sha256,
            "unit": self.cfg.unit,
            "tokens": len(tokens.ids),
            "splits": {"train": n_train, "val": n_val, "test": n_test},
            "data": self.cfg.to_dict(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning in every checkpoint under DATA_STATE_KEY (read it with corpus_meta_of)."""
        return self.corpus_meta() if self._tokens is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sha = state.get("sha256") if isinstance(state, dict) else None
        if sha and sha != self.tokens().corpus_sha256:
            rank_zero_warn(
                f"resuming on another corpus than the checkpoint was trained on ({state.get('corpus')}, "
                f"sha256 {sha[:12]}...; now {self.corpus_path().name}, {self.tokens().corpus_sha256[:12]}...)"
            )


DATA_STATE_KEY = TextDataModule.__qualname__  # where Lightning puts TextDataModule.state_dict() in a checkpoint


def corpus_meta_of(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a training checkpoint records about its data (TextDataModule.corpus_meta); None for
    checkpoints written before it did."""
    meta = checkpoint.get(DATA_STATE_KEY)
    return meta if isinstance(meta, dict) and meta else None


@dataclass
class Split:
    """The ids of one split of a corpus, and what they were made with."""

    name: str
    ids: torch.Tensor  # 1-D, mapped read-only from the token file
    tokenizer: CharTokenizer
    meta: dict[str, Any]  # TextDataModule.corpus_meta()


def split_ids(
    data: DataConfig | Mapping[str, Any] | None, split: str, data_dir: str | None = None, block_size: int = 1
) -> Split:
    """The token ids of split `split` (train, val or test) of the corpus `data` describes, with
    no Trainer: downloaded, checked and tokenized as training does, so evaluate scores exactly the
    split training held out. block_size: the model's, so a split shorter than a window is refused."""
    if split not in ("train", "val", "test"):
        raise UserError(f"split={split}: must be one of train, val, test")
    dm = TextDataModule(data, block_size=block_size, data_dir=data_dir)
    dm.setup()
    ids = {"train": dm.train_data, "val": dm.val_data, "test": dm.test_data}[split]
    if split == "test" and len(ids) < 2:
        raise UserError(
            f"data.test_size={dm.cfg.test_size}: this data config holds out no test split: set data.test_size=N "
            "(tokens at the end of the corpus, taken from training) or use a benchmark config (data=enwik8, data=text8)"
        )
    return Split(split, ids, dm.tokenizer, dm.corpus_meta())
