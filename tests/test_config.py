"""Configs: every option composes, resolves and instantiates; the schemas are the one source of
defaults, types and ranges; a bad value anywhere is one `error:` line (in-process, no subprocess)."""

from __future__ import annotations

import dataclasses
from importlib.resources import files

import hydra
import pytest
import torch
from helpers import compose_config, compose_train, require, run_main
from omegaconf import OmegaConf

from lit_gpt_char import bench, evaluate, sample, serve, train
from lit_gpt_char.core.generation import SamplingOptions
from lit_gpt_char.core.model import GPTConfig
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import build, describe
from lit_gpt_char.training.callbacks.curves import PlotCurvesConfig
from lit_gpt_char.training.callbacks.samples import GenerateSamples, GenerateSamplesConfig
from lit_gpt_char.training.config import SCHEMAS, PathsConfig, TrainConfig, TrainerConfig
from lit_gpt_char.training.data import DataConfig, TextDataModule
from lit_gpt_char.training.module import LitGPT, ModelConfig
from lit_gpt_char.training.optim import OptimConfig
from lit_gpt_char.training.run import check_config

CONF = files("lit_gpt_char.conf")
GROUPS = ["model", "optim", "data", "trainer", "callbacks", "logger", "experiment", "debug"]


def choices(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


CASES = [[]] + [[f"{g}={o}"] for g in GROUPS for o in choices(g)]


def test_every_group_has_options():
    for g in GROUPS:
        assert choices(g), g


@pytest.mark.parametrize("overrides", CASES, ids=[" ".join(c) or "default" for c in CASES])
def test_config_composes_resolves_and_instantiates(overrides, tmp_path, corpus):
    if overrides == ["data=text"]:
        overrides = ["data=text", f"data.path={corpus}"]
    cfg = compose_train(overrides, tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        cfg.trainer.accelerator = "cpu"  # (a GPU config is refused here:) the rest of it is still checked and built
    s = check_config(cfg)  # and every value is in range
    # Built as the train command builds them: Hydra's _target_, and what other groups decide.
    hydra.utils.instantiate(cfg.data, _partial_=True)(block_size=s.model.block_size)
    module = hydra.utils.instantiate(cfg.model, _partial_=True)(list("abcdefg"), optim=s.optim)
    assert isinstance(module, LitGPT) and module.model.config.n_layer == cfg.model.n_layer
    for module, target in (("wandb", "Wandb"), ("mlflow", "MLflow")):  # optional extras: .[loggers]
        if any(target in str(c.get("_target_")) for c in (cfg.get("logger") or {}).values()):
            require(module)
    for group in ("callbacks", "logger"):
        for c in (cfg.get(group) or {}).values():
            if c:
                hydra.utils.instantiate(c)
    if "FSDPStrategy" in str(cfg.trainer.get("strategy")) and not torch.cuda.is_available():
        hydra.utils.instantiate(cfg.trainer.strategy)  # FSDP refuses CPUs (see test_ddp.py)
        return
    hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)


# --- one source of truth ---------------------------------------------------------------------------------
def test_python_defaults_are_the_cli_defaults(tmp_path):
    """What `python -m lit_gpt_char.train` composes equals what the Python classes default to."""
    cfg = compose_train([], tmp_path)
    s = check_config(cfg)
    assert s.model == ModelConfig() and s.optim == OptimConfig() and s.data == DataConfig()
    assert dataclasses.replace(s.paths, output_dir="x", data_dir=None) == dataclasses.replace(
        PathsConfig(log_dir=s.paths.log_dir), output_dir="x"
    )
    assert build(GenerateSamplesConfig, cfg.callbacks.generate_samples) == GenerateSamplesConfig(every_n_steps=500)
    assert build(PlotCurvesConfig, cfg.callbacks.plot_curves).smoothing == PlotCurvesConfig().smoothing
    assert s.run.seed == TrainConfig().seed and s.trainer.max_steps == TrainerConfig(precision="32-true").max_steps
    # The notebook API builds the CLI's model and optimizer.
    module = LitGPT(list("abc"))
    assert module.optim == s.optim
    assert {k: v for k, v in module.model.config.to_dict().items() if k != "vocab_size"} == {
        k: v for k, v in s.model.to_dict().items() if k not in ("compile", "vocab_size")
    }
    # The generation API samples as the sample command does.
    sample_cfg = build(sample.SampleConfig, compose_config("sample", ["ckpt=x"]))
    assert {f.name: getattr(sample_cfg, f.name) for f in dataclasses.fields(SamplingOptions)} == dataclasses.asdict(
        SamplingOptions()
    )


def test_hydra_builds_the_data_module_and_the_lightning_module_from_their_groups(corpus, tmp_path):
    """data.* and model.* name their class (`_target_`, as trainer.*, callbacks and loggers do); the
    run-time values (the model's context for the data, the corpus's vocabulary for the model) come at
    the call (`_partial_`); checkpoints hold the options only, and the notebook API builds the same."""
    cfg = compose_train([f"data.path={corpus}", "data.batch_size=8", "model.n_layer=1", "model.n_embd=32"], tmp_path)
    assert cfg.data._target_ == "lit_gpt_char.training.data.TextDataModule"
    assert cfg.model._target_ == "lit_gpt_char.training.module.LitGPT"
    dm = hydra.utils.instantiate(cfg.data, _partial_=True)(block_size=cfg.model.block_size, seed=3)
    assert isinstance(dm, TextDataModule) and dm.cfg.batch_size == 8 and dm.cfg.path == str(corpus) and dm.seed == 3
    module = hydra.utils.instantiate(cfg.model, _partial_=True)(dm.tokenizer.chars)
    assert module.model.config.n_layer == 1 and module.model.config.vocab_size == dm.tokenizer.vocab_size
    assert "_target_" not in module.hparams["model"] and "_target_" not in dm.corpus_meta()["data"]
    same = LitGPT(dm.tokenizer.chars, n_layer=1, n_embd=32)
    assert same.hparams["model"] == module.hparams["model"]
    with pytest.raises(UserError, match=r"^model.n_layer=0: must be"):  # by name, checked the same way
        LitGPT(list("ab"), {"n_embd": 32}, n_layer=0)


def test_model_config_is_gpt_config_plus_compile_with_the_vocabulary_from_the_corpus():
    """model.* is GPTConfig itself (a subclass: its defaults, types and ranges once) plus compile;
    vocab_size is the corpus's, so the config leaves it null and refuses a value."""
    assert issubclass(ModelConfig, GPTConfig)
    gpt = {f.name: f for f in dataclasses.fields(GPTConfig)}
    model = {f.name: f for f in dataclasses.fields(ModelConfig)}
    assert set(model) == set(gpt) | {"compile", "_target_"}
    for name in set(model) - {"compile", "vocab_size", "_target_"}:
        assert model[name].default == gpt[name].default and model[name].metadata == gpt[name].metadata
    assert ModelConfig().vocab_size is None
    with pytest.raises(UserError, match=r"model.vocab_size=100: the corpus decides"):
        ModelConfig(vocab_size=100)


def test_yaml_restates_no_schema_default():
    """A group's YAML selects its schema and overrides; a value equal to the default is a restatement."""
    for group, schema in [
        ("model", ModelConfig),
        ("optim", OptimConfig),
        ("data", DataConfig),
        ("trainer", TrainerConfig),
        ("paths", PathsConfig),
    ]:
        for path in CONF.joinpath(group).iterdir():
            if not path.name.endswith(".yaml"):
                continue
            node = OmegaConf.load(str(path))
            defaults = {f.name: f.default for f in dataclasses.fields(schema)}
            for key in node:
                value = node._get_node(key)._value()
                if key != "defaults" and key in defaults:
                    assert value != defaults[key], f"{group}/{path.name} restates {key}: {value}"


def test_every_option_has_help_and_a_description():
    schemas = [SamplingOptions, sample.SampleConfig, bench.BenchConfig, serve.ServeConfig, evaluate.EvaluateConfig]
    for schema in [*SCHEMAS.values(), *schemas]:
        hints = __import__("typing").get_type_hints(schema)
        for f in dataclasses.fields(schema):
            if f.name.startswith("_") or f.name in (
                "model",
                "optim",
                "data",
                "trainer",
                "callbacks",
                "logger",
                "paths",
            ):
                continue
            assert f.metadata.get("help"), f"{schema.__name__}.{f.name} has no help"
            assert describe(hints[f.name], f.metadata)


def test_seed_experiment_is_the_seed():
    cfg = compose_train(["experiment=seed"])
    assert (cfg.data.batch_size, cfg.model.block_size, cfg.trainer.max_steps, cfg.trainer.val_check_interval) == (
        64,
        256,
        5000,
        500,
    )
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.dropout, cfg.seed) == (
        6,
        6,
        384,
        0.2,
        1337,
    )
    assert cfg.model.bias is True
    assert cfg.optim.lr == cfg.optim.min_lr == 3e-4 and cfg.optim.warmup_steps == 0
    assert (list(cfg.optim.betas), cfg.optim.weight_decay, cfg.trainer.gradient_clip_val) == ([0.9, 0.999], 0.01, None)


