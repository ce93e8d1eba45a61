"""A corpus as a token file: tokenized once, then memory-mapped by every run, rank and evaluation.

The first use reads the corpus in chunks, never the whole text as one Python string: one pass
finds the vocabulary (and checks that the text is UTF-8), a second encodes each chunk with
vectorised table look-ups into a compact file of ids (1 byte per token when the vocabulary has
at most 256 entries, else 2, or 4 past 65,536) kept beside the corpus or in a cache directory.
Later uses check the corpus's sha256 and the file's own checksum and map the ids read-only, so
every process shares one copy through the page cache and a start costs two checksum passes.
Where the corpus's directory is read-only, the file goes to $XDG_CACHE_HOME/lit-gpt-char.

File layout: ``MAGIC`` (8 bytes), the payload offset (uint64, little-endian), a JSON header
(padded with spaces), then the ids, little-endian, from that offset. The header records the
corpus's sha256 and size, the unit, the vocabulary, the dtype, the number of ids and their
CRC-32. A file whose header or size does not add up, or whose ids fail the CRC, is corrupt; one
made from other bytes, another unit or vocabulary, or an older layout is stale; either is
rebuilt. Builds write a temporary file that replaces the cache only once complete, under a lock,
so concurrent first runs (or DDP ranks) build it once and a killed build leaves nothing trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from filelock import FileLock, Timeout

from lit_gpt_char.core.tokenizer import CharTokenizer, UnknownCharactersError
from lit_gpt_char.errors import UserError
from lit_gpt_char.files import atomic_file

log = logging.getLogger(__name__)

MAGIC = b"LGCTOK\x00\x01"
VERSION = 1
# Bytes of corpus per step. Small, so the decoded text of a step stays in malloc's heap: a larger
# one is mapped and faulted in afresh each time, which costs more than the decoding.
CHUNK = 1 << 16
ALIGN = 64  # the ids start at a multiple of this
MAX_CODE_POINT = 0x110000
DTYPES = {"uint8": (np.uint8, torch.uint8), "uint16": (np.uint16, torch.uint16), "int32": (np.int32, torch.int32)}


@dataclass
class TokenFile:
    """A corpus's ids, mapped read-only, with the tokenizer they were made with."""

    path: Path
    tokenizer: CharTokenizer
    ids: torch.Tensor  # 1-D, backed by the file: slicing it copies nothing
    corpus_sha256: str
    corpus_bytes: int


