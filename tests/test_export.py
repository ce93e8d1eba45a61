"""Export: model.safetensors + config.json + tokenizer.json that load back to the same logits; old
model.pt exports still load; the target is checked before any work; and files that do not match
themselves (config.json against the weights, a checkpoint's model_config against its own) are one
`error:` line naming the file and the tensor."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import GPT2_PARTS, run_cli, run_main
from safetensors.torch import load_file

from lit_gpt_char import export as export_cli
from lit_gpt_char import sample
from lit_gpt_char.core.checkpoint import Loaded
from lit_gpt_char.core.exports import LEGACY_PARTS, load_exported, save_export
from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.export import export
from lit_gpt_char.loading import load_any, load_checkpoint, load_generator, resolve_checkpoint

FILES = {"model.safetensors", "config.json", "tokenizer.json"}


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    return export(trained_run, tmp_path_factory.mktemp("export") / "model")


def logits(loaded, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.build()(idx)[0]


def test_round_trip_gives_the_same_logits(trained_run, exported):
    assert {p.name for p in exported.iterdir()} == FILES
    # The file is plain safetensors any tool reads (the default head is untied: two matrices).
    tensors = load_file(exported / "model.safetensors")
    ckpt, back = load_checkpoint(trained_run), load_any(exported)
    assert not ckpt.config.tie_embeddings and set(tensors) == set(ckpt.state_dict)
    assert back.config == ckpt.config and back.tokenizer == ckpt.tokenizer
    idx = torch.randint(0, ckpt.config.vocab_size, (3, ckpt.config.block_size))
    assert (logits(ckpt, idx) - logits(back, idx)).abs().max() <= 1e-6
    # The seed-format tokenizer and a config.json of the model's sizes only.
    assert set(json.loads((exported / "tokenizer.json").read_text())) == {"char_to_integer", "integer_to_char", "unit"}
    assert json.loads((exported / "config.json").read_text()) == ckpt.config.to_dict()
    # What people read of the model travels too: its step and val loss.
    assert back.facts()["step"] == ckpt.info["step"] > 0
    assert back.facts()["val_loss"] == pytest.approx(ckpt.info["val_loss"])
    assert back.facts()["params"] == load_generator(exported, device="cpu").num_params


def test_a_tied_head_is_stored_once_and_comes_back_tied(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=16, **GPT2_PARTS))
    tok = CharTokenizer.from_text("abcde")
    save_export(Loaded(model.config, tok, model.state_dict(), tmp_path), tmp_path / "out")
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    assert "wte.weight" in tensors and "lm_head.weight" not in tensors
    back = load_any(tmp_path / "out")
    assert back.config == model.config and torch.equal(back.state_dict["lm_head.weight"], model.wte.weight)
    built = back.build()
    assert built.lm_head.weight is built.wte.weight
    idx = torch.randint(0, 5, (2, 8))
    assert (logits(back, idx) - model.eval()(idx)[0]).abs().max() <= 1e-6
    # An export from before config.json (GPT-2's parts): the sizes are read off the weights, n_head given.
    assert LEGACY_PARTS == GPT2_PARTS  # the format's parts are conf/model/gpt2.yaml's
    (tmp_path / "out" / "config.json").unlink()
    legacy = load_exported(tmp_path / "out" / "model.safetensors", tmp_path / "out" / "tokenizer.json", n_head=2)
    assert legacy.config == model.config and (logits(legacy, idx) - logits(back, idx)).abs().max() == 0


def test_old_model_pt_exports_still_load(trained_run, exported, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    ckpt = load_checkpoint(trained_run)
    torch.save(ckpt.state_dict, old / "model.pt")
    shutil.copy(exported / "tokenizer.json", old)
    shutil.copy(exported / "config.json", old)
    idx = torch.randint(0, ckpt.config.vocab_size, (2, 9))
    assert (logits(ckpt, idx) - logits(load_any(old), idx)).abs().max() <= 1e-6
    a = load_generator(old, device="cpu", precision="32").generate("the king", max_new_tokens=30, seed=4)
    assert a == load_generator(exported, device="cpu", precision="32").generate("the king", max_new_tokens=30, seed=4)


def test_sample_reads_an_export_and_its_weights_file(exported, capsys):
    for ckpt in (exported, exported / "model.safetensors"):
        assert run_main(sample.main, f"ckpt={ckpt}", "prompt='the king'", "max_new_tokens=20", "precision=32") == 0
        out = capsys.readouterr().out
        assert out.startswith("the king") and len(out) == len("the king") + 20 + 1


# --- the target is checked before any work -------------------------------------------------------------------
def test_an_existing_export_is_replaced_only_with_force(trained_run, exported, tmp_path, capsys):
    target = tmp_path / "target"
    shutil.copytree(exported, target)
    (target / "model.pt").write_bytes(b"an older export's weights")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    assert run_main(export_cli.main, str(trained_run), str(target)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out_dir=") and "already holds" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # nothing touched
    assert run_main(export_cli.main, str(trained_run), str(target), "--force") == 0
    assert {p.name for p in target.iterdir()} == FILES  # the stale model.pt is gone: one model per directory
    new, want = load_file(target / "model.safetensors"), load_file(exported / "model.safetensors")
    assert new.keys() == want.keys() and all(torch.equal(new[k], want[k]) for k in want)


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in: a read-only one, or (as root, who may write
    anywhere chmod forbids) /sys."""
    if os.geteuid() != 0:
        d = tmp_path / "read_only"
        d.mkdir()
        d.chmod(0o500)
        return d
    try:
        probe = Path("/sys/lit-gpt-char-probe")
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return Path("/sys")
    pytest.skip("no directory here refuses root")