def test_nanogpt_experiment():
    cfg = compose_train(["experiment=nanogpt"])
    o = cfg.optim
    assert (o.lr, o.min_lr, o.warmup_steps, list(o.betas), o.weight_decay) == (1e-3, 1e-4, 100, [0.9, 0.99], 0.1)
    assert (cfg.trainer.gradient_clip_val, cfg.trainer.val_check_interval, cfg.trainer.max_steps) == (1.0, 250, 5000)
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.dropout, cfg.model.bias, cfg.data.batch_size) == (
        6,
        384,
        0.2,
        False,
        64,
    )


def test_short_experiment_is_the_measured_short_budget_recipe():
    """experiment=short is exactly the overrides whose budget runs docs/records.md reports."""
    short, measured = compose_train(["experiment=short"]), compose_train(["model.n_embd=128", "optim.warmup_steps=20"])
    assert OmegaConf.to_container(short) == OmegaConf.to_container(measured)
    assert short.model.n_embd == 128 and compose_train([]).model.n_embd == 192


def test_the_default_has_every_newer_part_and_gpt2_is_the_old_default():
    """The default (README "Records"): 4x192, block 128, batch 16, each newer part, Muon with weight
    decay on the wsd schedule, 3,000 steps. experiment=gpt2 is the default before them: GPT-2's
    parts, AdamW on the cosine schedule, 5,000 steps. Both build, with their own parameter counts."""
    from lit_gpt_char.core.model import GPT, GPTConfig

    default, old = compose_train([]), compose_train(["experiment=gpt2"])
    m = default.model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, default.data.batch_size) == (4, 4, 192, 128, 16)
    assert (m.pos_emb, m.norm, m.qk_norm, m.mlp, m.tie_embeddings, m.zero_init) == (
        "rope",
        "rmsnorm",
        True,
        "relu2",
        False,
        True,
    )
    o = default.optim
    assert (o.algorithm, o.schedule, o.muon_weight_decay, o.warmup_steps) == ("muon", "wsd", 0.05, 100)
    assert (default.trainer.max_steps, default.trainer.val_check_interval) == (3000, 500)
    g = old.model
    assert (g.pos_emb, g.norm, g.qk_norm, g.mlp, g.tie_embeddings, g.zero_init) == (
        "learned",
        "layernorm",
        False,
        "gelu",
        True,
        False,
    )
    assert (old.optim.algorithm, old.optim.schedule, old.optim.warmup_steps, old.trainer.max_steps) == (
        "adamw",
        "cosine",
        200,
        5000,
    )
    assert default.callbacks.ema.decay == 0.99 and old.callbacks.ema is None  # weight averaging
    old.callbacks.ema = default.callbacks.ema
    assert {k: v for k, v in old.items() if k not in ("model", "optim", "trainer")} == {
        k: v for k, v in default.items() if k not in ("model", "optim", "trainer")
    }
    fields = GPTConfig.__dataclass_fields__
    n_new, n_old = (
        GPT(GPTConfig(**{k: c.model[k] for k in fields if k in c.model} | {"vocab_size": 65})).num_params()
        for c in (default, old)
    )
    # untied head (+65 x 192) and no position table (-128 x 192); RMSNorm has no bias either way
    assert n_new - n_old == 65 * 192 - 128 * 192


