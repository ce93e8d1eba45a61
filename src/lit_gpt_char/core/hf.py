"""Hugging Face exports: a directory `transformers` loads with AutoModelForCausalLM and AutoTokenizer.

- GPT-2's parts (learned positions, LayerNorm, no QK-norm, GELU; any width, MLP width, tied or
  untied head, with or without biases) are a stock `GPT2LMHeadModel`: its Conv1D weights are our
  Linear weights transposed, missing biases are zeros, and the GELU is the exact one
  (activation_function="gelu"). No remote code.
- Every other combination of parts is `LitGPTCharForCausalLM`, the model of core/hf_modeling.py,
  copied into the export as modeling_lit_gpt_char.py and loaded with `trust_remote_code=True`.
  Its weights are ours, under our names.

The tokenizer is a `tokenizers` WordLevel model over our vocabulary, one token per character
(per UTF-8 byte, through GPT-2's byte-to-character map, for byte tokenizers), loaded as a
`PreTrainedTokenizerFast`. A character the model has never seen is dropped, as `on_unknown=skip`
does. config.json also carries our GPTConfig and the tokenizer's unit under "lit_gpt_char", so
`load_any` reads the directory back exactly, without transformers.

Writing needs the `tokenizers` library (the `export` extra); reading back needs nothing extra.
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError

MODELING_FILE = "modeling_lit_gpt_char.py"
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
HF_KEY = "lit_gpt_char"  # config.json's record of our own config


def is_gpt2(cfg: Any) -> bool:
    """Parts a stock GPT2LMHeadModel computes exactly."""
    return cfg.pos_emb == "learned" and cfg.norm == "layernorm" and not cfg.qk_norm and cfg.mlp == "gelu"


def gpt2_names(n_layer: int) -> dict[str, tuple[str, bool]]:
    """Our parameter names -> GPT-2's, and whether the matrix is transposed (GPT-2's Conv1D)."""
    names = {
        "wte.weight": ("transformer.wte.weight", False),
        "wpe.weight": ("transformer.wpe.weight", False),
        "ln_f.weight": ("transformer.ln_f.weight", False),
        "ln_f.bias": ("transformer.ln_f.bias", False),
        "lm_head.weight": ("lm_head.weight", False),
    }
    parts = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj"}
    parts |= {"mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
    for i in range(n_layer):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = (f"transformer.h.{i}.{theirs}.{kind}", ours.count(".") == 1)
    return names


def to_gpt2(state_dict: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    """Our state dict as GPT2LMHeadModel's: Linear weights transposed into Conv1D ones, a zero bias
    wherever we have none (GPT-2 always has them), the tied head left to the model to tie."""
    names, out = gpt2_names(cfg.n_layer), {}
    for ours, (theirs, transpose) in names.items():
        if ours == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if ours in state_dict:
            t = state_dict[ours]
            out[theirs] = t.t() if transpose and ours.endswith("weight") else t
        elif ours.endswith(".bias"):  # bias=false: GPT-2's bias is zero
            weight = state_dict[ours[: -len("bias")] + "weight"]
            out[theirs] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def from_gpt2(tensors: dict[str, torch.Tensor], n_layer: int, tied: bool, bias: bool) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict back as ours (the biases we have, the head tied to the embedding
    if it is)."""
    out = {}
    for ours, (theirs, transpose) in gpt2_names(n_layer).items():
        if theirs in tensors:
            t = tensors[theirs]
            out[ours] = t.t().contiguous() if transpose and ours.endswith("weight") else t
    if (tied or "lm_head.weight" not in out) and "wte.weight" in out:
        out["lm_head.weight"] = out["wte.weight"]
    if not bias:
        out = {k: v for k, v in out.items() if not k.endswith(".bias")}
    return out


def hf_config(cfg: Any, unit: str, info: dict[str, Any]) -> dict[str, Any]:
    """config.json of the export: GPT2Config's fields, or LitGPTCharConfig's with its auto_map."""
    ours = {HF_KEY: {"model": cfg.to_dict(), "unit": unit, **{k: info[k] for k in ("step", "val_loss") if k in info}}}
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings, "use_cache": True}
    common |= {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None, "dtype": "float32"}
    if is_gpt2(cfg):
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_positions": cfg.block_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.hidden,
            "activation_function": "gelu",  # exact erf GELU, as F.gelu (GPT-2's default is the tanh one)
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.attn_dropout,
            "layer_norm_epsilon": 1e-5,
            **common,
            **ours,
        }
    fields = ("block_size", "n_layer", "n_head", "n_embd", "bias", "pos_emb", "rope_base", "norm", "qk_norm", "mlp")
    return {
        "architectures": ["LitGPTCharForCausalLM"],
        "model_type": "lit_gpt_char",
        "auto_map": {
            "AutoConfig": f"{MODELING_FILE[:-3]}.LitGPTCharConfig",
            "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.LitGPTCharForCausalLM",
        },
        **{k: getattr(cfg, k) for k in fields},
        "mlp_hidden": cfg.hidden,
        **common,
        **ours,
    }


