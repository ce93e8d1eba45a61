"""export format=hf and format=onnx, against the real libraries: transformers gives our logits and our
greedy text for every model option (a stock GPT2LMHeadModel for GPT-2's parts, remote code for the
rest), onnxruntime too (past block_size as well), the tokenizer round-trips, a directory with only
transformers installed generates, and a bad target or input is one `error:` line that leaves the
directory as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import DEFAULT_PARTS, GPT2_PARTS, MODEL_OPTIONS, option_model, require, run_main

from lit_gpt_char import export as export_cli
from lit_gpt_char import sample
from lit_gpt_char.core.checkpoint import Loaded
from lit_gpt_char.core.exports import save_export
from lit_gpt_char.core.generation import generate
from lit_gpt_char.core.hf import is_gpt2
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.export import export
from lit_gpt_char.loading import load_any, load_checkpoint

VOCAB = "\n !,:;?EReahl"  # 13 characters: option_model's vocabulary
IDS = [str(o) or "gpt2" for o in MODEL_OPTIONS]
# An ONNX export takes seconds, so its test combines the options: every value MODEL_OPTIONS tries
# (which the transformers test takes one by one) is in one of these, with a different neighbour.
ONNX_OPTIONS = [
    {},  # GPT-2's parts
    {**DEFAULT_PARTS, "bias": True, "n_head": 4, "rope_base": 500.0, "mlp_hidden": 24},
    {**DEFAULT_PARTS, "mlp": "swiglu", "mlp_hidden": 40, "dropout": 0.2, "attn_dropout": 0.1},
    {"norm": "rmsnorm", "qk_norm": True, "mlp": "swiglu", "bias": True, "zero_init": True, "tie_embeddings": False},
]


def exported(options: dict, fmt: str, tmp_path: Path, block_size: int = 16) -> tuple[torch.nn.Module, Path]:
    m = option_model(block_size=block_size, **options)
    tok = CharTokenizer(VOCAB)
    assert tok.vocab_size == m.config.vocab_size
    out = save_export(Loaded(m.config, tok, m.state_dict(), tmp_path), tmp_path / fmt, fmt)
    return m, out


def ours_greedy(m, prompt: list[int], n: int) -> list[int]:
    return generate(m, torch.tensor([prompt]), n, temperature=0)[0, len(prompt) :].tolist()


@pytest.mark.parametrize("options", MODEL_OPTIONS, ids=IDS)
def test_transformers_gives_our_logits_and_greedy_text(options, tmp_path):
    transformers = require("transformers")
    m, out = exported(options, "hf", tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    stock = is_gpt2(m.config)
    assert type(hf).__name__ == ("GPT2LMHeadModel" if stock else "LitGPTCharForCausalLM")
    assert (out / "modeling_lit_gpt_char.py").exists() != stock
    assert not hf.training
    idx = torch.randint(0, 13, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(idx).logits - m(idx)[0]).abs().max() <= 1e-5
        # through the cache: a prompt, then one position at a time, inside the block
        prompt = idx[:1, :5]
        got = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=11, do_sample=False)
    assert got[0, 5:].tolist() == ours_greedy(m, prompt[0].tolist(), 11)
    if m.config.pos_emb == "rope":  # past the block: the rolling cache, as `sample` does
        with torch.no_grad():
            got = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False)
        assert got[0, 5:].tolist() == ours_greedy(m, prompt[0].tolist(), 30)
    # and our own loaders read the directory back exactly
    back = load_any(out)
    assert back.config == m.config and back.tokenizer == CharTokenizer(VOCAB)
    assert all(torch.equal(back.state_dict[k], v) for k, v in m.state_dict().items())


def test_the_onnx_cases_hold_every_option_value_of_the_others():
    values = lambda cases: {(k, repr(v)) for case in cases for k, v in case.items()}  # noqa: E731
    assert values(MODEL_OPTIONS) <= values(ONNX_OPTIONS)


@pytest.mark.parametrize("options", ONNX_OPTIONS, ids=[str(o) or "gpt2" for o in ONNX_OPTIONS])
def test_onnxruntime_gives_our_logits_and_greedy_text(options, tmp_path):
    require("onnxruntime")
    m, out = exported(options, "onnx", tmp_path, block_size=8)
    gen = onnx_generator(out)
    idx = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(2))
    import numpy as np

    empty = np.zeros((m.config.n_layer, 2, m.config.n_head, 0, m.config.head_size), np.float32)
    with torch.no_grad():
        want = m(idx)[0].numpy()
    logits, keys, values = gen.run(idx.numpy(), np.arange(8), empty, empty)
    assert np.abs(logits - want).max() <= 1e-5 and keys.shape[3] == 8
    part, keys, values = gen.run(idx[:, :3].numpy(), np.arange(3), empty, empty)
    rest, _, _ = gen.run(idx[:, 3:].numpy(), np.arange(3, 8), keys, values)  # a chunk over a cache
    assert np.abs(np.concatenate([part, rest], 1) - want).max() <= 1e-5
    prompt = idx[0, :3].tolist()
    assert gen.generate(prompt, 20, temperature=0) == ours_greedy(m, prompt, 20)  # past block_size=8 too
    assert load_any(out).config == m.config  # an onnx export is a native one as well


def onnx_generator(out: Path):
    sys.path.insert(0, str(out))
    try:
        import generate as script  # the export's own generate.py

        return script.OnnxGenerator(out)
    finally:
        sys.path.pop(0)
        sys.modules.pop("generate", None)


TEXT = "First Citizen:\r\n\tBefore we proceed — any further, hear me speak. Ünïcödé ✓ 😀\u2028end[]^-\\"


@pytest.mark.parametrize("unit", ["char", "byte"])
def test_the_tokenizer_round_trips_and_drops_what_it_has_never_seen(unit, tmp_path):
    transformers = require("transformers")
    tok = CharTokenizer.from_text(TEXT, unit)
    torch.manual_seed(0)
    from lit_gpt_char.core.model import GPT, GPTConfig

    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16))
    out = save_export(Loaded(m.config, tok, m.state_dict(), tmp_path), tmp_path / "hf", "hf")
    hf = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    ids = hf(TEXT)["input_ids"]
    assert ids == tok.encode(TEXT) and hf.decode(ids) == TEXT
    assert hf.convert_ids_to_tokens(list(range(3))) and hf.vocab_size == tok.vocab_size
    # Never seen: 'Z' and 'ä' (whose UTF-8 bytes a byte vocabulary half knows: ü is C3 BC, ä is C3 A4).
    unseen = "Zä Before Z"
    assert tok.unknown(unseen) == ["Z", "ä"]
    kept = "".join(c for c in unseen if c not in tok.unknown(unseen))  # what on_unknown=skip reads
    assert hf(unseen)["input_ids"] == tok.encode(kept)
    assert load_any(out).tokenizer == tok


# --- the command, and a user who has only transformers --------------------------------------------------------
ONLY_TRANSFORMERS = textwrap.dedent(
    """
    import sys
    sys.modules["lit_gpt_char"] = None  # this user never installed lit-gpt-char
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out, remote, n = sys.argv[1], sys.argv[2] == "remote", int(sys.argv[3])
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=remote)
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=remote)
    inputs = tok("the king", return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    print(type(model).__name__)
    print(tok.decode(ids[0]), end="")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("parts", ["default", "gpt2"])
def test_a_user_with_only_transformers_generates_our_text(parts, trained_run, tmp_path, capsys):
    require("transformers")
    ckpt = trained_run
    if parts == "gpt2":  # the GPT-2-parts model: the run's weights under GPT-2's parts would be another model,
        loaded = load_checkpoint(trained_run)  # so a fresh one of its sizes, its weights random
        from lit_gpt_char.core.model import GPT

        cfg = type(loaded.config)(**{**loaded.config.to_dict(), **GPT2_PARTS})
        torch.manual_seed(0)
        ckpt = save_export(Loaded(cfg, loaded.tokenizer, GPT(cfg).state_dict(), tmp_path), tmp_path / "gpt2")
    capsys.readouterr()
    code = run_main(export_cli.main, str(ckpt), str(tmp_path / "hf"), "format=hf")  # in this process
    out = capsys.readouterr()
    assert code == 0 and out.out.strip() == f"exported to {tmp_path / 'hf'} (format=hf)", out.err
    remote = "remote" if parts == "default" else "stock"
    n = "40" if parts == "default" else "20"  # past the run's block_size of 32 where positions are rotary
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    user = subprocess.run(
        [sys.executable, "-c", ONLY_TRANSFORMERS, str(tmp_path / "hf"), remote, n],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert user.returncode == 0, user.stderr[-3000:]
    name, text = user.stdout.split("\n", 1)
    assert name == ("LitGPTCharForCausalLM" if parts == "default" else "GPT2LMHeadModel")
    code = run_main(sample.main, f"ckpt={tmp_path / 'hf'}", "prompt='the king'", f"max_new_tokens={n}", "temperature=0")
    ours = capsys.readouterr()
    assert code == 0, ours.err
    assert ours.out == text + "\n"


@pytest.mark.slow
def test_the_onnx_export_generates_our_text_with_its_own_script(trained_run, tmp_path, capsys):
    require("onnxruntime")
    assert run_main(export_cli.main, str(trained_run), str(tmp_path / "onnx"), "--format", "onnx") == 0
    names = {p.name for p in (tmp_path / "onnx").iterdir()}
    assert names == {"model.onnx", "generate.py", "model.safetensors", "config.json", "tokenizer.json"}
    script = [sys.executable, str(tmp_path / "onnx" / "generate.py"), "--prompt", "the king", "--temperature", "0"]
    r = subprocess.run([*script, "--max-new-tokens", "150"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    capsys.readouterr()
    assert run_main(sample.main, f"ckpt={trained_run}", "prompt='the king'", "max_new_tokens=150", "temperature=0") == 0
    assert r.stdout == capsys.readouterr().out  # 150 characters: past the run's block_size
    sampled = subprocess.run([*script[:-2], "--seed", "1", "--max-new-tokens", "50"], capture_output=True, text=True)
    assert sampled.returncode == 0 and sampled.stdout.startswith("the king") and len(sampled.stdout) == 8 + 50 + 1


# --- bad input: one line, nothing half-written ---------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["hf", "onnx"])
def test_an_existing_export_is_kept_without_force_and_replaced_whole_with_it(fmt, tmp_path, capsys):
    _, native = exported({}, "native", tmp_path)
    before = {p.name: p.read_bytes() for p in native.iterdir()}
    assert run_main(export_cli.main, str(native), str(native), f"format={fmt}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: out_dir={native} already holds") and len(err.splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in native.iterdir()} == before
    target = tmp_path / "target"
    export(native, target, format=fmt)
    export(native, target, force=True)  # back to native: the other format's files go
    assert {p.name for p in target.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json"}


def test_a_failed_export_leaves_the_directory_as_it_was(tmp_path, monkeypatch, capsys):
    _, native = exported({}, "native", tmp_path)
    from lit_gpt_char.core import hf

    def full_disk(*args):
        (args[-1] / "config.json").write_text("{}")  # half of the files written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hf, "save_hf", full_disk)
    before = {p.name: p.read_bytes() for p in native.iterdir()}
    for target, force in ((tmp_path / "new", ()), (native, ("--force",))):
        assert run_main(export_cli.main, str(native), str(target), "format=hf", *force) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "new").exists()
    assert {p.name: p.read_bytes() for p in native.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_a_missing_library_or_format_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert run_main(export_cli.main, str(tmp_path / "no-such-run"), str(tmp_path / "o"), "format=onnx") == 2
    err = capsys.readouterr().err
    assert (
        err == "error: format=onnx needs onnxruntime, not installed: pip install 'lit-gpt-char[export]' "
        "(or pip install -e '.[export]' in a clone)\n"
    )
    for bad, message in (
        ("format=gguf", "format=gguf: must be one of native, hf, onnx"),
        ("fmt=hf", "expected format="),
    ):
        assert run_main(export_cli.main, str(tmp_path / "x"), str(tmp_path / "o"), bad) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, err


def test_a_transformers_directory_not_made_by_us_is_one_error_line(tmp_path, capsys):
    transformers = require("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=30)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    capsys.readouterr()
    for cmd in (export_cli.main, sample.main):
        args = (
            (str(tmp_path / "gpt2"), str(tmp_path / "o")) if cmd is export_cli.main else (f"ckpt={tmp_path / 'gpt2'}",)
        )
        assert run_main(cmd, *args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / 'gpt2'} holds a transformers model that lit-gpt-char did not")
        assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