@pytest.mark.parametrize("fmt", ["native", "hf", "onnx"])
@pytest.mark.parametrize("where", ["read-only", "file", "under a file"])
def test_a_target_that_cannot_be_written_is_refused_before_loading(where, fmt, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")  # loading it would fail: the target's error must come first
    (tmp_path / "a_file").write_text("x")
    target = {
        "read-only": lambda: unwritable_dir(tmp_path) / "out",
        "file": lambda: tmp_path / "a_file",
        "under a file": lambda: tmp_path / "a_file" / "out",
    }[where]()
    assert run_main(export_cli.main, str(corrupt), str(target), f"format={fmt}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: out_dir={target}") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_export_cli(trained_run, tmp_path):
    r = run_cli("export", str(trained_run), str(tmp_path / "m"))
    assert r.returncode == 0 and r.stdout.strip() == f"exported to {tmp_path / 'm'}", r.stderr
    again = run_cli("export", str(trained_run), str(tmp_path / "m"))
    assert again.returncode == 2 and again.stderr.startswith("error: out_dir=") and again.stdout == ""


@pytest.mark.parametrize(
    "args", [["ckpt={run}", "{out}"], ["{run}", "out_dir={out}"], ["ckpt={run}", "out={out}", "format=hf"]]
)
def test_keys_before_the_paths_are_one_line_showing_the_command(args, trained_run, tmp_path, capsys, monkeypatch):
    """`export ckpt=X out_dir=Y`, as sample and evaluate take their keys: one line with the command to type."""
    out = tmp_path / "m"
    assert run_main(export_cli.main, *[a.format(run=trained_run, out=out) for a in args]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {args[0].format(run=trained_run, out=out) if '=' in args[0] else args[1].format(out=out)}: export "
        f"takes the checkpoint and the output directory as they are, without a key: python -m lit_gpt_char.export "
        f"{trained_run} {out} [format=...]\n"
    )
    assert not out.exists()
    shutil.copytree(trained_run, tmp_path / "ckpt=mine")  # a directory that is named so is a path, not a key
    monkeypatch.chdir(tmp_path)
    assert run_main(export_cli.main, "ckpt=mine", str(out)) == 0, capsys.readouterr().err


# --- files that do not match themselves ----------------------------------------------------------------------
def edit_json(path: Path, change) -> None:
    path.write_text(change(json.loads(path.read_text())) if callable(change) else change)


BAD_EXPORTS = [
    ("not json", "{n_layer: 2", "config.json is not valid JSON"),
    ("a list", "[2, 2, 32]", "must be a JSON object of model options"),
    (
        "extra key",
        lambda c: json.dumps({**c, "n_experts": 8}),
        "its model config is invalid: unknown option(s) n_experts",
    ),
    ("bad value", lambda c: json.dumps({**c, "n_layer": 0}), "its model config is invalid: n_layer=0: must be"),
    ("wider", lambda c: json.dumps({**c, "n_embd": 96}), "tensor wte.weight has shape ["),
    ("deeper", lambda c: json.dumps({**c, "n_layer": 3}), "missing ['blocks.2."),
    ("learned positions", lambda c: json.dumps({**c, "pos_emb": "learned"}), "missing ['wpe.weight']"),
    ("tied head", lambda c: json.dumps({**c, "tie_embeddings": True}), "lm_head.weight differs from wte.weight"),
    ("more characters", lambda c: json.dumps({**c, "vocab_size": 20}), "characters but"),
]


@pytest.mark.parametrize("what, change, message", BAD_EXPORTS, ids=[b[0] for b in BAD_EXPORTS])
def test_bad_config_json_is_one_error_line(what, change, message, exported, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    edit_json(bad / "config.json", change)
    assert run_main(sample.main, f"ckpt={bad}", "max_new_tokens=5") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert "config.json" in err or "tokenizer" in err  # names the file to fix


def test_a_damaged_safetensors_file_is_one_error_line(exported, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert run_main(sample.main, f"ckpt={bad}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read {bad / 'model.safetensors'}") and "Traceback" not in err, err


BAD_CHECKPOINTS = [
    ("deeper", lambda c: c["model_config"].update(n_layer=3), "missing ['blocks.2."),
    ("wider", lambda c: c["model_config"].update(n_embd=96, n_head=2), "tensor wte.weight has shape ["),
    ("learned positions", lambda c: c["model_config"].update(pos_emb="learned"), "missing ['wpe.weight']"),
    ("tied head", lambda c: c["model_config"].update(tie_embeddings=True), "lm_head.weight differs from wte.weight"),
    ("not a mapping", lambda c: c.update(model_config=[2, 32]), "must be a mapping of options"),
    (
        "extra key",
        lambda c: c["model_config"].update(rope=True),
        "its model config is invalid: unknown option(s) rope:",
    ),
]


@pytest.mark.parametrize("what, change, message", BAD_CHECKPOINTS, ids=[b[0] for b in BAD_CHECKPOINTS])
def test_checkpoint_config_against_its_own_weights(what, change, message, trained_run, tmp_path, capsys):
    ckpt = torch.load(resolve_checkpoint(trained_run), weights_only=True)
    change(ckpt)
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    for main, args in ((sample.main, [f"ckpt={path}"]), (export_cli.main, [str(path), str(tmp_path / "out")])):
        assert run_main(main, *args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}") and "Traceback" not in err, err
        assert message in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing half-written
