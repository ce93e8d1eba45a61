"""Each default is written once. The schemas (dataclasses of `option`s) hold the defaults; a YAML file
that selects a schema only overrides it, and the few places that must name a value again (a
callback's own signature, the parts of old exports, the comments that describe a recipe) are held
equal to the source here, so they cannot drift apart."""

from __future__ import annotations

import inspect
import io
import re
import tokenize
from dataclasses import fields

import pytest
from helpers import REPO
from omegaconf import OmegaConf

from lit_gpt_char.bench import BenchConfig
from lit_gpt_char.core.exports import LEGACY_PARTS
from lit_gpt_char.core.generation import SamplingOptions
from lit_gpt_char.core.model import GPTConfig
from lit_gpt_char.evaluate import EvaluateConfig
from lit_gpt_char.options import SEED
from lit_gpt_char.sample import SampleConfig
from lit_gpt_char.serve import ServeConfig
from lit_gpt_char.training.callbacks.ema import PicklableEMA
from lit_gpt_char.training.callbacks.samples import GenerateSamplesConfig
from lit_gpt_char.training.config import SCHEMAS, TrainConfig
from lit_gpt_char.training.data import TextDataModule

CONF = REPO / "conf"
ENTRY_POINTS = {"sample": SampleConfig, "serve": ServeConfig, "evaluate": EvaluateConfig, "bench": BenchConfig}
SCHEMA_USE = re.compile(r"^/schema/(\w+)@(\w+)$")


def schema_files() -> list[tuple[str, str, str]]:
    """(file, schema name, the key it fills) of every YAML file that selects a schema."""
    out = []
    for path in sorted(CONF.rglob("*.yaml")):
        raw = OmegaConf.load(path)
        for entry in raw.get("defaults", []) or []:
            m = SCHEMA_USE.match(str(entry))
            if m:
                out.append((str(path.relative_to(CONF)), m.group(1), m.group(2)))
    return out


SCHEMA_FILES = schema_files()


def test_the_config_files_select_the_schemas():
    assert {name for _, name, _ in SCHEMA_FILES} >= {"model", "optim", "data", "trainer", "paths", "train"}


@pytest.mark.parametrize("path, schema, key", SCHEMA_FILES, ids=[f for f, _, _ in SCHEMA_FILES])
def test_no_config_file_restates_a_schema_default(path, schema, key):
    """A value a YAML file sets over its schema differs from the schema's default (else it is a second
    copy of that default, which the next change of the schema would leave behind)."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / path), resolve=False)
    values = raw if key == "_here_" else raw.get(key, {})
    defaults = {f.name: f.default for f in fields({**SCHEMAS, **ENTRY_POINTS}[schema])}
    for name, value in (values or {}).items():
        if name in ("defaults", "_target_") or isinstance(value, (dict, list)) or "${" in str(value):
            continue
        assert name in defaults, f"{path}: {name} is no field of the {schema} schema"
        assert value != defaults[name], f"{path}: {name}: {value!r} restates the {schema} schema's default"


def test_the_ema_decay_is_the_same_in_its_config_its_class_and_the_docs():
    decay = OmegaConf.load(CONF / "callbacks" / "ema.yaml").ema.decay
    assert inspect.signature(PicklableEMA.__init__).parameters["decay"].default == decay
    for page in (REPO / "docs").glob("*.md"):
        for said in re.findall(r"`callbacks\.ema\.decay` (\d\.\d+)", page.read_text(encoding="utf-8")):
            assert float(said) == decay, page
        for said in re.findall(r"EMA of the\s+weights \(decay (\d\.\d+)\)", page.read_text(encoding="utf-8")):
            assert float(said) == decay, page


def test_the_parts_of_old_exports_are_gpt2s():
    gpt2 = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "gpt2.yaml"))
    assert {k: v for k, v in gpt2.items() if k != "defaults"} == LEGACY_PARTS


def test_samples_during_training_draw_as_sampling_does():
    for name in ("temperature", "top_k", "seed"):
        assert getattr(GenerateSamplesConfig, name) == getattr(SamplingOptions, name), name


def test_one_default_seed():
    assert TrainConfig.seed == SamplingOptions.seed == SEED
    assert inspect.signature(TextDataModule.__init__).parameters["seed"].default == SEED
    # The number itself, as code (a docstring's example aside), is written in options.SEED only; besides it,
    # the bench's plain-PyTorch reference (it imports nothing of ours) and experiment=seed, which pins the
    # notebook's own seed whatever the default becomes.
    src = REPO / "src" / "lit_gpt_char"
    found = set()
    for path in src.rglob("*.py"):
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        if any(t.type == tokenize.NUMBER and t.string == str(SEED) for t in tokens):
            found.add(str(path.relative_to(src)))
    found |= {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml") if re.search(rf"\b{SEED}\b", p.read_text())}
    assert found == {"options.py", "baseline.py", "experiment/seed.yaml"}


def test_the_model_configs_comment_says_the_models_defaults():
    text = (CONF / "model" / "gpt.yaml").read_text()
    m = re.search(r"(\d+) layers x (\d+) wide, (\d+) heads, a (\d+)-character\s*#?\s*context", text)
    assert m, "conf/model/gpt.yaml describes the default size"
    d = GPTConfig()
    assert tuple(map(int, m.groups())) == (d.n_layer, d.n_embd, d.n_head, d.block_size)
    doc = inspect.getmodule(GPTConfig).__doc__
    assert "The defaults are the CPU recipe's parts (RoPE, RMSNorm, QK-norm, ReLU^2, an untied head" in doc
    assert (d.pos_emb, d.norm, d.qk_norm, d.mlp, d.tie_embeddings, d.zero_init) == (
        "rope", "rmsnorm", True, "relu2", False, True,
    )  # fmt: skip
