"""Characters <-> integer ids, saved as JSON in the seed project's format.

The vocabulary is the sorted set of characters of the training corpus. The JSON file looks
like ``{"char_to_integer": {"a": 0, ...}, "integer_to_char": {"0": "a", ...}}`` so files
written by the original Mini-GPT notebook load unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from lit_gpt_char.errors import UserError


class UnknownCharactersError(UserError):
    """Text holds characters the tokenizer has never seen; `chars` lists them."""

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        shown = ", ".join(repr(c) for c in self.chars[:20])
        more = f" and {len(self.chars) - 20} more" if len(self.chars) > 20 else ""
        super().__init__(
            f"{len(self.chars)} character(s) not in the vocabulary: {shown}{more}. "
            "Remove them from the text, or train on a corpus that contains them."
        )


class CharTokenizer:
    """A character-level tokenizer: id i is the i-th character of `chars`."""

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise UserError(f"vocabulary entries must be single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise UserError(f"vocabulary has duplicate characters: {dup!r}")
        if not chars:
            raise UserError("vocabulary is empty: the corpus has no characters")
        self.chars: list[str] = chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` outside the vocabulary, sorted, each once."""
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            raise UnknownCharactersError(self.unknown(text)) from None

    def encode_tensor(self, text: str) -> torch.Tensor:
        """The whole text as one 1-D tensor in the smallest integer dtype that holds the ids."""
        dtype = torch.uint8 if self.vocab_size <= 256 else torch.int32
        return torch.tensor(self.encode(text), dtype=dtype)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)

    # --- the seed's JSON format -------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, int] | dict[str, str]]:
        return {
            "char_to_integer": {c: i for i, c in enumerate(self.chars)},
            "integer_to_char": {str(i): c for i, c in enumerate(self.chars)},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> CharTokenizer:
        """Validate a seed-format mapping: single characters <-> distinct ids 0..V-1, both ways agreeing."""
        if not isinstance(data, Mapping) or "char_to_integer" not in data:
            raise UserError(
                "not a tokenizer file: expected a JSON object with 'char_to_integer' (and 'integer_to_char')"
            )
        c2i = data["char_to_integer"]
        if not isinstance(c2i, Mapping) or not c2i:
            raise UserError("'char_to_integer' must be a non-empty mapping of characters to ids")
        for c, i in c2i.items():
            if not isinstance(c, str) or len(c) != 1:
                raise UserError(f"'char_to_integer' key {c!r} is not a single character")
            if not isinstance(i, int) or isinstance(i, bool):
                raise UserError(f"'char_to_integer'[{c!r}] = {i!r} is not an integer id")
        ids = sorted(c2i.values())
        if ids != list(range(len(c2i))):
            raise UserError(f"'char_to_integer' ids must be distinct and exactly 0..{len(c2i) - 1}")
        chars = [""] * len(c2i)
        for c, i in c2i.items():
            chars[i] = c
        i2c = data.get("integer_to_char")
        if i2c is not None:
            expected = {str(i): c for i, c in enumerate(chars)}
            if not isinstance(i2c, Mapping) or {str(k): v for k, v in i2c.items()} != expected:
                raise UserError("'integer_to_char' does not agree with 'char_to_integer'")
        return cls(chars)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"tokenizer file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"tokenizer file {path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(data)
        except UserError as e:
            raise UserError(f"tokenizer file {path}: {e}") from None
