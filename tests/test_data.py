import pytest
import torch

from lit_gpt_char.core.windows import IGNORE
from lit_gpt_char.errors import UserError
from lit_gpt_char.training.data import DataConfig, RandomWindows, TextDataModule, ValWindows, ensure_corpus

SHAKESPEARE_SHA256 = DataConfig().sha256


def test_real_corpus_split_sizes(real_corpus, tmp_path):
    dm = TextDataModule(data_dir=str(real_corpus.parent), block_size=256, tokenizer_path=str(tmp_path / "tok.json"))
    assert dm.cfg == DataConfig()  # the defaults are Tiny Shakespeare's
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_data), len(dm.val_data)) == (1_003_854, 111_540)
    assert dm.tokenizer.vocab_size == 65
    assert (tmp_path / "tok.json").is_file()


def test_train_windows_are_shifted_targets_and_seeded():
    data = torch.arange(1000) % 251
    a = RandomWindows(data.to(torch.uint8), block_size=8, batch_size=4, batches_per_epoch=3, seed=1)
    x, y = next(iter(a))
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal((x + 1) % 251, y)  # consecutive ids in this data
    b = RandomWindows(data.to(torch.uint8), block_size=8, batch_size=4, batches_per_epoch=3, seed=1)
    assert torch.equal(next(iter(b))[0], x)
    assert len(a) == 3


def test_train_windows_state_dict_resumes_the_same_stream():
    data = torch.randint(0, 50, (5000,), dtype=torch.uint8)
    a = RandomWindows(data, 16, 4, 10, seed=3)
    it = iter(a)
    for _ in range(5):
        next(it)
    state = a.state_dict()
    expected = [next(it)[0] for _ in range(3)]
    b = RandomWindows(data, 16, 4, 10, seed=3)
    b.load_state_dict(state)
    it_b = iter(b)
    got = [next(it_b)[0] for _ in range(3)]
    assert all(torch.equal(e, g) for e, g in zip(expected, got))


@pytest.mark.parametrize("repeat", [None, 4])
def test_other_ranks_resume_their_own_stream_from_rank_zeros_state(repeat):
    """A checkpoint holds rank 0's loader state; rank 1 (seed + 1000) must go on with its own windows."""
    data = torch.randint(0, 50, (5000,), dtype=torch.uint8)
    rank0, rank1 = (RandomWindows(data, 16, 4, 10, seed=3 + 1000 * r, repeat_batches=repeat) for r in (0, 1))
    for _ in range(7):
        rank0.draw(), rank1.draw()
    saved = rank0.state_dict()
    expected = [rank1.draw()[0] for _ in range(6)]
    resumed = RandomWindows(data, 16, 4, 10, seed=1003, repeat_batches=repeat)
    resumed.load_state_dict(saved)
    assert resumed.drawn == 7
    assert all(torch.equal(e, resumed.draw()[0]) for e in expected)


@pytest.mark.parametrize(
    "n, block, world", [(1000, 64, 1), (1000, 64, 3), (1000, 64, 5), (129, 64, 2), (65, 64, 1), (40, 64, 2)]
)
def test_val_windows_score_every_target_once_and_every_rank_runs_as_many_batches(n, block, world):
    data = torch.arange(n, dtype=torch.int32)
    seen, shapes = [], []
    for rank in range(world):
        vw = ValWindows(data, block, batch_size=4, rank=rank, world_size=world)
        shapes.append([tuple(x.shape) for x, _ in vw])
        scored = 0
        for x, y in vw:
            real = y != IGNORE  # the rest is padding: a short last window, or a rank's missing window
            assert torch.equal(y[real], x[real] + 1)
            seen += y[real].tolist()
            scored += int(real.sum())
        assert scored == vw.num_targets
    assert sorted(seen) == list(range(1, n))
    assert all(s == shapes[0] for s in shapes), shapes  # a collective per forward (FSDP) cannot desync


def test_val_max_batches_caps_windows():
    data = torch.arange(10_000)
    vw = ValWindows(data, 10, batch_size=4, max_batches=3)
    assert len(vw) == 3 and vw.num_targets == 120


def test_the_train_split_sample_is_fixed_seeded_and_as_large_as_validation(corpus):
    def loaders(seed: int, **data) -> list:
        dm = TextDataModule({"path": str(corpus), "batch_size": 8, **data}, block_size=32, seed=seed)
        dm.setup("fit")
        return dm.val_dataloader()

    val, sample = loaders(1)
    x, y = next(iter(sample))
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert len(sample.windows) == len(val.windows) and sample.num_targets == 32 * len(val.windows)
    assert torch.equal(sample.windows, loaders(1)[1].windows)  # the same windows at every validation
    assert not torch.equal(sample.windows, loaders(2)[1].windows)
    assert len(loaders(1, train_sample_chars=100)[1].windows) == 4  # ceil(100 / 32)
    assert isinstance(loaders(1, train_sample_chars=0), ValWindows)  # off: the val split only
    capped = loaders(1, val_max_batches=2)
    assert len(capped[0]) == len(capped[1]) == 2


def test_checksum_mismatch_names_file_and_fix(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare")
    with pytest.raises(UserError, match=r"checksum mismatch.*delete it to download it again"):
        ensure_corpus(None, tmp_path, "tinyshakespeare.txt", "http://127.0.0.1:9/x", SHAKESPEARE_SHA256)


def test_offline_error_says_where_to_put_the_file(tmp_path):
    with pytest.raises(UserError) as e:
        ensure_corpus(None, tmp_path / "d", "tinyshakespeare.txt", "http://127.0.0.1:9/input.txt", SHAKESPEARE_SHA256)
    assert str(tmp_path / "d" / "tinyshakespeare.txt") in str(e.value)
    assert "or pass path=/path/to/text.txt" in str(e.value)  # core's name; the train command's below
    assert not list((tmp_path / "d").glob("*")), "no partial download is left behind"


def test_own_text_file(tmp_path, corpus):
    dm = TextDataModule({"path": str(corpus)}, block_size=32)
    dm.setup()
    assert dm.tokenizer.chars == sorted(set(corpus.read_text()))
    assert len(dm.train_data) + len(dm.val_data) == len(corpus.read_text())


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"\xff\xfe abc" * 100, r"not UTF-8 .* train on its bytes: data\.unit=byte$"),
        (b"abc" * 20, "fewer than one window"),
    ],
)
def test_bad_corpus_files(tmp_path, content, message):
    (tmp_path / "c.txt").write_bytes(content)
    with pytest.raises(UserError, match=message):
        TextDataModule({"path": str(tmp_path / "c.txt")}, block_size=32).setup()


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TextDataModule({"path": str(tmp_path / "nope.txt")}).prepare_data()


@pytest.mark.parametrize(
    "data, block_size, message", [({"batch_size": 0}, 8, "data.batch_size=0"), ({}, -3, "model.block_size=-3")]
)
def test_bad_sizes(data, block_size, message):
    with pytest.raises(UserError, match=message):
        TextDataModule(data, block_size=block_size)


def test_text_without_a_path_says_data_path_is_required(tmp_path):
    with pytest.raises(UserError, match=r"^path is required: pass path=FILE"):
        ensure_corpus(None, tmp_path, "tinyshakespeare.txt", None, None)
    with pytest.raises(UserError, match=r"^data\.path is required: pass data\.path=FILE"):
        ensure_corpus(None, tmp_path, "tinyshakespeare.txt", None, None, key=DataConfig.key)
    with pytest.raises(UserError, match=r"^data\.path is required: pass data\.path=FILE"):
        TextDataModule({"url": None}).prepare_data()
