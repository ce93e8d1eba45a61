"""Corpora of any size: the token file (hit, stale, corrupt, killed builds, concurrent builds,
read-only directories), byte units, sampled validation and the benchmark splits (on small
synthetic files in enwik8's and text8's formats)."""

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from helpers import TINY, make_text, run_main, scalars

from lit_gpt_char import train
from lit_gpt_char.core import tokens as tokens_mod
from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.core.text_generator import TextGenerator
from lit_gpt_char.core.tokenizer import CharTokenizer, UnknownCharactersError
from lit_gpt_char.core.tokens import load_tokens, token_file_path
from lit_gpt_char.errors import UserError
from lit_gpt_char.training.data import (
    DataConfig,
    RandomWindows,
    TextDataModule,
    ValWindows,
    corpus_meta_of,
    sample_val_starts,
    split_ids,
    split_sizes,
)

# Multi-byte characters of every UTF-8 length, so chunk edges cut characters.
MIXED = "naïve café — ☃ snow, 𝄞 clef; 日本語 text.\n"


def mixed_text(n: int = 30_000) -> str:
    return (make_text(n) + MIXED) * 3


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(tokens_mod, "CHUNK", 1009)  # many chunks, edges inside characters


@pytest.mark.parametrize("unit", ["char", "byte"])
def test_token_file_holds_the_ids_of_the_in_memory_encoding(tmp_path, small_chunks, unit):
    text = mixed_text()
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    tf = load_tokens(tmp_path / "c.txt", unit)
    ref = CharTokenizer.from_text(text, unit)
    assert tf.tokenizer == ref
    assert tf.ids.dtype == torch.uint8 and torch.equal(tf.ids.long(), torch.tensor(ref.encode(text)))
    assert tf.path == tmp_path / f"c.txt.{unit}.tokens"


def test_vocabularies_past_256_take_two_bytes(tmp_path, small_chunks):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 5 + "abc"
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    tf = load_tokens(tmp_path / "c.txt")
    assert tf.ids.dtype == torch.uint16 and tf.tokenizer.vocab_size == 303
    assert tf.tokenizer.decode(tf.ids[-10:]) == text[-10:]
    assert (tmp_path / "c.txt.char.tokens").stat().st_size < 2 * len(text) + 8192


def test_cache_hit_stale_and_corrupt_files_are_rebuilt(tmp_path, caplog):
    corpus = tmp_path / "c.txt"
    corpus.write_text(mixed_text(), encoding="utf-8")
    caplog.set_level(logging.INFO, logger="lit_gpt_char.core.tokens")
    first = load_tokens(corpus)
    path, expected = first.path, first.ids.clone()
    stamp = path.stat().st_mtime_ns
    caplog.clear()
    assert torch.equal(load_tokens(corpus).ids, expected)
    assert path.stat().st_mtime_ns == stamp and "Tokenizing" not in caplog.text, "a hit builds nothing"

    size = path.stat().st_size
    damage = {
        "truncated": lambda b: b[:-1],
        "a flipped id": lambda b: b[:-5] + bytes([b[-5] ^ 1]) + b[-4:],
        "a bad magic": lambda b: b"garbage!" + b[8:],
        "a bad header": lambda b: b[:20] + b"\xff" * 10 + b[30:],
        "empty": lambda b: b"",
    }
    for what, fn in damage.items():
        path.write_bytes(fn(path.read_bytes()))
        caplog.clear()
        tf = load_tokens(corpus)
        assert "corrupt" in caplog.text or "stale" in caplog.text, what
        assert torch.equal(tf.ids, expected) and path.stat().st_size == size, what

    corpus.write_text(mixed_text() + "zebra quartz", encoding="utf-8")
    caplog.clear()
    tf = load_tokens(corpus)
    assert "stale: the corpus has changed" in caplog.text
    assert tf.tokenizer.decode(tf.ids[-12:]) == "zebra quartz" and "z" in tf.tokenizer.chars


def test_bad_corpora_say_what_is_wrong(tmp_path, small_chunks):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a" * 5000 + b"\xff" + b"b" * 10)
    with pytest.raises(UserError, match=r"not UTF-8 text \(bad byte at offset 5000\).*train on its bytes: unit=byte$"):
        load_tokens(bad)
    assert load_tokens(bad, "byte").tokenizer.vocab_size == 3  # bytes need no decoding
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        load_tokens(tmp_path / "empty.txt")
    (tmp_path / "c.txt").write_text("abcabc")
    with pytest.raises(UnknownCharactersError, match="'c'"):
        load_tokens(tmp_path / "c.txt", vocab=["a", "b"])  # a given vocabulary that misses characters


