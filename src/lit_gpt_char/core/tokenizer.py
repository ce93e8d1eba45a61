"""Characters (or UTF-8 bytes) <-> integer ids, saved as JSON in the seed project's format.

The vocabulary is the sorted set of characters of the training corpus. The JSON file looks
like ``{"char_to_integer": {"a": 0, ...}, "integer_to_char": {"0": "a", ...}, "unit": "char"}``
so files written by the original Mini-GPT notebook (which have no "unit") load unchanged.

With ``unit="byte"`` the tokens are the UTF-8 bytes of the text (enwik8's standard unit): the
vocabulary holds the corpus's byte values, each written as the character of that code point
(byte 0xC3 as "\u00c3"), so the JSON keeps the seed's shape. Text is encoded as UTF-8 and ids
decode back to text with invalid or cut-off sequences replaced, never an exception.
"""

from __future__ import annotations

import codecs
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


UNITS = ("char", "byte")


def text_units(text: str, unit: str) -> str:
    """`text` as the sequence of tokens a tokenizer of `unit` counts: the text itself (char), or
    its UTF-8 bytes, each as the character of that code point (byte)."""
    return text if unit == "char" else text.encode("utf-8").decode("latin-1")


class CharTokenizer:
    """A character-level tokenizer: id i is the i-th character of `chars`.

    unit="byte": id i is the byte ord(chars[i]) of the text's UTF-8 encoding instead.
    """

    def __init__(self, chars: Sequence[str], unit: str = "char"):
        chars = list(chars)
        if unit not in UNITS:
            raise UserError(f"tokenizer unit {unit!r}: must be one of {', '.join(UNITS)}")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise UserError(f"vocabulary entries must be single characters, got {bad[:5]!r}")
        if unit == "byte" and any(ord(c) > 255 for c in chars):
            raise UserError("a byte vocabulary holds the characters U+0000..U+00FF only (one per byte value)")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise UserError(f"vocabulary has duplicate characters: {dup!r}")
        if not chars:
            raise UserError("vocabulary is empty: the corpus has no characters")
        self.chars: list[str] = chars
        self.unit = unit
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, unit: str = "char") -> CharTokenizer:
        return cls(sorted(set(text_units(text, unit))), unit)

    def units(self, text: str) -> str:
        """The text as the sequence of tokens this tokenizer counts (see text_units)."""
        return text_units(text, self.unit)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars and other.unit == self.unit

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unit={self.unit!r})"

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` the vocabulary cannot encode (in byte mode: characters with a UTF-8
        byte outside it), sorted, each once."""
        if self.unit == "char":
            return sorted(set(text) - self.stoi.keys())
        return sorted(c for c in set(text) if not set(self.units(c)) <= self.stoi.keys())

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in self.units(text)]
        except KeyError:
            raise UnknownCharactersError(self.unknown(text)) from None

    def encode_tensor(self, text: str) -> torch.Tensor:
        """The whole text as one 1-D tensor in the smallest integer dtype that holds the ids."""
        dtype = torch.uint8 if self.vocab_size <= 256 else torch.int32
        return torch.tensor(self.encode(text), dtype=dtype)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of `ids`; in byte mode, invalid or incomplete UTF-8 becomes U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        text = "".join(self.chars[i] for i in ids)
        return text if self.unit == "char" else text.encode("latin-1").decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        """A decoder for ids that arrive one at a time (sampling); see StreamDecoder."""
        return StreamDecoder(self)

    # --- the seed's JSON format -------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, int] | dict[str, str] | str]:
        return {
            "char_to_integer": {c: i for i, c in enumerate(self.chars)},
            "integer_to_char": {str(i): c for i, c in enumerate(self.chars)},
            "unit": self.unit,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> CharTokenizer:
        """Validate a seed-format mapping: single characters <-> distinct ids 0..V-1, both ways agreeing,
        and the unit (absent in the seed's files: char)."""
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
        unit = data.get("unit", "char")
        if unit not in UNITS:
            raise UserError(f"'unit' is {unit!r}: must be one of {', '.join(UNITS)}")
        return cls(chars, unit)

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


class StreamDecoder:
    """Text from ids that arrive one at a time. In byte mode the bytes of a character are held
    until the character is complete, so a stream never shows half a character; an invalid
    sequence becomes U+FFFD. `flush()` at the end returns what is still held (as U+FFFD)."""

    def __init__(self, tokenizer: CharTokenizer):
        self._chars = tokenizer.chars
        self._bytes = None
        if tokenizer.unit == "byte":
            self._bytes = [bytes((ord(c),)) for c in tokenizer.chars]
            self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, i: int) -> str:
        """The text that id i completes ('' while a character is still incomplete)."""
        return self._chars[i] if self._bytes is None else self._utf8.decode(self._bytes[i])

    def flush(self) -> str:
        return "" if self._bytes is None else self._utf8.decode(b"", final=True)