# --- checksums ------------------------------------------------------------------------------------
def _sha256_uncached(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


@functools.lru_cache(maxsize=32)
def _sha256_memo(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return _sha256_uncached(Path(path))


def file_sha256(path: str | Path) -> str:
    """The file's sha256, computed once per process for a file that has not changed since."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha256_memo(str(p), st.st_size, st.st_mtime_ns, st.st_ino)


def _payload_crc(f: BinaryIO, offset: int, nbytes: int) -> int:
    """CRC-32 of nbytes from offset, read (not mapped) so the pages never count in the RSS."""
    f.seek(offset)
    crc, left = 0, nbytes
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while left:
        n = f.readinto(view[: min(left, CHUNK)])
        if not n:
            break
        crc = zlib.crc32(view[:n], crc)
        left -= n
    return crc if not left else -1


# --- where the cache lives ------------------------------------------------------------------------
def user_cache_dir() -> Path:
    """Where token files go when the corpus's own directory is read-only: $XDG_CACHE_HOME/lit-gpt-char."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "lit-gpt-char"


def writable(folder: Path) -> bool:
    """Whether we may add files to folder. A directory without write bits counts as read-only even
    for root, who could write anyway: a shared data directory marked so is left as it is."""
    try:
        return os.access(folder, os.W_OK) and (os.geteuid() != 0 or bool(folder.stat().st_mode & 0o222))
    except OSError:
        return False


def token_file_path(
    corpus: Path, unit: str, cache_dir: str | Path | None = None, sha256: str = "", vocab: Sequence[str] | None = None
) -> Path:
    """Beside the corpus: <name>.<unit>.tokens (one cache per corpus, replaced when stale). In a
    cache directory, which may hold corpora of one name from several places, the name carries the
    start of the corpus's sha256 too. A vocabulary given by the caller adds a hash of it."""
    name = corpus.name
    if cache_dir is not None:
        name += f".{sha256[:16]}"
    name += f".{unit}"
    if vocab is not None:
        name += "." + hashlib.sha256(json.dumps(list(vocab)).encode()).hexdigest()[:12]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else corpus.parent
    return folder / f"{name}.tokens"


# --- reading ------------------------------------------------------------------------------------------
def open_token_file(
    path: Path, sha256: str, unit: str, vocab: Sequence[str] | None = None
) -> tuple[TokenFile | None, str]:
    """(the mapped file, "") if it is a sound cache of that corpus; else (None, why not)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(16)
            if len(head) < 16 or head[:8] != MAGIC:
                return None, "corrupt: not a token file"
            (offset,) = struct.unpack("<Q", head[8:])
            if not 16 < offset <= min(size, 1 << 26):
                return None, "corrupt: bad header"
            try:
                meta = json.loads(f.read(offset - 16).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                return None, "corrupt: bad header"
            if not isinstance(meta, dict) or meta.get("version") != VERSION:
                return None, "stale: an older layout"
            if meta.get("corpus_sha256") != sha256:
                return None, "stale: the corpus has changed"
            if meta.get("unit") != unit:
                return None, f"stale: made for unit={meta.get('unit')}"
            if vocab is not None and meta.get("vocab") != list(vocab):
                return None, "stale: made with another vocabulary"
            if meta.get("dtype") not in DTYPES or not isinstance(meta.get("count"), int) or meta["count"] < 1:
                return None, "corrupt: bad header"
            np_dtype, _ = DTYPES[meta["dtype"]]
            nbytes = meta["count"] * np.dtype(np_dtype).itemsize
            if size != offset + nbytes:
                return None, f"corrupt: {size:,} bytes where the header says {offset + nbytes:,}"
            if _payload_crc(f, offset, nbytes) != meta.get("crc32"):
                return None, "corrupt: the ids fail their checksum"
        tokenizer = CharTokenizer(meta["vocab"], unit)
        corpus_bytes = int(meta["corpus_bytes"])
    except FileNotFoundError:
        return None, "not built yet"
    except (OSError, UserError, TypeError, KeyError, ValueError) as e:
        return None, f"corrupt: {e}"
    array = np.memmap(path, dtype=np_dtype, mode="r", offset=offset, shape=(meta["count"],))
    with warnings.catch_warnings():
        # The map is read-only (a write would fault, not change the cache); torch warns that it
        # cannot mark tensors read-only.
        warnings.simplefilter("ignore", UserWarning)
        ids = torch.from_numpy(array)
    return TokenFile(path, tokenizer, ids, sha256, corpus_bytes), ""


# --- building ---------------------------------------------------------------------------------------
def _chunks(f: BinaryIO, unit: str) -> Iterator[tuple[bytes, int]]:
    """(chunk, offset of its first byte) over the file; for unit=char each chunk ends on a
    character boundary (a character cut by the chunk size moves on to the next chunk)."""
    carry, offset = b"", 0
    while True:
        block = f.read(CHUNK)
        if not block:
            if carry:
                yield carry, offset  # an incomplete character at the very end: decoding says where
            return
        buf = carry + block if carry else block
        cut = len(buf)
        if unit == "char" and buf[-1] >= 0x80:
            i = len(buf) - 1
            while i > len(buf) - 4 and i > 0 and buf[i] & 0xC0 == 0x80:  # continuation bytes
                i -= 1
            if buf[i] >= 0xC0:  # the lead byte of the last character: keep it for the next chunk
                cut = i
        yield buf[:cut], offset
        carry, offset = buf[cut:], offset + cut


def _code_points(chunk: bytes, offset: int, corpus: Path, key: Callable[[str], str] = str) -> np.ndarray:
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        at = offset + e.start
        raise UserError(
            f"the corpus {corpus} is not UTF-8 text (bad byte at offset {at}): convert it, e.g. iconv -f "
            f"latin1 -t utf-8 {corpus.name} > {corpus.stem}.utf8.txt, or train on its bytes: {key('unit')}=byte"
        ) from None
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


ASCII, HIGH = bytes(range(128)), bytes(range(128, 256))


def scan_vocabulary(corpus: Path, unit: str = "char", key: Callable[[str], str] = str) -> list[str]:
    """The corpus's sorted characters (or byte values, as characters), read chunk by chunk.

    Each chunk is first stripped of the single bytes already seen (one bytes.translate pass);
    what is left is usually tiny. The bytes of a multi-byte UTF-8 character are all >= 0x80, so
    the high bytes left are whole characters: only they are decoded here. The full check that
    the text is UTF-8 comes with the encoding pass, which decodes every chunk.
    """
    seen = np.zeros(256 if unit == "byte" else MAX_CODE_POINT, dtype=bool)
    single = bytearray()  # byte values seen as whole tokens: every byte (byte), ASCII ones (char)
    with open(corpus, "rb") as f:
        for chunk, offset in _chunks(f, unit):
            rest = chunk.translate(None, single)
            if not rest:
                continue
            new = set(rest if unit == "byte" else rest.translate(None, HIGH))
            single.extend(sorted(new))
            seen[list(new)] = True
            if unit == "byte" or rest.isascii():
                continue
            try:
                cps = np.frombuffer(rest.translate(None, ASCII).decode("utf-8").encode("utf-32-le"), dtype=np.uint32)
            except UnicodeDecodeError:
                _code_points(chunk, offset, corpus, key)  # raises, naming the offset in the file
                raise
            seen[np.flatnonzero(np.bincount(cps))] = True
    return [chr(c) for c in np.flatnonzero(seen)]


def _dtype_for(vocab_size: int) -> str:
    return "uint8" if vocab_size <= 256 else "uint16" if vocab_size <= 65536 else "int32"


class _Encoder:
    """Chunks of the corpus -> ids, by table look-ups (bytes.translate where a byte maps to a byte)."""

    def __init__(self, tokenizer: CharTokenizer, dtype: str, corpus: Path, given: bool, key: Callable[[str], str]):
        # given: the vocabulary came from the caller, so the text may hold characters outside it
        # (a vocabulary read off the corpus holds them all, unless the corpus changes meanwhile,
        # which the build's sha256 check catches).
        self.given, self.key = given, key
        self.corpus, self.unit, self.tokenizer = corpus, tokenizer.unit, tokenizer
        size = 256 if tokenizer.unit == "byte" else MAX_CODE_POINT
        self.lut = np.zeros(size, dtype=DTYPES[dtype][0])  # code point (or byte) -> id
        self.known = np.zeros(size, dtype=bool)
        for i, c in enumerate(tokenizer.chars):
            self.lut[ord(c)], self.known[ord(c)] = i, True
        self.known_bytes = bytes(np.flatnonzero(self.known[:256]).tolist())
        self.table = self.lut[:256].tobytes() if dtype == "uint8" else None

    def __call__(self, chunk: bytes, offset: int) -> memoryview:
        """The ids of chunk's tokens, as bytes of the file's dtype."""
        if self.unit == "byte" or chunk.isascii():
            if self.given and chunk.translate(None, self.known_bytes):  # a byte outside the vocabulary
                self._unknown(chunk)
            if self.table is not None:
                return memoryview(chunk.translate(self.table))
            return memoryview(np.take(self.lut[:256], np.frombuffer(chunk, dtype=np.uint8))).cast("B")
        cps = _code_points(chunk, offset, self.corpus, self.key)
        if self.given and not np.take(self.known, cps).all():
            self._unknown(chunk)
        return memoryview(np.take(self.lut, cps)).cast("B")

    def _unknown(self, chunk: bytes) -> None:
        text = chunk.decode("utf-8", errors="replace") if self.unit == "char" else chunk.decode("latin-1")
        chars = self.tokenizer.unknown(text) if self.unit == "char" else sorted(set(text) - self.tokenizer.stoi.keys())
        raise UnknownCharactersError(chars)


def _header(meta: dict, offset: int | None = None) -> bytes:
    body = json.dumps(meta, ensure_ascii=True).encode()
    if offset is None:
        offset = -(-(16 + len(body)) // ALIGN) * ALIGN
    return MAGIC + struct.pack("<Q", offset) + body + b" " * (offset - 16 - len(body))


def build_token_file(
    corpus: Path,
    path: Path,
    unit: str,
    sha256: str,
    vocab: Sequence[str] | None = None,
    key: Callable[[str], str] = str,
) -> None:
    """Tokenize the corpus into `path` (temporary file, fsync, rename): path is never half written.
    key(option) is how errors name an option (CorpusConfig.key: data.unit on the train command)."""
    given = vocab is not None
    if vocab is None:
        vocab = scan_vocabulary(corpus, unit, key)
    empty = f"the corpus {corpus} is empty: pass {key('path')}= a file with text in it"
    if not vocab:
        raise UserError(empty)
    tokenizer = CharTokenizer(list(vocab), unit)
    dtype = _dtype_for(len(vocab))
    encode = _Encoder(tokenizer, dtype, corpus, given, key)
    meta = {
        "version": VERSION,
        "corpus": corpus.name,
        "corpus_sha256": sha256,
        "corpus_bytes": 0,
        "unit": unit,
        "dtype": dtype,
        "count": 10**19,  # placeholders as wide as any real value: the header's size is fixed now
        "crc32": 0xFFFFFFFF,
        "vocab": list(vocab),
    }
    head = _header(meta)
    offset = struct.unpack("<Q", head[8:16])[0]
    with atomic_file(path, suffix=".part") as out, open(corpus, "rb") as f:  # a killed build leaves a .part
        out.write(head)
        crc, count, h, nbytes = 0, 0, hashlib.sha256(), 0
        for chunk, start in _chunks(f, unit):
            h.update(chunk)
            ids = encode(chunk, start)
            crc = zlib.crc32(ids, crc)
            count += len(ids) // np.dtype(DTYPES[dtype][0]).itemsize
            nbytes += len(chunk)
            out.write(ids)
        if h.hexdigest() != sha256:
            raise UserError(f"the corpus {corpus} changed while it was being tokenized: run again")
        if count == 0:
            raise UserError(empty)
        meta.update(count=count, crc32=crc, corpus_bytes=nbytes)
        out.seek(0)
        out.write(_header(meta, offset))


def load_tokens(
    corpus: str | Path,
    unit: str = "char",
    cache_dir: str | Path | None = None,
    vocab: Sequence[str] | None = None,
    sha256: str | None = None,
    key: Callable[[str], str] = str,
) -> TokenFile:
    """The corpus's token file, built first if there is none or it is stale or corrupt.

    vocab: encode with this vocabulary (sorted characters, or byte values as characters)
    instead of the corpus's own; a character outside it is an error. sha256: the corpus's, if
    the caller already knows it. key(option): how errors name an option (CorpusConfig.key).
    """
    corpus = Path(corpus)
    t0 = time.perf_counter()
    sha = sha256 or file_sha256(corpus)
    if cache_dir is None and not writable(corpus.parent):
        tokens, _ = open_token_file(token_file_path(corpus, unit, None, sha, vocab), sha, unit, vocab)
        if tokens is not None:
            return tokens  # built beside the corpus by whoever may write there
        cache_dir = user_cache_dir()
    path = token_file_path(corpus, unit, cache_dir, sha, vocab)
    tokens, why = open_token_file(path, sha, unit, vocab)
    if tokens is not None:
        return tokens
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path.parent / f".{path.name}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info(f"Waiting for another process that is tokenizing {corpus} into {path}")
            lock.acquire()
    except OSError as e:
        where = key("cache_dir") if cache_dir is not None else "the corpus's directory"
        raise UserError(
            f"cannot write the token cache {path} ({e.strerror or e}): {where} must be writable; "
            f"pass {key('cache_dir')}=DIR to keep it elsewhere"
        ) from None
    try:
        tokens, why = open_token_file(path, sha, unit, vocab)  # built by another process meanwhile?
        if tokens is not None:
            return tokens
        for stale in path.parent.glob(f".{path.name}.*.part"):  # left by a killed build
            stale.unlink(missing_ok=True)
        log.info(f"Tokenizing {corpus} into {path} ({why})")
        try:
            build_token_file(corpus, path, unit, sha, vocab, key)
        except PermissionError as e:
            raise UserError(
                f"cannot write the token cache {path} ({e.strerror}): pass {key('cache_dir')}=DIR to keep it elsewhere"
            ) from None
    finally:
        lock.release()
    tokens, why = open_token_file(path, sha, unit, vocab)
    if tokens is None:
        raise RuntimeError(f"the token file {path} just built does not check out: {why}")
    dt, mb = time.perf_counter() - t0, tokens.corpus_bytes / 1e6
    log.info(
        f"Tokenized {corpus} ({mb:,.1f} MB) into {path}: {len(tokens.ids):,} tokens, vocabulary "
        f"{tokens.tokenizer.vocab_size}, {dt:.1f} s with the checksums ({mb / max(dt, 1e-9):,.0f} MB/s)"
    )
    return tokens
