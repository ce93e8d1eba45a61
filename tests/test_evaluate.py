"""Scoring: the windows (consecutive, sliding, padded across ranks) and `python -m lit_gpt_char.evaluate`
on a trained run, its own val split, any text, every precision, and every bad input it must explain."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from helpers import run_cli, run_main, scalars

from lit_gpt_char import evaluate
from lit_gpt_char.core.evaluation import score
from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.core.windows import IGNORE, Windows, consecutive_windows, loss_sum, sliding_windows
from lit_gpt_char.export import export
from lit_gpt_char.loading import DATA_STATE_KEY


# --- the windows -----------------------------------------------------------------------------------------------
def targets_and_context(data: torch.Tensor, windows: torch.Tensor, block: int) -> dict[int, int]:
    """target id -> characters of context it was scored with (data = arange, so ids are positions)."""
    out = {}
    for x, y in Windows(data, windows, block, batch_size=3):
        for row_x, row_y in zip(x, y):
            for i in torch.nonzero(row_y != IGNORE).flatten().tolist():
                assert int(row_y[i]) not in out, "scored twice"
                assert int(row_y[i]) == int(row_x[i]) + 1
                out[int(row_y[i])] = i + 1
    return out


@pytest.mark.parametrize("n, block", [(200, 16), (17, 16), (10, 16), (2, 16), (161, 16)])
@pytest.mark.parametrize("stride", [1, 5, 8, 16])
def test_sliding_windows_score_every_character_once_with_at_least_block_minus_stride_context(n, block, stride):
    seen = targets_and_context(torch.arange(n), sliding_windows(n - 1, block, stride), block)
    assert sorted(seen) == list(range(1, n))
    assert all(context >= min(target, block - stride + 1) for target, context in seen.items())


def test_consecutive_windows_are_training_s_val_windows():
    seen = targets_and_context(torch.arange(100), consecutive_windows(99, 16), 16)
    assert sorted(seen) == list(range(1, 100))
    assert [seen[t] for t in (1, 16, 17, 96, 97, 99)] == [1, 16, 1, 16, 1, 3]  # context restarts every 16


def tiny_model(block: int = 16) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=13, block_size=block, n_layer=1, n_head=2, n_embd=16)).eval()


def summed(model: GPT, batches: Windows) -> tuple[torch.Tensor, torch.Tensor]:
    """What the LightningModule accumulates over one rank's validation batches."""
    total, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long)
    with torch.no_grad():
        for x, y in batches:
            s, c = loss_sum(model(x)[0], y)
            total, count = total + s, count + c
    return total, count


@pytest.mark.parametrize("world", [2, 3])
def test_padding_a_rank_changes_its_loss_by_not_a_single_bit(world):
    """A rank with a window fewer gets a masked one: its sum and count are those of its windows alone."""
    model, block = tiny_model(), 16
    data = torch.randint(13, (block * 7 + 6,))  # 8 windows, the last one short: no world size divides them
    windows = consecutive_windows(len(data) - 1, block)
    sums = []
    for rank in range(world):
        padded = Windows(data, windows, block, batch_size=1, rank=rank, world_size=world)
        plain = Windows(data, windows[rank::world], block, batch_size=1)
        assert len(padded) == math.ceil(len(windows) / world)
        got, want = summed(model, padded), summed(model, plain)
        assert got[0].item() == want[0].item() and got[1].item() == want[1].item()  # bit for bit
        sums.append(got)
    whole = score(model, data, batch_size=1)
    assert sum(int(c) for _, c in sums) == whole.chars == len(data) - 1
    assert sum(float(s) for s, _ in sums) / whole.chars == pytest.approx(whole.loss, rel=1e-12)


def test_the_loss_does_not_depend_on_the_batch_size():
    model, data = tiny_model(), torch.randint(13, (300,))
    losses = {b: score(model, data, batch_size=b).loss for b in (1, 4, 64)}
    assert losses[1] == pytest.approx(losses[4], rel=1e-6) and losses[1] == pytest.approx(losses[64], rel=1e-6)


# --- the command on a trained run --------------------------------------------------------------------------------
def run_evaluate(capsys, *args: str) -> dict:
    code = run_main(evaluate.main, *args)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, captured.out  # stdout: one JSON line, nothing else
    result = json.loads(lines[0])
    result["_table"] = " ".join(re.sub("[│┃┌┐└┘─┬┴├┤┼]", " ", captured.err).split())  # the table's words
    return result


