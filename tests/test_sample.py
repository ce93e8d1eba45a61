"""`python -m lit_gpt_char.sample` end to end, and every bad input it must explain."""

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_sample_cli_stdout_is_only_text(trained_run, tmp_path):
    out = tmp_path / "samples.txt"
    r = run_cli("sample", f"ckpt={trained_run}", "prompt='the king'", "max_new_tokens=200", "num_samples=2",
                "seed=5", f"out={out}", "stream=false")
    assert r.returncode == 0, r.stderr
    samples = [s.strip("\n") for s in r.stdout.split("\n") if not s.startswith("=" * 20)]
    assert r.stdout.count("the king") >= 2
    assert "sample 1/2" in r.stdout and "sample 2/2" in r.stdout
    assert "characters/s" in r.stderr and "parameters" in r.stderr and "first character" in r.stderr
    assert "characters/s" not in r.stdout
    assert out.read_text().count("the king") >= 2
    # Same seed, same text; streaming prints the same characters.
    again = run_cli("sample", f"ckpt={trained_run}", "prompt='the king'", "max_new_tokens=200", "num_samples=2",
                    "seed=5", "stream=true")
    assert again.returncode == 0 and again.stdout == r.stdout, (again.stdout, r.stdout)
    assert samples


def test_sample_longer_than_block_size(trained_run):
    r = run_cli("sample", f"ckpt={trained_run}", "max_new_tokens=300", "temperature=0")  # block_size is 32
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) >= 300


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
    (["ckpt={run}", "temperature=-1"], "temperature=-1"),
    (["ckpt={run}", "top_p=0"], "top_p=0"),
    (["ckpt={run}", "top_p=1.5"], "top_p=1.5"),
    (["ckpt={run}", "top_k=0"], "top_k=0"),
    (["ckpt={run}", "max_new_tokens=-5"], "max_new_tokens=-5"),
    (["ckpt={run}", "num_samples=0"], "num_samples=0"),
    (["ckpt={run}", "prompt_file={d}/empty_prompt.txt"], "is empty"),
    ([], "no checkpoint given"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_explained_without_traceback(args, message, bad_files, trained_run):
    r = run_cli("sample", *[a.format(d=bad_files, run=trained_run) for a in args])
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_characters_can_be_skipped(trained_run):
    r = run_cli("sample", f"ckpt={trained_run}", "prompt='the kingé'", "on_unknown=skip", "max_new_tokens=10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the king") and "é" not in r.stdout
