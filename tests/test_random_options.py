"""Property tests: random overrides for `sample` and `train` (types, ranges, strings, NaN) either run
or end with exit status 2 and one `error:` line; never a traceback, a hang or a signal.

Values that are valid but costly (a million layers, a billion steps) are not drawn: each example
must stay a tiny, bounded run. Those limits are tested deterministically elsewhere."""

from __future__ import annotations

import math
import os

import pytest
from helpers import TINY, run_main
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lit_gpt_char import sample, train

pytestmark = pytest.mark.slow
SCALE = float(os.environ.get("PROPERTY_SCALE", "1"))  # e.g. 10 for a longer hunt than CI's


def hydra_value(v: object) -> str:
    """A Python value as it is typed on a Hydra command line."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, list):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    return str(v)


def nasty(small: st.SearchStrategy) -> st.SearchStrategy:
    """`small` (the valid-and-cheap values) mixed with wrong types, NaN, infinities, huge numbers."""
    return st.one_of(
        small,
        st.sampled_from([0, -1, -(2**70), 2**64, 2**70, 10**12]),
        st.floats(allow_nan=True, allow_infinity=True, width=64),
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e-300, 1e300, -0.5]),
        st.booleans(),
        st.none(),
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
        st.lists(st.integers(-3, 3), max_size=3),
    )


def check(code: int, err: str) -> None:
    assert "Traceback" not in err, err[-3000:]
    assert code in (0, 2), (code, err[-3000:])
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, err[-3000:]


SAMPLE_KEYS = {
    "max_new_tokens": nasty(st.integers(0, 40)),
    "temperature": nasty(st.floats(0, 3)),
    "top_k": nasty(st.integers(1, 80)),
    "top_p": nasty(st.floats(0, 1)),
    "seed": nasty(st.integers(0, 2**64 - 1)),
    "slide": nasty(st.integers(1, 40)),
    "num_samples": nasty(st.integers(1, 3)),
    "precision": nasty(st.sampled_from(["auto", "32", "bf16", "int8", "16"])),
    "on_unknown": nasty(st.sampled_from(["error", "skip"])),
    "stream": nasty(st.booleans()),
    "device": nasty(st.sampled_from(["auto", "cpu", "cuda", "meta", "mps"])),
    "prompt": st.text(max_size=10),
}
SAMPLE_BOUNDED = {"max_new_tokens": 40, "num_samples": 3}  # caps that keep a valid draw cheap


@settings(max_examples=int(40 * SCALE), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(st.sampled_from(sorted(SAMPLE_KEYS)), st.none(), min_size=1, max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({k: SAMPLE_KEYS[k] for k in keys})
    )
)
def test_sample_with_random_options(trained_run, capsys, overrides):
    capsys.readouterr()
    args = [f"{k}={hydra_value(v)}" for k, v in overrides.items()]
    for key, cap in SAMPLE_BOUNDED.items():  # a valid but large value is refused up front instead
        v = overrides.get(key)
        assume(not (isinstance(v, int) and not isinstance(v, bool) and cap < v <= 100_000_000))
    code = run_main(sample.main, f"ckpt={trained_run}", "max_new_tokens=20", *args)
    check(code, capsys.readouterr().err)


TRAIN_KEYS = {
    "model.n_layer": nasty(st.integers(1, 2)),
    "model.n_head": nasty(st.integers(1, 4)),
    "model.n_embd": nasty(st.sampled_from([8, 16, 24, 30])),
    "model.block_size": nasty(st.integers(1, 48)),
    "model.dropout": nasty(st.floats(0, 1)),
    "model.bias": nasty(st.booleans()),
    "optim.lr": nasty(st.floats(0, 0.1)),
    "optim.betas": nasty(st.lists(st.floats(0, 1), min_size=1, max_size=3)),
    "optim.warmup_steps": nasty(st.integers(0, 10)),
    "optim.weight_decay": nasty(st.floats(0, 1)),
    "data.batch_size": nasty(st.integers(1, 8)),
    "data.val_max_batches": nasty(st.integers(1, 3)),
    "data.train_fraction": nasty(st.floats(0, 1)),
    "trainer.max_steps": nasty(st.integers(-1, 4)),
    "trainer.val_check_interval": nasty(st.integers(1, 4)),
    "trainer.gradient_clip_val": nasty(st.floats(0, 2)),
    "seed": nasty(st.integers(0, 2**32)),
}
TRAIN_BOUNDED = {
    "model.n_layer": 2,
    "model.n_embd": 64,
    "model.block_size": 64,
    "data.batch_size": 8,
    "data.val_max_batches": 3,
    "trainer.max_steps": 4,
    "optim.warmup_steps": 10**6,
}


@settings(max_examples=int(15 * SCALE), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(st.sampled_from(sorted(TRAIN_KEYS)), st.none(), min_size=1, max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({k: TRAIN_KEYS[k] for k in keys})
    )
)
def test_train_with_random_options(corpus, tmp_path_factory, capsys, overrides):
    capsys.readouterr()
    for key, cap in TRAIN_BOUNDED.items():
        v = overrides.get(key)
        assume(not (isinstance(v, int) and not isinstance(v, bool) and cap < v < 2**20))  # valid, not tiny
    assume(overrides.get("trainer.max_steps") != -1)  # valid (train by epochs), but a thousand steps
    run = tmp_path_factory.mktemp("prop") / "run"
    args = [f"{k}={hydra_value(v)}" for k, v in overrides.items()]
    code = run_main(
        train.main,
        *TINY,
        f"data.path={corpus}",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "data.val_max_batches=2",
        "callbacks.generate_samples.max_new_tokens=5",
        f"hydra.run.dir={run}",
        *args,
    )
    check(code, capsys.readouterr().err)