@pytest.mark.parametrize(
    "cuda, cuda_bf16, cpu_bf16, amx, accelerator, expected",
    [
        (False, False, False, False, "cpu", "32-true"),  # AVX2: bf16 emulated, ~10x slower than float32
        (False, False, True, False, "cpu", "bf16-mixed"),  # AVX512-BF16
        (False, False, False, True, "auto", "bf16-mixed"),  # AMX
        (True, True, False, False, "gpu", "bf16-mixed"),  # Ampere+
        (True, False, False, False, "auto", "16-mixed"),  # older GPUs
        (True, True, False, False, "cpu", "32-true"),  # a GPU is there, but the run is on the CPU
    ],
)
def test_default_precision_is_the_fast_one_here(
    cuda, cuda_bf16, cpu_bf16, amx, accelerator, expected, monkeypatch, tmp_path
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cfg = compose_train([f"trainer.accelerator={accelerator}"], tmp_path)
    assert cfg.trainer.precision == expected
    cfg = compose_train([f"trainer.accelerator={accelerator}", "trainer.precision=32-true"], tmp_path)
    assert cfg.trainer.precision == "32-true"  # an explicit choice wins


# --- bad values: one line, exit 2, from the command line, YAML or Python alike ----------------------------
BAD_TRAIN = [
    ("model.n_layer=0", "model.n_layer=0: must be an integer in [1, 1024]"),
    ("model.n_layer=abc", "model.n_layer=abc: must be an integer in [1, 1024]"),
    ("model.n_layer=2.5", "model.n_layer=2.5: must be an integer"),
    ("model.n_embd=30 model.n_head=4", "model.n_embd=30: must be divisible by model.n_head=4"),
    ("model.dropout=1.5", "model.dropout=1.5: must be a number in [0, 1)"),
    ("model.dropout=nan", "model.dropout=nan: must be a number in [0, 1)"),
    ("model.bias=maybe", "model.bias=maybe: must be true or false"),
    ("model.block_size=-8", "model.block_size=-8: must be an integer"),
    ("model.foo=1", "model.foo: no such option"),
    ("optim.lr=0", "optim.lr=0: must be a number in (0, 10]"),  # as typed, not 0.0
    ("optim.lr=-1e-3", "must be a number in (0, 10]"),
    ("optim.lr=inf", "optim.lr=inf: must be a number in (0, 10]"),
    ("optim.betas=[0.9]", "optim.betas=[0.9]: must be a list of 2 numbers in [0, 1)"),
    ("optim.betas=[0.9,1.5]", "optim.betas=[0.9,1.5]: must be a list of 2 numbers in [0, 1)"),
    ("optim.min_lr=1", "optim.min_lr=1"),
    ("optim.warmup_steps=-1", "optim.warmup_steps=-1: must be an integer >= 0"),
    ("data.batch_size=0", "data.batch_size=0: must be an integer in [1, 1048576]"),
    ("data.val_max_batches=1.5", "data.val_max_batches=1.5: must be null or an integer >= 1"),
    ("data.val_batch_size=0", "data.val_batch_size=0"),
    ("data.train_fraction=1", "data.train_fraction=1"),
    ("data.train_sample_chars=-1", "data.train_sample_chars=-1: must be null or an integer >= 0"),
    ("callbacks.progress_log.every_n_steps=0", "callbacks.progress_log.every_n_steps=0: must be an integer >= 1"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval=0: must be an integer >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0"),
    ("trainer.max_steps=abc", "trainer.max_steps=abc: must be an integer >= -1"),
    ("trainer.precision=fp8", "trainer.precision=fp8: must be one of"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1"),
    ("seed=99999999999", "seed=99999999999: must be an integer in [0, 4294967295]"),
    ("seed=-3", "seed=-3"),
    ("resume=yes", "resume=yes: must be null or one of auto"),
    ("callbacks.generate_samples.max_new_tokens=-1", "callbacks.generate_samples.max_new_tokens=-1"),
    ("callbacks.generate_samples.temperature=hot", "callbacks.generate_samples.temperature=hot"),
    ("callbacks.plot_curves.smoothing=2", "callbacks.plot_curves.smoothing=2"),
    ("callbacks.model_checkpoint.mode=up", "callbacks.model_checkpoint: `mode` can be min, max but got up"),
    ("callbacks.ema.decay=nan", "callbacks.ema.decay=nan: must be a number in [0, 1]"),
    ("callbacks.ema.decay=2", "callbacks.ema.decay=2: must be a number in [0, 1]"),
    ("model.n_embd=30 model.n_head=2", "model.pos_emb=rope: needs an even head size"),
    (
        "experiment=nonexistent",
        "experiment=nonexistent: no such option: the choices are enwik8, gpt2, nanogpt, seed, short, text8",
    ),
    ("data=text", "data.path is required"),
]


@pytest.mark.parametrize("override, message", BAD_TRAIN, ids=[m for _, m in BAD_TRAIN])
def test_bad_train_values_are_one_error_line(override, message, corpus, tmp_path, capsys):
    # Short, in case a value is wrongly taken: 3 steps, not the recipe's 5000.
    base = [
        "trainer.accelerator=cpu",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    if not override.startswith("data=text"):
        base.append(f"data.path={corpus}")
    code = run_main(train.main, *base, *override.split())
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing ran


BAD_SAMPLE = [
    ("temperature=hot", "temperature=hot: must be a number in [0, 10000]"),
    ("temperature=nan", "temperature=nan"),
    ("temperature=-1", "temperature=-1"),
    ("top_k=2.5", "top_k=2.5: must be null or an integer >= 1"),
    ("top_k=0", "top_k=0"),
    ("top_p=0", "top_p=0"),
    ("top_p=1.5", "top_p=1.5"),
    ("max_new_tokens=abc", "max_new_tokens=abc: must be an integer"),
    ("max_new_tokens=-5", "max_new_tokens=-5"),
    ("num_samples=2.5", "num_samples=2.5: must be an integer"),
    ("num_samples=0", "num_samples=0"),
    ("seed=-1", "seed=-1"),
    ("slide=0", "slide=0"),
    ("precision=fp8", "precision=fp8: must be one of auto"),
    ("on_unknown=ignore", "on_unknown=ignore: must be one of error, skip"),
    ("stream=sometimes", "stream=sometimes"),
    ("foo=1", "foo: no such option"),
]


@pytest.mark.parametrize("override, message", BAD_SAMPLE, ids=[m for _, m in BAD_SAMPLE])
def test_bad_sample_values_are_one_error_line(override, message, capsys):
    code = run_main(sample.main, "ckpt=/nonexistent.ckpt", override)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_sample_without_ckpt_says_what_to_pass(capsys):
    assert run_main(sample.main) == 2
    assert "ckpt is required: pass ckpt=... (a .ckpt file, a training run directory" in capsys.readouterr().err


def test_bench_values_are_checked(capsys):
    assert run_main(bench.main, "mode=fast") == 2
    assert "mode=fast: must be one of train, sample" in capsys.readouterr().err


def test_python_api_checks_the_same_ranges():
    with pytest.raises(UserError, match=r"^n_layer=0: must be an integer in \[1, 1024\]"):
        GPTConfig(n_layer=0)  # core's schema names its field; the train command's names its key
    with pytest.raises(UserError, match=r"^model\.n_layer=0: must be an integer in \[1, 1024\]"):
        ModelConfig(n_layer=0)
    with pytest.raises(UserError, match=r"optim.betas=\[0.9\]: must be a list of 2 numbers"):
        LitGPT(list("ab"), optim={"betas": [0.9]})
    with pytest.raises(UserError, match=r"unknown option.*optim\.foo"):
        LitGPT(list("ab"), optim={"foo": 1})
    with pytest.raises(UserError, match=r"temperature=-1: must be a number in \[0, 10000\]"):
        SamplingOptions(temperature=-1)
    with pytest.raises(UserError, match=r"callbacks.generate_samples.top_k=0"):
        GenerateSamples(top_k=0)
    with pytest.raises(UserError, match=r"data.batch_size=true: must be an integer"):
        TextDataModule({"batch_size": True})
    assert OptimConfig(betas=[0.8, 0.9]).betas == [0.8, 0.9] and OptimConfig(lr=1).lr == 1.0


def test_omegaconf_converts_what_it_can_and_a_dollar_brace_stays_text():
    assert GPTConfig(n_layer="4").n_layer == 4 and OptimConfig(lr="0.5").lr == 0.5 and OptimConfig(lr=1).lr == 1.0
    text = "${HOME} \\${x} \\\\${y}"
    assert build(sample.SampleConfig, {"ckpt": "x", "prompt": text}).prompt == text  # never resolved
    with pytest.raises(UserError, match=r"^top_k=\$\{x\}: must be null or an integer >= 1$"):
        SamplingOptions(top_k="${x}")
    with pytest.raises(UserError, match=r"^ckpt is required: pass ckpt=\.\.\. \(a \.ckpt file"):
        build(sample.SampleConfig, {})


def test_numpy_and_tensor_scalars_are_their_numbers_and_an_error_shows_the_value_it_is_about(monkeypatch):
    np = pytest.importorskip("numpy")
    assert GPTConfig(n_layer=np.int64(2), dropout=np.float64(0.1)).n_layer == 2
    assert OptimConfig(lr=torch.tensor(0.5)).lr == 0.5
    monkeypatch.setattr("sys.argv", ["sample", "seed=3"])  # a key typed with another value is not shown
    with pytest.raises(UserError, match=r"^seed=-5: must be null or an integer"):
        SamplingOptions(seed=-5)