def test_a_killed_build_leaves_nothing_trusted(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(200_000), encoding="utf-8")
    script = textwrap.dedent(f"""
        import time
        from lit_gpt_char.core import tokens
        tokens.CHUNK = 4096
        encode = tokens._Encoder.__call__
        def slow(self, chunk, offset):
            if offset > 50_000:
                print("half written", flush=True)
                time.sleep(60)
            return encode(self, chunk, offset)
        tokens._Encoder.__call__ = slow
        tokens.load_tokens({str(corpus)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    path = token_file_path(corpus, "char")
    assert not path.exists() and list(tmp_path.glob(f".{path.name}.*.part")), "only a temporary file is left"
    tf = load_tokens(corpus)
    assert tf.tokenizer.decode(tf.ids[:50]) == corpus.read_text()[:50]
    assert not list(tmp_path.glob("*.part")), "the next build cleans up"


def test_concurrent_first_runs_build_once(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(100_000), encoding="utf-8")
    script = textwrap.dedent(f"""
        import logging, os, sys, time
        from pathlib import Path
        from lit_gpt_char.core import tokens
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        build = tokens.build_token_file
        def slow_build(*args, **kwargs):
            time.sleep(2)  # the other process must find the lock taken
            return build(*args, **kwargs)
        tokens.build_token_file = slow_build
        Path({str(tmp_path)!r}, f"ready-{{os.getpid()}}").touch()
        while len(list(Path({str(tmp_path)!r}).glob("ready-*"))) < 2:
            time.sleep(0.01)
        tf = tokens.load_tokens({str(corpus)!r})
        print("ids", int(tf.ids.long().sum()), len(tf.ids))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    both = "".join(outs)
    assert both.count("Tokenizing") == 1 and "Waiting for another process" in both, both
    assert len({o.strip().splitlines()[-1] for o in outs}) == 1, outs  # the same ids in both


def test_read_only_corpus_directory_caches_in_the_user_cache(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "c.txt").write_text(make_text(5000))
    folder.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        tf = load_tokens(folder / "c.txt")
        assert tf.path.parent == tmp_path / "cache" / "lit-gpt-char" and sorted(os.listdir(folder)) == ["c.txt"]
        assert load_tokens(folder / "c.txt", cache_dir=tmp_path / "mine").path.parent == tmp_path / "mine"
        with pytest.raises(
            UserError, match=r"cannot write the token cache .*: cache_dir must be writable; pass cache_dir=DIR"
        ):
            load_tokens(folder / "c.txt", cache_dir=folder / "c.txt" / "sub")  # not a directory
    finally:
        folder.chmod(0o755)


def test_training_batches_are_those_of_the_in_memory_path(tmp_path):
    text = mixed_text()
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    dm = TextDataModule({"path": str(tmp_path / "c.txt")}, block_size=32, seed=7)
    dm.setup()
    ids = CharTokenizer.from_text(text).encode_tensor(text)  # how the corpus was held before
    n_train = int(len(ids) * 0.9)
    mapped, in_memory = dm.train_dataloader(), RandomWindows(ids[:n_train], 32, 16, 1000, seed=7)
    for _ in range(5):
        (x1, y1), (x2, y2) = mapped.draw(), in_memory.draw()
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    val = dm.val_dataloader()[0]  # (the second loader is the sample of training windows)
    for (x1, y1), (x2, y2) in zip(val, ValWindows(ids[n_train:], 32, 16)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize(
    "sizes, n, expected",
    [
        ({}, 1000, (900, 100, 0)),
        ({"test_size": 100}, 1000, (810, 90, 100)),
        ({"val_size": 50, "test_size": 50}, 1000, (900, 50, 50)),
        ({"train_size": 900, "val_size": 50, "test_size": 50}, 1000, (900, 50, 50)),
        ({"train_size": 800}, 1000, (800, 200, 0)),
    ],
)
def test_split_sizes(sizes, n, expected):
    assert split_sizes(n, DataConfig(**sizes)) == expected


@pytest.mark.parametrize(
    "sizes, message",
    [({"train_size": 900, "val_size": 50, "test_size": 40}, "is it the right file"), ({"val_size": 2000}, "fewer")],
)
def test_split_sizes_that_do_not_fit_the_corpus(sizes, message):
    with pytest.raises(UserError, match=message):
        split_sizes(1000, DataConfig(**sizes))


def test_val_sample_is_fixed_and_made_of_the_whole_split_windows():
    a = sample_val_starts(10_000, 64, 1000)
    assert a == sample_val_starts(10_000, 64, 1000) and a == sorted(a) and len(a) == 16
    assert set(a) <= set(range(0, 10_000, 64)) and len(set(a)) == 16
    assert sample_val_starts(10_000, 64, 10**9) == list(range(0, 10_000, 64))  # capped at the whole split
    data = torch.arange(10_001)
    scored = [y for _, y in ValWindows(data, 64, 4, starts=a)]
    assert sum(y.numel() for y in scored) == 16 * 64
    assert all(torch.equal(y[:, 0] % 64, torch.ones(len(y), dtype=torch.long)) for y in scored)


# --- byte units -------------------------------------------------------------------------------------
def test_byte_tokenizer_json_records_the_unit_and_decodes_safely(tmp_path):
    tok = CharTokenizer.from_text(MIXED, "byte")
    path = tok.save(tmp_path / "t.json")
    assert json.loads(path.read_text())["unit"] == "byte" and CharTokenizer.load(path) == tok
    assert tok.encode("é") == [tok.stoi[c] for c in "é".encode().decode("latin-1")]  # UTF-8 bytes
    assert tok.decode(tok.encode(MIXED)) == MIXED
    ids = tok.encode("☃𝄞")
    dec = tok.stream_decoder()
    pieces = [dec.feed(i) for i in ids]
    assert pieces == ["", "", "☃", "", "", "", "𝄞"]  # held until complete
    dec = tok.stream_decoder()
    assert [dec.feed(i) for i in ids[:2]] == ["", ""] and dec.flush() == "\ufffd"  # cut off at the end
    dec = tok.stream_decoder()
    assert dec.feed(tok.stoi["\xe2"]) + dec.feed(tok.stoi["a"]) == "\ufffda"  # invalid: replaced, no crash
    assert tok.unknown("a€") == ["€"]  # € is E2 82 AC: 0x82 is not in this vocabulary


def test_byte_model_streams_whole_characters(tmp_path):
    tok = CharTokenizer.from_text(MIXED, "byte")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_embd=16, block_size=16))
    gen = TextGenerator(model, tok, torch.device("cpu"))
    assert gen.encode_prompt("né") == tok.encode("né") and len(gen.encode_prompt("né")) == 3
    pieces = list(gen.stream("né", max_new_tokens=200, seed=3))
    assert all(pieces) and "".join(pieces) == gen.generate("né", max_new_tokens=200, seed=3)[2:]
    assert gen.generate("a€", on_unknown="skip", max_new_tokens=5).startswith("a")
    with pytest.raises(UserError, match="'€'"):
        gen.generate("a€")


