import re

import pytest
import torch
from helpers import GPT2_PARTS

from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.core.ops import dropout
from lit_gpt_char.errors import UserError
from lit_gpt_char.training.module import ModelConfig

# The newer parts without zero-initialised projections, which would hide a leak behind zero outputs.
NEWER_PARTS = {**GPT2_PARTS, "pos_emb": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "relu2"}
NEWER_PARTS["tie_embeddings"] = False


def small(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = {"vocab_size": 11, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0}
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def test_shapes_and_loss():
    model = small()
    idx = torch.randint(0, 11, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 11)
    assert loss.ndim == 0
    # Near ln(V) at init: the GPT-2 init starts from an almost uniform prediction.
    assert abs(loss.item() - torch.log(torch.tensor(11.0)).item()) < 0.3
    assert model(idx)[1] is None


def test_seed_config_parameter_count():
    model = GPT(GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, **GPT2_PARTS))
    assert 10.6e6 < model.num_params() < 10.8e6


def test_head_is_tied_to_token_embedding():
    model = small(**GPT2_PARTS)
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


@pytest.mark.parametrize("parts", [GPT2_PARTS, NEWER_PARTS], ids=["gpt2", "newer"])
def test_causal_later_tokens_never_change_earlier_logits(parts):
    model = small(**parts)
    idx = torch.randint(0, 11, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 11
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_residual_projections_use_scaled_init():
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=8, n_head=2, n_embd=64, **GPT2_PARTS))
    std = model.blocks[0].mlp.proj.weight.std().item()
    assert abs(std - 0.02 / (2 * 8) ** 0.5) < 0.002
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.002


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        small()(torch.zeros((1, 17), dtype=torch.long))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"n_embd": 30, "n_head": 4}, "n_embd=30: must be divisible by n_head=4: use e.g. n_embd=28"),
        ({"n_embd": 30, "n_head": 2}, "pos_emb=rope: needs an even head size, but n_embd=30 / n_head=2 = 15"),
        ({"n_layer": 0}, r"n_layer=0: must be an integer in \[1, 1024\]"),
        ({"block_size": -1}, "block_size=-1: must be an integer"),
        ({"vocab_size": 2.5}, "vocab_size=2.5: must be an integer >= 1"),
        ({"dropout": 1.0}, r"dropout=1.0: must be a number in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout=-0.1: must be a number in \[0, 1\)"),
        ({"bias": "maybe"}, "bias=maybe: must be true or false"),
    ],
)
def test_config_validation_names_the_field(kw, message):
    """core's GPTConfig names its fields as they are; the train command's ModelConfig, the same checks,
    names the keys a user types there (model.*)."""
    with pytest.raises(UserError, match="^" + message):
        GPTConfig(**kw)
    if "vocab_size" not in kw:  # ModelConfig takes that one from the corpus (test_config checks it)
        with pytest.raises(UserError, match="^" + re.sub(r"(?<![\w.])(?=[a-z_]+=)", "model.", message)):
            ModelConfig(**kw)


def test_cpu_bf16_training_attention_matches_sdpa():
    """The explicit bf16 attention used for CPU training is the same function as SDPA's."""
    model = small(n_embd=32)
    model.train()  # dropout is 0 in `small`, so train mode is deterministic
    idx = torch.randint(0, 11, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, _ = model(idx)  # grad enabled -> explicit path
        with torch.no_grad():
            ref, _ = model(idx)  # no grad -> SDPA
    assert (fast.float() - ref.float()).abs().max() < 0.05


def test_dropout_drops_p_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, 0.2, training=True)
    assert abs((y == 0).float().mean().item() - 51 / 256) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0, training=True) is x
