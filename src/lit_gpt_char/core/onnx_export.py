"""ONNX exports: the model's own forward, traced with its key/value cache as graph inputs and outputs.

model.onnx takes
    ids (B, T) int64, positions (T,) int64, past_keys and past_values (n_layer, B, n_head, P, head_size)
and returns
    logits (B, T, vocab), present_keys and present_values (n_layer, B, n_head, P + T, head_size),
where the T new positions see every past one and each other causally. The caller keeps the cache:
feeding present back as past (trimmed to its last block_size - 1 positions for rotary models, whose
positions may run on past block_size: that is the rolling cache of `sample`) continues a text.
generate.py, written beside it, does this with onnxruntime and numpy only.

The graph is GPT.forward itself, given a cache (`PastCache`) that concatenates the past it was
handed: there is no second copy of the model's math to drift.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from lit_gpt_char.core.model import GPT

ONNX_FILE, SCRIPT_FILE = "model.onnx", "generate.py"
OPSET = 18


class PastCache:
    """The model's Cache over past keys and values given as tensors: each layer's present is its past
    followed by the chunk's, and the chunk's queries see all of the past and each other causally."""

    def __init__(self, positions: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor):
        self.positions, self.past_keys, self.past_values = positions, past_keys, past_values
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def advance(self, t: int) -> torch.Tensor:
        return self.positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = torch.cat([self.past_keys[layer], k], dim=2)
        v = torch.cat([self.past_values[layer], v], dim=2)
        self.keys.append(k)
        self.values.append(v)
        t, total = self.positions.shape[0], k.shape[2]
        query = torch.arange(t, device=k.device)[:, None] + (total - t)
        mask = torch.zeros(t, total, dtype=k.dtype, device=k.device)
        mask = mask.masked_fill(torch.arange(total, device=k.device)[None, :] > query, float("-inf"))
        return k, v, mask[None, None]


class WithPast(nn.Module):
    """GPT.forward with the cache as tensors in and out: what the ONNX graph computes."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(
        self, ids: torch.Tensor, positions: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = PastCache(positions, past_keys, past_values)
        logits, _ = self.model(ids, cache=cache)
        return logits, torch.stack(cache.keys), torch.stack(cache.values)


def example_inputs(model: GPT, batch: int = 2, t: int = 3, past: int = 2) -> tuple[torch.Tensor, ...]:
    cfg = model.config
    shape = (cfg.n_layer, batch, cfg.n_head, past, cfg.head_size)
    ids = torch.randint(0, cfg.vocab_size, (batch, t))
    return ids, torch.arange(past, past + t), torch.zeros(shape), torch.zeros(shape)


def save_onnx(model: GPT, out: Path) -> None:
    """Write model.onnx (weights inside) and generate.py into out."""
    model = model.float().eval()
    b, t, p = torch.export.Dim("batch"), torch.export.Dim("new"), torch.export.Dim("past")
    dynamic = {
        "ids": {0: b, 1: t},
        "positions": {0: t},
        "past_keys": {1: b, 3: p},
        "past_values": {1: b, 3: p},
    }
    noise = io.StringIO()  # the exporter reports its progress on stdout, and warns of what it skips
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(noise), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                WithPast(model),
                example_inputs(model),
                input_names=["ids", "positions", "past_keys", "past_values"],
                output_names=["logits", "present_keys", "present_values"],
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
            )
    finally:
        quiet.setLevel(level)
    program.save(str(out / ONNX_FILE), external_data=False)
    shutil.copyfile(Path(__file__).with_name("onnx_generate.py"), out / SCRIPT_FILE)