def test_evaluate_reproduces_the_runs_final_val_loss(trained_run, corpus, capsys):
    (_, logged) = scalars(trained_run)["val/loss"][-1]
    r = run_evaluate(capsys, f"ckpt={trained_run}/checkpoints/last.ckpt")
    assert abs(r["loss"] - logged) < 1e-4, (r["loss"], logged)
    n_val = len(corpus.read_text()) - int(len(corpus.read_text()) * 0.9)
    assert r["chars"] == n_val - 1 and r["split"] == "val" and r["corpus"] == str(corpus.resolve())
    assert r["bpc"] == pytest.approx(r["loss"] / math.log(2)) and r["ppl"] == pytest.approx(math.exp(r["loss"]))
    assert (r["scoring"], r["stride"], r["precision"]) == ("consecutive", None, "32")
    assert "as training's val/loss" in r["_table"] and f"{r['loss']:.4f}" in r["_table"]
    train = run_evaluate(capsys, f"ckpt={trained_run}", "split=train")
    assert train["chars"] == len(corpus.read_text()) - n_val - 1 and train["split"] == "train"


def test_sliding_windows_score_a_trained_model_lower(trained_run, capsys):
    """With more context per character a model that uses its context predicts better: windows sliding by
    half or a quarter of the context score lower than consecutive ones. (Not any stride on any model: a
    small model that got worse at the end of its context, where a stride of 1 scores everything, would
    not; the README says so.)"""
    consecutive = run_evaluate(capsys, f"ckpt={trained_run}")
    for stride in (16, 8):
        sliding = run_evaluate(capsys, f"ckpt={trained_run}", f"stride={stride}")
        assert sliding["chars"] == consecutive["chars"] and sliding["scoring"] == "sliding"
        assert sliding["loss"] < consecutive["loss"], (stride, sliding["loss"], consecutive["loss"])
        assert "at least" in sliding["_table"]


@pytest.mark.parametrize("precision, words", [("bf16", "bfloat16"), ("int8", "int8 weights")])
def test_lower_precisions_run_and_cost_little(trained_run, capsys, precision, words):
    full = run_evaluate(capsys, f"ckpt={trained_run}")
    low = run_evaluate(capsys, f"ckpt={trained_run}", f"precision={precision}")
    assert low["precision"] == precision and words in low["_table"]
    assert low["loss"] != full["loss"] and abs(low["loss"] - full["loss"]) < 0.05


