"""`python -m lit_gpt_char.sample` end to end, and every bad input it must explain."""

import re

import pytest
import torch
from helpers import run_cli, run_main

from lit_gpt_char import sample


@pytest.mark.slow
def test_sample_cli_stdout_is_only_text(trained_run, tmp_path):
    out = tmp_path / "samples.txt"
    r = run_cli(
        "sample",
        f"ckpt={trained_run}",
        "prompt='the king'",
        "max_new_tokens=200",
        "num_samples=2",
        "seed=5",
        f"out={out}",
        "stream=false",
    )
    assert r.returncode == 0, r.stderr
    parts = re.split(r"^=+ sample \d/2 =+\n", r.stdout, flags=re.M)
    assert parts[0] == "" and len(parts) == 3, r.stdout
    assert all(p.startswith("the king") and len(p) == len("the king") + 200 + 1 for p in parts[1:]), parts
    assert "sample 1/2" in r.stdout and "sample 2/2" in r.stdout
    assert "characters/s" in r.stderr and "parameters" in r.stderr and "first character" in r.stderr
    assert "characters/s" not in r.stdout
    assert out.read_text().count("the king") >= 2
    # Same seed, same text; streaming prints the same characters.
    again = run_cli(
        "sample",
        f"ckpt={trained_run}",
        "prompt='the king'",
        "max_new_tokens=200",
        "num_samples=2",
        "seed=5",
        "stream=true",
    )
    assert again.returncode == 0 and again.stdout == r.stdout, (again.stdout, r.stdout)


def test_sample_longer_than_block_size(trained_run, capsys):
    assert run_main(sample.main, f"ckpt={trained_run}", "max_new_tokens=300", "temperature=0") == 0  # block 32
    assert len(capsys.readouterr().out) >= 300


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, trained_run):
    d = tmp_path_factory.mktemp("bad")
    last = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    (d / "truncated.ckpt").write_bytes(last[: len(last) // 2])
    (d / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(3)}, d / "foreign.ckpt")
    (d / "empty_dir").mkdir()
    (d / "empty_prompt.txt").write_text("")
    return d


BAD = [
    (["ckpt={d}/missing.ckpt"], "does not exist"),
    (["ckpt={d}/empty_dir"], "no checkpoint in"),
    (["ckpt={d}/truncated.ckpt"], "corrupt, truncated"),
    (["ckpt={d}/garbage.ckpt"], "corrupt, truncated"),
    (["ckpt={d}/foreign.ckpt"], "not a lit-gpt-char checkpoint"),
    (["ckpt={run}", "prompt='the kingé'"], "not in the model's vocabulary: 'é'"),
    (["ckpt={run}", "prompt_file={d}/empty_prompt.txt"], "is empty"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_explained_without_traceback(args, message, bad_files, trained_run, capsys):
    code = run_main(sample.main, *[a.format(d=bad_files, run=trained_run) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err, err


@pytest.mark.slow
def test_bad_input_from_the_real_command_line(bad_files):
    r = run_cli("sample", f"ckpt={bad_files}/truncated.ckpt")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: cannot read") and len(r.stderr.strip().splitlines()) == 1


def test_unknown_characters_can_be_skipped(trained_run, capsys):
    code = run_main(sample.main, f"ckpt={trained_run}", "prompt='the kingé'", "on_unknown=skip", "max_new_tokens=10")
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("the king") and "é" not in out


# What the sampling, serving and evaluating paths may not import unless compile=true: the compiler (~1.2 s of
# start-up here), Lightning, matplotlib, or Hydra's sweeper and launcher plugins.
HEAVY = ("torch._dynamo", "torch._inductor", "sympy", "lightning", "matplotlib", "hydra_plugins", "optuna")


def imported(stderr: str) -> set[str]:
    """The modules `python -X importtime` reports."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))


@pytest.mark.slow
def test_sample_evaluate_and_serve_leave_the_compiler_and_lightning_unimported(trained_run, tmp_path):
    import subprocess
    import sys

    from helpers import REPO, clean_env

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-X", "importtime", *args], cwd=tmp_path, env=clean_env(), capture_output=True, text=True
        )

    r = run("-m", "lit_gpt_char.sample", f"ckpt={trained_run}", "max_new_tokens=20", "precision=int8")
    assert r.returncode == 0 and "lit_gpt_char.core.generation" in imported(r.stderr), r.stderr[-2000:]
    assert heavy(imported(r.stderr)) == []
    r = run("-m", "lit_gpt_char.evaluate", f"ckpt={trained_run}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert heavy(imported(r.stderr)) == []
    serving = (  # what serve runs up to uvicorn's loop, and one request through the app
        "from starlette.testclient import TestClient; from lit_gpt_char import serve; "
        "from lit_gpt_char.playground import make_app; from lit_gpt_char.loading import load_generator; "
        f"gen = load_generator({str(trained_run)!r}); "
        "r = TestClient(make_app(gen, {})).post('/generate', json={'prompt': 'a', 'max_new_tokens': 5}); "
        "assert r.status_code == 200, r.text"
    )
    r = run("-c", serving)
    assert r.returncode == 0, r.stderr[-2000:]
    assert heavy(imported(r.stderr)) == []
    # The check can fail: a module that imports the compiler shows it (as a compile=true sample would,
    # after a cold compile of ~15 s).
    r = run("-c", "import lit_gpt_char.core.text_generator, torch._dynamo")
    assert r.returncode == 0 and "torch._dynamo" in heavy(imported(r.stderr)), r.stderr[-2000:]
    assert REPO.is_dir()


def test_compile_auto_is_a_rule_of_length_and_a_bad_value_is_one_line(monkeypatch, capsys):
    from lit_gpt_char.core import text_generator as generation

    cpu = torch.device("cpu")
    assert generation.resolve_compile(True, cpu, 1) and not generation.resolve_compile(False, cpu, 10**9)
    assert not generation.resolve_compile("auto", cpu, generation.COMPILE_PAYS - 1)
    assert generation.resolve_compile("auto", cpu, generation.COMPILE_PAYS) == bool(
        __import__("shutil").which("c++") or __import__("shutil").which("g++")
    )
    monkeypatch.setattr(generation.shutil, "which", lambda name: None)  # no C++ compiler: inductor cannot run
    assert not generation.resolve_compile("auto", cpu, 10**9)
    assert run_main(sample.main, "ckpt=x", "compile=maybe") == 2
    assert "compile=maybe: must be auto, true or false" in capsys.readouterr().err
