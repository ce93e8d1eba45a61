import json

import pytest

from lit_gpt_char.core.tokenizer import CharTokenizer, UnknownCharactersError
from lit_gpt_char.errors import UserError


def test_round_trip_and_sorted_vocabulary():
    tok = CharTokenizer.from_text("hello world\n")
    assert tok.chars == sorted(set("hello world\n"))
    assert tok.decode(tok.encode("low held")) == "low held"
    assert tok.encode("d") == [tok.chars.index("d")]


def test_save_load_seed_format(tmp_path):
    tok = CharTokenizer.from_text("abc\n")
    path = tok.save(tmp_path / "tokenizer.json")
    data = json.loads(path.read_text())
    assert data == {
        "char_to_integer": {"\n": 0, "a": 1, "b": 2, "c": 3},
        "integer_to_char": {"0": "\n", "1": "a", "2": "b", "3": "c"},
        "unit": "char",  # the seed's two keys as they were, plus the unit
    }
    assert CharTokenizer.load(path) == tok


def test_loads_a_file_written_by_the_seed(tmp_path):
    # The notebook wrote its dicts with json.dump: ids as ints one way, string keys the other.
    chars = sorted(set("To be, or not to be"))
    (tmp_path / "seed.json").write_text(
        json.dumps(
            {
                "char_to_integer": {c: i for i, c in enumerate(chars)},
                "integer_to_char": dict(enumerate(chars)),
            }
        )
    )
    tok = CharTokenizer.load(tmp_path / "seed.json")
    assert tok.decode(tok.encode("not to be")) == "not to be"


def test_unknown_characters_are_listed():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UnknownCharactersError) as e:
        tok.encode("abxcyx")
    assert e.value.chars == ["x", "y"]
    assert "'x'" in str(e.value) and "'y'" in str(e.value)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"foo": 1}, "not a tokenizer file"),
        ({"char_to_integer": {"ab": 0}}, "not a single character"),
        ({"char_to_integer": {"a": 0, "b": 0}}, "distinct"),
        ({"char_to_integer": {"a": 0, "b": 2}}, "distinct"),
        ({"char_to_integer": {"a": 0, "b": 1}, "integer_to_char": {"0": "b", "1": "a"}}, "does not agree"),
    ],
)
def test_invalid_tokenizer_files_are_refused(tmp_path, data, message):
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        CharTokenizer.load(tmp_path / "t.json")