def test_any_text_file_and_unknown_characters_skipped(trained_run, corpus, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the king sings tonight.\nthe queen weeps again?é\n")
    r = run_evaluate(capsys, f"ckpt={trained_run}", f"text={text}", "on_unknown=skip", "batch_size=1")
    assert r["chars"] == len(text.read_text()) - 2 and r["skipped"] == 1 and r["split"] is None
    assert r["text"] == str(text) and "1 unknown characters dropped" in r["_table"]


def test_a_run_moved_to_another_machine_finds_its_corpus_in_the_data_dir(
    trained_run, corpus, tmp_path, monkeypatch, capsys
):
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    record = ckpt[DATA_STATE_KEY]
    record["file"] = record["data"]["path"] = str(tmp_path / "elsewhere" / corpus.name)
    torch.save(ckpt, tmp_path / "moved.ckpt")
    monkeypatch.setenv("LIT_GPT_CHAR_DATA_DIR", str(corpus.parent))
    r = run_evaluate(capsys, f"ckpt={tmp_path / 'moved.ckpt'}")
    assert r["corpus"] == str(corpus.parent / corpus.name)


@pytest.fixture(scope="module")
def bad(tmp_path_factory, trained_run, corpus):
    d = tmp_path_factory.mktemp("bad")
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    (d / "empty.txt").write_text("")
    (d / "one.txt").write_text("t")
    (d / "unknown.txt").write_text("the kingé")
    (d / "only_unknown.txt").write_text("éé")
    (d / "latin1.txt").write_bytes("the kingé".encode("latin-1"))
    (d / "a_dir").mkdir()
    record = ckpt[DATA_STATE_KEY]

    def with_record(**changes):
        data = {**record["data"], **changes.pop("data", {})}
        return {**ckpt, DATA_STATE_KEY: {**record, **changes, "data": data}}

    old = {k: v for k, v in ckpt.items() if k != DATA_STATE_KEY}
    torch.save(old, d / "old.ckpt")
    gone = str(d / "gone" / "x.txt")
    torch.save(with_record(file=gone, corpus="x.txt", data={"path": gone}), d / "moved.ckpt")
    changed = d / "changed.txt"
    changed.write_text(corpus.read_text() + "!")
    torch.save(with_record(file=str(changed), data={"path": str(changed)}), d / "changed.ckpt")
    torch.save({**ckpt, DATA_STATE_KEY: {"file": str(corpus)}}, d / "damaged.ckpt")
    export(trained_run, d / "export")
    return d


BAD = [
    (["ckpt={d}/missing.ckpt"], "does not exist"),
    ([], "ckpt is required: pass ckpt=..."),
    (["ckpt={run}", "text={d}/unknown.txt"], "1 character(s) not in the model's vocabulary: 'é'. Pass on_unknown=skip"),
    (["ckpt={run}", "text={d}/only_unknown.txt", "on_unknown=skip"], "after dropping unknown characters, it has 0"),
    (["ckpt={run}", "text={d}/empty.txt"], "is empty"),
    (["ckpt={run}", "text={d}/one.txt"], "has 1 character(s); scoring needs at least 2"),
    (["ckpt={run}", "text={d}/missing.txt"], "does not exist or is not a file"),
    (["ckpt={run}", "text={d}/a_dir"], "does not exist or is not a file"),
    (["ckpt={run}", "text={d}/latin1.txt"], "is not UTF-8 text"),
    (["ckpt={run}", "stride=33"], "stride=33: must be in [1, block_size=32]"),
    (["ckpt={run}", "stride=0"], "stride=0: must be null or an integer >= 1"),
    (["ckpt={run}", "stride=2.5"], "stride=2.5: must be null or an integer"),
    (["ckpt={run}", "batch_size=0"], "batch_size=0: must be an integer in [1, 1048576]"),
    (["ckpt={run}", "precision=fp8"], "precision=fp8: must be one of 32, bf16, int8"),
    (["ckpt={run}", "split=test"], "was trained with data.test_size=0, which holds out no test split"),
    (["ckpt={run}", "split=dev"], "split=dev: must be null or one of train, val, test"),
    (["ckpt={run}", "split=val", "text={d}/one.txt"], "give one of them"),
    (["ckpt={run}", "on_unknown=ignore"], "on_unknown=ignore: must be one of error, skip"),
    (["ckpt={run}", "device=cuda:7"], "device=cuda:7"),
    (["ckpt={d}/old.ckpt"], "does not record which corpus it was trained on"),
    (["ckpt={d}/export"], "does not record which corpus it was trained on"),
    (["ckpt={d}/moved.ckpt"], "which is not there"),
    (["ckpt={d}/changed.ckpt"], "is not the text"),
    (["ckpt={d}/damaged.ckpt"], "does not record which corpus it was trained on"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_error_line(args, message, bad, trained_run, tmp_path, monkeypatch, capsys):
    if message == "device=cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    monkeypatch.setenv("LIT_GPT_CHAR_DATA_DIR", str(tmp_path))  # no fallback copy of any corpus there
    code = run_main(evaluate.main, *[a.format(d=bad, run=trained_run) for a in args])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err


def test_running_out_of_memory_says_to_lower_the_batch_size(trained_run, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(evaluate, "score", no_memory)
    assert run_main(evaluate.main, f"ckpt={trained_run}", "batch_size=100000") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: batch_size=100000: out of memory on cpu") and len(err.splitlines()) == 1


def test_old_checkpoints_and_exports_still_score_a_text_file(bad, corpus, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(corpus.read_text()[:500])
    for ckpt in ("old.ckpt", "export"):
        assert run_evaluate(capsys, f"ckpt={bad / ckpt}", f"text={text}")["chars"] == 499


@pytest.mark.slow
def test_the_real_command_line(trained_run, bad, tmp_path):
    r = run_cli("evaluate", f"ckpt={trained_run}", "stride=16", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.splitlines()) == 1 and json.loads(r.stdout)["stride"] == 16
    assert "sliding windows of 32 characters every 16" in r.stderr and "bits per character" in r.stderr
    r = run_cli("evaluate", f"ckpt={bad}/old.ckpt")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # no run directory, no log: evaluating writes nothing