@cache
def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character map (what the tokenizers library's ByteLevel uses)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def known_code_points(tok: CharTokenizer) -> list[tuple[int, int]]:
    """Ranges (first, last) of the characters tok can encode: its characters, or for bytes every code
    point whose UTF-8 bytes all are in the vocabulary."""
    if tok.unit == "char":
        cps = np.array(sorted(ord(c) for c in tok.chars))
    else:
        have = np.zeros(256, dtype=bool)
        have[[ord(c) for c in tok.chars]] = True
        cp = np.arange(0x110000)
        cp = cp[(cp < 0xD800) | (cp > 0xDFFF)]
        n = np.select([cp < 0x80, cp < 0x800, cp < 0x10000], [1, 2, 3], 4)
        lead = np.select([n == 1, n == 2, n == 3], [cp, 0xC0 | cp >> 6, 0xE0 | cp >> 12], 0xF0 | cp >> 18)
        ok = have[lead]
        for k in (1, 2, 3):  # continuation bytes, last first: 6 bits each
            ok &= (n <= k) | have[0x80 | (cp >> (6 * (k - 1))) & 0x3F]
        cps = cp[ok]
    if not len(cps):
        return []
    breaks = np.flatnonzero(np.diff(cps) != 1)
    starts, ends = np.r_[cps[0], cps[breaks + 1]], np.r_[cps[breaks], cps[-1]]
    return list(zip(starts.tolist(), ends.tolist()))


def tokenizer_json(tok: CharTokenizer) -> str:
    """The `tokenizers` library's tokenizer.json for tok: one token per character (or byte), unknown
    characters dropped by the normalizer, tokens joined back without spaces."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if tok.unit == "char":
        vocab = {c: i for i, c in enumerate(tok.chars)}
    else:
        vocab = {byte_chars()[ord(c)]: i for i, c in enumerate(tok.chars)}
    hf = Tokenizer(models.WordLevel(vocab))
    ranges = "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in known_code_points(tok))
    hf.normalizer = normalizers.Replace(Regex(f"[^{ranges}]" if ranges else r"[\s\S]"), "")
    each = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    if tok.unit == "char":
        hf.pre_tokenizer, hf.decoder = each, decoders.Fuse()
    else:
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.pre_tokenizer = pre_tokenizers.Sequence([byte_level, each])
        hf.decoder = decoders.ByteLevel()
    return hf.to_str(pretty=True)


def tokenizer_from_json(path: Path, unit: str) -> CharTokenizer:
    """Our tokenizer back from an export's tokenizer.json (its WordLevel vocabulary)."""
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a tokenizer.json of a lit-gpt-char export ({e})") from None
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise UserError(f"{path}: its vocabulary ids are not 0..{len(by_id) - 1}")
    chars = [c for c, _ in by_id]
    if unit == "byte":
        back = {c: chr(b) for b, c in enumerate(byte_chars())}
        if not all(c in back for c in chars):
            raise UserError(f"{path}: a byte tokenizer's vocabulary holds a token that is no byte")
        chars = [back[c] for c in chars]
    return CharTokenizer(chars, unit)


def save_hf(cfg: Any, tok: CharTokenizer, state_dict: dict[str, torch.Tensor], info: dict, out: Path) -> None:
    """Write the export's files into out (a new, empty directory)."""
    from safetensors.torch import save_file

    stock = is_gpt2(cfg)
    if stock:
        tensors = to_gpt2(state_dict, cfg)
    else:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        if cfg.tie_embeddings:
            tensors.pop("lm_head.weight")  # transformers ties it back (tie_word_embeddings)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg, tok.unit, info), indent=1) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}, indent=1) + "\n"
    )
    (out / "tokenizer.json").write_text(tokenizer_json(tok), encoding="utf-8")
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.block_size,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1) + "\n")
    if not stock:
        shutil.copyfile(Path(__file__).with_name("hf_modeling.py"), out / MODELING_FILE)


def is_hf_export(path: Path) -> bool:
    """A directory whose config.json is a transformers config (ours, read_hf hopes)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def read_hf(
    path: Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], CharTokenizer, dict[str, torch.Tensor], dict[str, Any]]:
    """Our config dict, tokenizer, state dict and info of an export directory written by save_hf."""
    from lit_gpt_char.core.exports import read_safetensors

    config = json.loads((path / "config.json").read_text())
    if HF_KEY not in config:
        raise UserError(
            f"{path} holds a transformers model that lit-gpt-char did not export (model_type="
            f"{config.get('model_type')}): lit-gpt-char reads its own models only; load this one with transformers"
        )
    ours = config[HF_KEY]
    if not isinstance(ours, dict) or not isinstance(ours.get("model"), dict):
        raise UserError(f"{path / 'config.json'}: its {HF_KEY!r} entry is not a model config")
    tok = tokenizer_from_json(path / "tokenizer.json", ours.get("unit", "char"))
    tensors, _ = read_safetensors(path / "model.safetensors", map_location)
    if config.get("model_type") == "gpt2":
        m = ours["model"]
        tensors = from_gpt2(tensors, int(m.get("n_layer", 0)), bool(m.get("tie_embeddings")), bool(m.get("bias")))
    elif "lm_head.weight" not in tensors and "wte.weight" in tensors:
        tensors["lm_head.weight"] = tensors["wte.weight"]
    info = {k: ours[k] for k in ("step", "val_loss") if k in ours}
    return ours["model"], tok, tensors, info