# --- the benchmark configs, on synthetic files in their formats ---------------------------------------
def fake_benchmark(tmp_path, name: str, text: str) -> tuple[str, str]:
    """A zip holding `name` (as enwik8.zip and text8.zip do) at a file:// url, and the file's sha256."""
    raw = text.encode()
    with zipfile.ZipFile(tmp_path / f"{name}.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, raw)
    return (tmp_path / f"{name}.zip").as_uri(), hashlib.sha256(raw).hexdigest()


def test_text8_style_download_unzips_checks_and_splits(tmp_path):
    text = make_text(20_000).lower().replace("\n", " ")
    url, sha = fake_benchmark(tmp_path, "text8", text)
    data = {"filename": "text8", "url": url, "sha256": sha, "train_size": 18_000, "val_size": 1000, "test_size": 1000}
    test = split_ids(data, "test", data_dir=str(tmp_path / "data"))
    assert test.tokenizer.decode(test.ids) == text[-1000:]
    assert test.meta["splits"] == {"train": 18_000, "val": 1000, "test": 1000} and test.meta["sha256"] == sha
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith(".")) == [
        "text8",
        "text8.char.tokens",
    ]
    with pytest.raises(UserError, match="is it the right file"):
        split_ids({**data, "train_size": 17_000}, "val", data_dir=str(tmp_path / "data"))
    with pytest.raises(UserError, match="checksum mismatch"):
        split_ids({**data, "sha256": "0" * 64}, "val", data_dir=str(tmp_path / "data"))
    with pytest.raises(UserError, match="holds out no test split"):
        split_ids({"path": str(tmp_path / "data" / "text8")}, "test")
    with pytest.raises(UserError, match="holds no file enwik8"):
        split_ids({**data, "filename": "enwik8", "sha256": None}, "val", data_dir=str(tmp_path / "d2"))


def test_enwik8_recipe_trains_on_bytes_with_sampled_validation(tmp_path, capsys):
    """experiment=enwik8 composes and runs on a CPU with tiny overrides, on a synthetic enwik8.zip;
    validations score a fixed sample (val_sample/*), the whole split is scored at the end (val/*)."""
    text = "<page><title>Ünïcödé</title><text>" + mixed_text(40_000) + "</text></page>\n"
    url, sha = fake_benchmark(tmp_path, "enwik8", text)
    n = len(text.encode())
    run = tmp_path / "run"
    code = run_main(
        train.main,
        "experiment=enwik8",
        *TINY,
        "model.block_size=16",
        f"data.url={url}",
        f"data.sha256={sha}",
        f"data.train_size={n - 4000}",
        "data.val_size=2000",
        "data.test_size=2000",
        "data.val_sample_tokens=256",
        "optim.warmup_steps=2",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "callbacks.generate_samples.max_new_tokens=8",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={run}",
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    curves = scalars(run)
    assert [s for s, _ in curves["val_sample/loss"]] == [2, 5] and len(curves["val/loss"]) == 1
    assert "Val loss (whole split, end of training)" in out
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    assert "val_sample" in best.name
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["tokenizer"]["unit"] == "byte" and ckpt["hyper_parameters"]["unit"] == "byte"
    meta = corpus_meta_of(ckpt)
    assert meta["sha256"] == sha and meta["splits"] == {"train": n - 4000, "val": 2000, "test": 2000}
    assert split_ids(meta["data"], "test", data_dir=str(tmp_path / "data")).ids.numel() == 2000
    assert json.loads((run / "tokenizer.json").read_text())["unit"] == "byte"
