"""A corpus as token ids, and its splits: what training and `evaluate` both read, without Lightning.

`Corpus` takes one UTF-8 text file (Tiny Shakespeare, downloaded on first use, by default;
enwik8 and text8 as zips), checks it by sha256, tokenizes it once into a token file that every
later run, rank and evaluation maps read-only (core/tokens.py), and cuts the ids into train, val
and test splits: 90/10 by default like nanoGPT, or fixed sizes, as the benchmarks do. `meta()` is
what a checkpoint records of it (the data config, the file, its sha256, the split sizes), so that
`split_ids` can cut the very same split again for `evaluate`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from lit_gpt_char.core.tokenizer import UNITS, CharTokenizer
from lit_gpt_char.core.tokens import TokenFile, file_sha256, load_tokens
from lit_gpt_char.errors import UserError
from lit_gpt_char.files import atomic_file
from lit_gpt_char.options import Options, build, option

DATA_DIR_ENV = "LIT_GPT_CHAR_DATA_DIR"
SPLITS = ("train", "val", "test")


@dataclass
class CorpusConfig(Options):
    """Which text, and how it is cut into batches. The defaults are Tiny Shakespeare's, downloaded on
    first use and checked by sha256; `path` trains on any UTF-8 text. Errors name the fields as they
    are (path=...); the train command's DataConfig names its keys (data.path=...)."""

    path: str | None = option(None, "your own UTF-8 text file; null: the corpus named by url/filename below")
    filename: str = option("tinyshakespeare.txt", "the corpus's file name in the data directory")
    url: str | None = option(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "where the corpus is downloaded from when it is not in the data directory; null: never (path is then required)",
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
    train_sample_chars: int | None = option(
        None,
        "characters of the fixed, seeded sample of training windows scored at each validation "
        "(logged as train/split_loss); null: as many as validation scores; 0: none",
        ge=0,
    )


def default_data_dir() -> str:
    """Where corpora are kept unless paths.data_dir says otherwise: $LIT_GPT_CHAR_DATA_DIR, else ./data."""
    return os.environ.get(DATA_DIR_ENV) or "data"


sha256_of = file_sha256  # computed once per process for an unchanged file


def is_zip_url(url: str) -> bool:
    return urllib.parse.urlparse(url).path.lower().endswith(".zip")


def download(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Fetch url into dest atomically (temporary file, then rename), so no half file is left. A
    .zip url is an archive that holds dest's name: that member is what lands at dest."""
    archive = None
    try:
        with atomic_file(dest, suffix=".part") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            if not is_zip_url(url):
                shutil.copyfileobj(resp, out)
            else:
                fd, archive = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".zip.part")
                with os.fdopen(fd, "wb") as a:
                    shutil.copyfileobj(resp, a)
                extract_member(Path(archive), dest.name, out, url)
    finally:
        if archive is not None:
            Path(archive).unlink(missing_ok=True)


def extract_member(archive: Path, member: str, out: IO[bytes], source: str) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            if member not in names:
                raise UserError(f"the archive {source} holds no file {member} (it holds {', '.join(names[:5])})")
            with z.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise UserError(f"the download from {source} is not a readable zip archive ({e})") from None


def ensure_corpus(
    path: str | Path | None,
    data_dir: str | Path,
    filename: str,
    url: str | None,
    sha256: str | None,
    key: Callable[[str], str] = str,
) -> Path:
    """The corpus file to train on: `path` as given, or data_dir/filename, downloaded from url if missing.

    The checksum guards the downloaded corpus only; a file passed as `path` is the user's own
    text and is taken as it is. key(option) is how errors name an option (CorpusConfig.key).
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"{key('path')}={path}: does not exist or is not a file: pass a UTF-8 text file's path")
        return p
    if url is None:
        raise UserError(f"{key('path')} is required: pass {key('path')}=FILE (a UTF-8 text file)")
    p = Path(data_dir).expanduser() / filename
    if not p.is_file():
        print(f"Downloading {url} -> {p}", file=sys.stderr, flush=True)
        try:
            download(url, p)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            check = f" (sha256 {sha256})" if sha256 else ""
            unzip = f", unzipped from {Path(urllib.parse.urlparse(url).path).name}," if is_zip_url(url) else ""
            raise UserError(
                f"could not download the corpus from {url} ({e}). Put the file{unzip} at {p}{check}, or pass "
                f"{key('path')}=/path/to/text.txt to train on another UTF-8 text file."
            ) from None
    if sha256:
        got = sha256_of(p)
        if got != sha256:
            raise UserError(
                f"checksum mismatch for {p}: sha256 {got}, expected {sha256}. The file is damaged "
                f"or not the expected corpus: delete it to download it again, or pass {key('path')}=... "
                "to train on it as your own text."
            )
    return p


def split_sizes(n: int, cfg: CorpusConfig) -> tuple[int, int, int]:
    """(train, val, test) tokens of a corpus of n tokens, in that order along the text: the test
    split is the last test_size tokens, val the val_size before it (or 1 - train_fraction of
    the rest), train what precedes (or exactly train_size)."""
    rest = n - cfg.test_size
    if cfg.train_size is not None and cfg.val_size is not None and cfg.train_size + cfg.val_size != rest:
        raise UserError(
            f"{cfg.key('train_size')}={cfg.train_size} + {cfg.key('val_size')}={cfg.val_size} + "
            f"{cfg.key('test_size')}={cfg.test_size} = {cfg.train_size + cfg.val_size + cfg.test_size:,} tokens, "
            f"but the corpus holds {n:,}: is it the right file? ({cfg.key('train_size')}=null trains on all "
            "tokens before the val split)"
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
            f"{cfg.key(k)}={'null' if getattr(cfg, k) is None else getattr(cfg, k)}"
            for k in ("train_size", "val_size", "test_size")
        )
        raise UserError(f"the corpus holds {n:,} tokens, fewer than {asked} ask for: use smaller splits or more text")
    return n_train, n_val, cfg.test_size


class Corpus:
    """One corpus as token ids: checked (and downloaded) once, tokenized once, split on demand.

    data_dir defaults to $LIT_GPT_CHAR_DATA_DIR or ./data (where the config's filename is looked for).
    """

    def __init__(self, data: CorpusConfig | Mapping[str, Any] | None = None, data_dir: str | None = None):
        self.cfg = data if isinstance(data, CorpusConfig) else build(CorpusConfig, data)
        self.data_dir = data_dir or default_data_dir()
        self._path: Path | None = None
        self._tokens: TokenFile | None = None

    def path(self) -> Path:
        """The corpus file, checked (and downloaded) once per process."""
        if self._path is None:
            c = self.cfg
            self._path = ensure_corpus(c.path, self.data_dir, c.filename, c.url, c.sha256, c.key)
        return self._path

    def tokens(self) -> TokenFile:
        """The corpus's ids, mapped read-only from its token file (built on first use)."""
        if self._tokens is None:
            path = self.path()
            try:
                self._tokens = load_tokens(path, self.cfg.unit, self.cfg.cache_dir, key=self.cfg.key)
            except OSError as e:
                raise UserError(f"cannot read the corpus {path}: {e.strerror or e}") from None
        return self._tokens

    @property
    def loaded(self) -> bool:
        return self._tokens is not None

    @property
    def tokenizer(self) -> CharTokenizer:
        """Built once from the whole corpus (every character of train, val and test)."""
        return self.tokens().tokenizer

    def split_sizes(self) -> tuple[int, int, int]:
        return split_sizes(len(self.tokens().ids), self.cfg)

    def splits(self) -> dict[str, torch.Tensor]:
        """The ids of train, val and test, in that order along the text (views of the token file)."""
        ids = self.tokens().ids
        n_train, n_val, _ = self.split_sizes()
        return {"train": ids[:n_train], "val": ids[n_train : n_train + n_val], "test": ids[n_train + n_val :]}

    def meta(self) -> dict[str, Any]:
        """Plain values a checkpoint keeps: the data config (its path made absolute), the file,
        its sha256, unit, size and split sizes."""
        n_train, n_val, n_test = self.split_sizes()
        tokens, path = self.tokens(), self.path().resolve()
        data = self.cfg.to_dict()
        if data.get("path"):
            data["path"] = str(path)
        return {
            "corpus": path.name,
            "file": str(path),
            "sha256": tokens.corpus_sha256,
            "unit": self.cfg.unit,
            "tokens": len(tokens.ids),
            "splits": {"train": n_train, "val": n_val, "test": n_test},
            "data": data,
        }


@dataclass
class Split:
    """The ids of one split of a corpus, and what they were made with."""

    name: str
    ids: torch.Tensor  # 1-D, mapped read-only from the token file
    tokenizer: CharTokenizer
    meta: dict[str, Any]  # Corpus.meta()


def split_ids(data: CorpusConfig | Mapping[str, Any] | None, split: str, data_dir: str | None = None) -> Split:
    """The token ids of split `split` (train, val or test) of the corpus `data` describes:
    downloaded, checked and tokenized as training does, so evaluate scores exactly the split
    training held out."""
    if split not in SPLITS:
        raise UserError(f"split={split}: must be one of {', '.join(SPLITS)}")
    corpus = Corpus(data, data_dir)
    ids = corpus.splits()[split]
    if len(ids) < 2:
        c = corpus.cfg
        if split == "test":
            raise UserError(
                f"{c.key('test_size')}={c.test_size}: this corpus config holds out no test split: set "
                f"{c.key('test_size')} to N tokens (the end of the corpus, taken from training)"
            )
        raise UserError(f"split={split}: the corpus's {split} split holds {len(ids)} tokens: nothing to score")
    return Split(split, ids, corpus.tokenizer, corpus.meta())
