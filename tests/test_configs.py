"""Every config in conf/ composes, resolves and instantiates (lightning-hydra-template style)."""

from importlib.resources import files

import hydra
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

CONF = files("lit_gpt_char.conf")
GROUPS = ["model", "optim", "data", "trainer", "callbacks", "logger", "experiment", "debug"]


def options(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


def compose_train(overrides: list[str], tmp_path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lit_gpt_char.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.data_dir = str(tmp_path / "data")
        del cfg["hydra"]
    return cfg


CASES = [[]] + [[f"{g}={o}"] for g in GROUPS for o in options(g)]


def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), g


@pytest.mark.parametrize("overrides", CASES, ids=[" ".join(c) or "default" for c in CASES])
def test_config_composes_resolves_and_instantiates(overrides, tmp_path, corpus):
    if overrides == ["data=text"]:
        overrides = ["data=text", f"data.path={corpus}"]
    cfg = compose_train(overrides, tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.data.block_size == cfg.model.block_size
    assert cfg.optim.decay_steps == cfg.trainer.max_steps
    hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model, vocab=list("abcdefg"), optim=OmegaConf.to_container(cfg.optim), _convert_="all")
    assert module.model.config.n_layer == cfg.model.n_layer
    for group in ("callbacks", "logger"):
        for c in (cfg.get(group) or {}).values():
            if c:
                hydra.utils.instantiate(c)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        cfg.trainer.accelerator = "cpu"  # the rest of the gpu config is still built
    if "FSDPStrategy" in str(cfg.trainer.get("strategy")) and not torch.cuda.is_available():
        hydra.utils.instantiate(cfg.trainer.strategy)  # FSDP refuses CPUs (see test_ddp.py)
        return
    hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)


def test_seed_experiment_is_the_seed():
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lit_gpt_char.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=seed"])
    assert (cfg.data.batch_size, cfg.model.block_size, cfg.trainer.max_steps, cfg.trainer.val_check_interval) == (64, 256, 5000, 500)
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.dropout, cfg.seed) == (6, 6, 384, 0.2, 1337)
    assert cfg.optim.lr == cfg.optim.min_lr == 3e-4 and cfg.optim.warmup_steps == 0


def test_nanogpt_experiment():
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lit_gpt_char.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=nanogpt"])
    o = cfg.optim
    assert (o.lr, o.min_lr, o.warmup_steps, list(o.betas), o.weight_decay) == (1e-3, 1e-4, 100, [0.9, 0.99], 0.1)
    assert (cfg.trainer.gradient_clip_val, cfg.trainer.val_check_interval, cfg.trainer.max_steps) == (1.0, 250, 5000)


@pytest.mark.parametrize(
    "cuda, cuda_bf16, cpu_bf16, amx, accelerator, expected",
    [
        (False, False, False, False, "cpu", "32-true"),    # AVX2: bf16 emulated, ~10x slower than float32
        (False, False, True, False, "cpu", "bf16-mixed"),  # AVX512-BF16
        (False, False, False, True, "auto", "bf16-mixed"),  # AMX
        (True, True, False, False, "gpu", "bf16-mixed"),   # Ampere+
        (True, False, False, False, "auto", "16-mixed"),   # older GPUs
        (True, True, False, False, "cpu", "32-true"),      # a GPU is there, but the run is on the CPU
    ],
)
def test_default_precision_is_the_fast_one_here(cuda, cuda_bf16, cpu_bf16, amx, accelerator, expected, monkeypatch,
                                                tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cfg = compose_train([f"trainer.accelerator={accelerator}"], tmp_path)
    assert cfg.trainer.precision == expected
    cfg = compose_train([f"trainer.accelerator={accelerator}", "trainer.precision=32-true"], tmp_path)
    assert cfg.trainer.precision == "32-true"  # an explicit choice wins
