"""The bench's plain-PyTorch reference (`baseline=builtin`): what most people would write instead.

A character GPT trained the usual way on a CPU today: eager PyTorch in float32, one fused qkv
projection with scaled_dot_product_attention, AdamW with gradient clipping, random windows from one
long tensor; and generation that re-runs the whole context, cropped to block_size, for every new
character (no key/value cache). `python -m lit_gpt_char.bench ... baseline=builtin` runs it in a
subprocess of the same session and reports the ratio; `baseline=PATH` runs another script with the
same command line instead. It imports nothing of lit-gpt-char, so it also runs as a file:

    python -m lit_gpt_char.baseline train --n-layer 4 --n-head 4 --n-embd 192 --block-size 128 --steps 5
    python src/lit_gpt_char/baseline.py sample --new-tokens 200

It prints one JSON line: {"mode": ..., "tokens_per_s": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, d: int, h: int, p: float):
        super().__init__()
        self.h, self.p = h, p
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in self.qkv(x).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0, is_causal=True)
        return self.drop(self.out(y.transpose(1, 2).reshape(b, t, d)))


class Block(nn.Module):
    def __init__(self, d: int, h: int, p: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, h, p)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d, bias=False), nn.GELU(), nn.Linear(4 * d, d, bias=False), nn.Dropout(p)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """nanoGPT's model, written the plain way: modules all the way down, tied embedding and head."""

    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, n_embd: int, dropout: float):
        super().__init__()
        self.block = block
        self.tok = nn.Embedding(vocab, n_embd)
        self.pos = nn.Embedding(block, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.tok.weight
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = idx.shape[1]
        x = self.drop(self.tok(idx) + self.pos(torch.arange(t, device=idx.device)))
        logits = self.head(self.ln(self.blocks(x)))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """Crop to the last block_size characters and run the whole context again, for each new one."""
        for _ in range(n):
            logits, _ = self(idx[:, -self.block :])
            idx = torch.cat([idx, torch.multinomial(F.softmax(logits[:, -1, :], dim=-1), 1)], dim=1)
        return idx


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m lit_gpt_char.baseline", description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["train", "sample"])
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps (one more is run untimed first)")
    ap.add_argument("--new-tokens", type=int, default=200, help="characters generated in sample mode")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(1337)
    model = CharGPT(a.vocab, a.block_size, a.n_layer, a.n_head, a.n_embd, a.dropout)
    params = sum(p.numel() for p in model.parameters())
    data = torch.randint(0, a.vocab, (200_000,))
    if a.mode == "train":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
        model.train()

        def step() -> float:
            ix = torch.randint(len(data) - a.block_size - 1, (a.batch_size,))
            x = torch.stack([data[i : i + a.block_size] for i in ix])
            y = torch.stack([data[i + 1 : i + 1 + a.block_size] for i in ix])
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss.item()

        step()  # untimed: allocator and kernels warm up
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        dt = time.perf_counter() - t0
        tokens = a.steps * a.batch_size * a.block_size
        out = {
            "mode": "train",
            "params": params,
            "tokens_per_s": tokens / dt,
            "ms_per_step": 1000 * dt / a.steps,
            "loss": loss,
        }
    else:
        model.eval()
        start = torch.zeros((1, 1), dtype=torch.long)
        model.generate(start, 5)
        t0 = time.perf_counter()
        model.generate(start, a.new_tokens)
        dt = time.perf_counter() - t0
        out = {"mode": "sample", "params": params, "tokens_per_s": a.new_tokens / dt, "new_tokens": a.new_tokens}
    assert math.isfinite(out["tokens_per_s"])
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
