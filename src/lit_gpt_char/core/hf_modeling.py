"""lit-gpt-char's GPT as a Hugging Face transformers model, for `trust_remote_code=True`.

`export CKPT OUT format=hf` copies this file into OUT as modeling_lit_gpt_char.py, so OUT loads with
transformers alone (no lit-gpt-char installed):

    model = AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(OUT)
    out = model.generate(**tok("ROMEO:", return_tensors="pt"), max_new_tokens=200, do_sample=False)

It imports torch and transformers only. The parameters keep lit-gpt-char's names (wte, wpe,
blocks.N.attn.qkv, ...), so the export's model.safetensors is lit-gpt-char's state dict as it is.
The math is lit_gpt_char/core/model.py's, written again here because an export cannot import it;
the export tests hold the two to equal logits for every model option.

Past block_size: rotary models keep attending over the last block_size cached positions (the
rolling cache of lit-gpt-char's sampler); models with learned positions stop with an error, as
their position table ends there.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5 names the cache argument and output field `cache`; earlier ones `past_key_values`.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class LitGPTCharConfig(PretrainedConfig):
    """The GPTConfig of lit-gpt-char (see its core/model.py for what each field means)."""

    model_type = "lit_gpt_char"
    attribute_map = {  # noqa: RUF012  (transformers reads the class attribute)
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
        "max_position_embeddings": "block_size",
    }
    vocab_size: int = 65
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 192
    bias: bool = False
    pos_emb: str = "rope"
    rope_base: float = 10000.0
    norm: str = "rmsnorm"
    qk_norm: bool = True
    mlp: str = "relu2"
    mlp_hidden: int | None = None
    tie_word_embeddings: bool = False
    use_cache: bool = True

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return -(-8 * self.n_embd // 3 // 16) * 16 if self.mlp == "swiglu" else 4 * self.n_embd


Rope = tuple[torch.Tensor, torch.Tensor]


def rope_tables(cfg: LitGPTCharConfig, positions: torch.Tensor) -> Rope:
    """cos and [-sin, sin] tables (T, 1, 1, head_size) of positions (T,), computed in float64."""
    hd = cfg.head_size
    freqs = cfg.rope_base ** -(torch.arange(0, hd, 2, dtype=torch.float64, device=positions.device) / hd)
    angles = positions.to(torch.float64)[:, None] * freqs
    cos, sin = angles.cos(), angles.sin()
    cos, sin = torch.cat([cos, cos], dim=-1).float(), torch.cat([-sin, sin], dim=-1).float()
    return cos[:, None, None], sin[:, None, None]


def make_norm(cfg: LitGPTCharConfig) -> nn.Module:
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias) if cfg.norm == "layernorm" else nn.RMSNorm(cfg.n_embd)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: LitGPTCharConfig):
        super().__init__()
        self.config = cfg
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.qk_norm = nn.RMSNorm(cfg.head_size, elementwise_affine=False) if cfg.qk_norm else None
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(
        self, x: torch.Tensor, rope: Rope | None, cache: Cache | None, layer: int, mask: torch.Tensor
    ) -> torch.Tensor:
        cfg, (b, t, c) = self.config, x.shape
        qkv = self.qkv(x).view(b, t, 3, cfg.n_head, cfg.head_size)
        qk, v = qkv[:, :, :2], qkv[:, :, 2]
        if self.qk_norm is not None:
            qk = self.qk_norm(qk)
        if rope is not None:  # each pair (i, i + hd/2) turned by position x frequency
            cos, sin = (r.to(qk.dtype) for r in rope)
            x1, x2 = qk.chunk(2, dim=-1)
            qk = torch.addcmul(qk * cos, torch.cat([x2, x1], dim=-1), sin)
        q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, layer)
        k, v = k[:, :, -mask.shape[-1] :], v[:, :, -mask.shape[-1] :]  # the rolling window past block_size
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: LitGPTCharConfig):
        super().__init__()
        self.config = cfg
        self.fc = nn.Linear(cfg.n_embd, (2 if cfg.mlp == "swiglu" else 1) * cfg.hidden, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.config.mlp == "gelu":
            h = F.gelu(h)
        elif self.config.mlp == "relu2":
            h = F.relu(h).square()
        else:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, cfg: LitGPTCharConfig):
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = make_norm(cfg), CausalSelfAttention(cfg), make_norm(cfg), MLP(cfg)

    def forward(
        self, x: torch.Tensor, rope: Rope | None, cache: Cache | None, layer: int, mask: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rope, cache, layer, mask)
        return x + self.mlp(self.ln2(x))


class LitGPTCharForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = LitGPTCharConfig
    base_model_prefix = "lit_gpt_char"
    _tied_weights_keys = {"lm_head.weight": "wte.weight"}  # noqa: RUF012  (used when tie_word_embeddings)
    _supports_sdpa = True

    def __init__(self, config: LitGPTCharConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits of input_ids (B, T), continuing the positions in the cache if one is given.

        attention_mask (B, past + T): 0 for padding (left-padded batches); position_ids: the
        positions, counted without padding (generate() passes them)."""
        cfg = self.config
        cache = kwargs.pop("cache", None) or kwargs.pop("past_key_values", None)
        use_cache = cfg.use_cache if use_cache is None else use_cache
        if cache is None and use_cache:
            cache = DynamicCache()
        b, t = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device).expand(b, t)
        position_ids = position_ids.clamp(min=0)  # padding's positions (-1) are never seen
        if t > cfg.block_size:
            raise ValueError(f"{t} positions at once: this model reads at most block_size={cfg.block_size}")
        if cfg.pos_emb == "learned" and past + t > cfg.block_size:
            raise ValueError(
                f"position {past + t - 1} is past block_size={cfg.block_size}, where this model's learned position "
                "table ends: generate at most block_size positions, prompt included"
            )
        x = self.wte(input_ids)
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        rope = None
        if cfg.pos_emb == "rope":
            # Rotation depends on relative positions only, so one row of positions serves the batch
            # unless it is padded; then each row gets its own tables (B, T, 1, 1, hd).
            if (position_ids == position_ids[:1]).all():
                rope = rope_tables(cfg, position_ids[0])
            else:
                cos, sin = rope_tables(cfg, position_ids.reshape(-1))
                rope = cos.view(b, t, 1, 1, -1), sin.view(b, t, 1, 1, -1)
        # Which keys each query sees: causal over the last block_size positions, and no padding.
        total = past + t
        seen = min(total, cfg.block_size)
        q_pos = torch.arange(past, total, device=x.device)[:, None]
        k_pos = torch.arange(total - seen, total, device=x.device)[None, :]
        allowed = (k_pos <= q_pos) & (k_pos > q_pos - cfg.block_size)
        allowed = allowed[None, None].expand(b, 1, t, seen)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, -seen:].bool()
        allowed = allowed | ~allowed.any(-1, keepdim=True)  # a padding query sees all (its output is unused)
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, float("-inf"))
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i, mask)
        x = self.ln_f(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x)
        loss = None
        if labels is not None:  # next-character loss: labels are the inputs, shifted here
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache if use_cache else None})


LitGPTCharConfig.register_for_auto_class()
LitGPTCharForCausalLM.register_for_auto_class("AutoModelForCausalLM")
