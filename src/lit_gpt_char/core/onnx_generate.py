"""Generate text from a lit-gpt-char ONNX export with onnxruntime and numpy only.

    python OUT_DIR/generate.py --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8 --top-k 40

(--temperature 0: greedy, the same text as `python -m lit_gpt_char.sample ckpt=OUT_DIR temperature=0`.)
Reads model.onnx, config.json and tokenizer.json from the directory it sits in (or --dir). The
prompt is prefilled once, then each new character is one run of the graph over the key/value cache.
Past block_size, as `sample` does: rotary models roll (the cache keeps its last block_size - 1
positions, the positions run on); learned-position models slide (re-prefill the last
block_size // 2 + 1 characters from position 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxGenerator:
    def __init__(self, directory: str | Path):
        d = Path(directory)
        self.config = json.loads((d / "config.json").read_text())
        tok = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
        self.chars = [tok["integer_to_char"][str(i)] for i in range(len(tok["integer_to_char"]))]
        self.unit = tok.get("unit", "char")
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(d / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def encode(self, text: str) -> list[int]:
        """The ids of text; characters the model has never seen are dropped (on_unknown=skip)."""
        units = text if self.unit == "char" else text.encode("utf-8").decode("latin-1")
        return [self.stoi[c] for c in units if c in self.stoi]

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.chars[i] for i in ids)
        return text if self.unit == "char" else text.encode("latin-1").decode("utf-8", errors="replace")

    def run(self, ids: np.ndarray, positions: np.ndarray, keys: np.ndarray, values: np.ndarray) -> tuple:
        feeds = {"ids": ids, "positions": positions, "past_keys": keys, "past_values": values}
        return self.session.run(None, feeds)

    def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> list[int]:
        """New ids after prompt_ids: greedy at temperature 0, else sampled (top_k: from the k likeliest)."""
        c = self.config
        w, rope = c["block_size"], c["pos_emb"] == "rope"
        hd = c["n_embd"] // c["n_head"]
        rng = np.random.default_rng(seed)
        empty = np.zeros((c["n_layer"], 1, c["n_head"], 0, hd), dtype=np.float32)
        window = list(prompt_ids[-w:])
        keep = w - w // 2 + 1  # context after a slide (sample's default slide = block_size // 2)

        def prefill(context: list[int]) -> tuple:
            pos = np.arange(len(context), dtype=np.int64)
            return self.run(np.array([context], dtype=np.int64), pos, empty, empty)

        logits, keys, values = prefill(window)
        length, out = len(window), []
        for _ in range(max_new_tokens):
            z = logits[0, -1].astype(np.float64)
            if temperature <= 0:
                nxt = int(z.argmax())
            else:
                z = (z - z.max()) / temperature  # the largest first at 0: no inf - inf however small it is
                if top_k:
                    z[z < np.sort(z)[-min(top_k, len(z))]] = -np.inf
                p = np.exp(z - z.max())
                nxt = int(rng.choice(len(p), p=p / p.sum()))
            out.append(nxt)
            window = [*window, nxt][-w:]
            if len(out) == max_new_tokens:
                break
            if rope or length < w:  # one position through the cache (rotary: the oldest leaves it)
                keys, values = keys[:, :, :, -(w - 1) :], values[:, :, :, -(w - 1) :]
                step = np.array([[nxt]], dtype=np.int64)
                logits, keys, values = self.run(step, np.array([length], dtype=np.int64), keys, values)
                length += 1
            else:  # learned positions end at block_size: slide the window
                logits, keys, values = prefill(window[-keep:])
                length = keep
        return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(Path(__file__).resolve().parent), help="the export directory")
    ap.add_argument("--prompt", default="\n")
    ap.add_argument("--max-new-tokens", type=int, default=500)
    ap.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    gen = OnnxGenerator(args.dir)
    ids = gen.encode(args.prompt)
    if not ids:
        sys.exit("error: the prompt has no character the model knows: pass another --prompt")
    new = gen.generate(ids, args.max_new_tokens, args.temperature, args.top_k, args.seed)
    sys.stdout.write(args.prompt + gen.decode(new) + "\n")


if __name__ == "__main__":
    main()
