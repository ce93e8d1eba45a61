"""Benchmark training or sampling: `python -m lit_gpt_char.bench [mode=sample] [overrides]`.

Train mode times optimizer steps of the real LightningModule + data module (warm-up steps
excluded), the same model and batches in a plain PyTorch loop (Lightning's overhead), and, with
baseline=builtin, a plain eager float32 nanoGPT-style reference (lit_gpt_char.baseline) on the same
model in this session (baseline=PATH: another script with that command line). MFU is
model FLOPs/s over the peak matmul rate this command measures on this device in the same
dtype. The last stdout line is one JSON object.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from lit_gpt_char.config import register, run
from lit_gpt_char.console import print_config_tree
from lit_gpt_char.core.generation import generate
from lit_gpt_char.core.model import GPT
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError
from lit_gpt_char.helptext import help_text
from lit_gpt_char.loading import load_generator
from lit_gpt_char.options import option
from lit_gpt_char.training.config import TrainConfig
from lit_gpt_char.training.data import TextDataModule
from lit_gpt_char.training.module import LitGPT, gpt_config
from lit_gpt_char.training.run import Settings, check_config, instantiate


@dataclass
class BenchConfig(TrainConfig):
    """The bench command's own keys; every training group and key works as in train."""

    task_name: str = option("bench", "its files go to paths.log_dir/bench/")
    mode: str = option("train", "train: optimizer steps; sample: KV-cache generation", choices=("train", "sample"))
    steps: int = option(20, "timed training steps", ge=1, le=1_000_000)
    warmup_steps: int = option(3, "untimed steps first (compilation, allocator warm-up)", ge=0, le=1_000_000)
    plain_loop: bool = option(
        True,
        "also time the same model and batches in a plain PyTorch loop (Lightning's overhead), and each part "
        "of its step (data, forward, backward, clip, optimizer, ema)",
    )
    new_tokens: int = option(500, "sample mode: characters generated after a 1-character prompt", ge=1, le=10_000_000)
    repeats: int = option(
        5, "sample mode: rounds of (ours, then the baseline); medians of speeds and ratios", ge=1, le=1000
    )
    sample_precision: str = option(
        "auto", "sample mode: auto | 32 | bf16 | int8", choices=("auto", "32", "bf16", "int8")
    )
    first_char: bool = option(
        True,
        "sample mode: also time `python -m lit_gpt_char.sample` to its first character, and `import torch` "
        "alone just before it",
    )
    num_samples: int = option(
        8,
        "sample mode: also time this many samples of new_tokens characters, one after another (what `sample "
        "num_samples=N` does) and as one batch of N rows; 1: neither",
        ge=1,
        le=1024,
    )
    baseline: str | None = option(
        None,
        "builtin: also time lit_gpt_char.baseline (plain eager PyTorch, float32, no KV cache) in this command "
        "and report the ratio; or the path of another script with its command line",
    )
    print_config: bool = option(False, "print the composed config at the start")


register("bench", BenchConfig)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The best FLOP/s of a large square matmul here, in dtype: the denominator of MFU."""
    n = 4096 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t0) / 3)
        if best > 1.0:  # emulated (bf16 on an AVX2 CPU: ~13 s a matmul); one round tells enough
            break
    return 2 * n**3 / best


def autocast_dtype(precision: str) -> torch.dtype:
    return {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16}.get(
        str(precision), torch.float32
    )


class StepTimer(L.Callback):
    """Wall time between consecutive optimizer steps, data loading included."""

    def __init__(self, warmup: int):
        self.warmup, self.times, self._last = warmup, [], None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        sync(pl_module.device)
        now = time.perf_counter()
        if self._last is not None and trainer.global_step > self.warmup:
            self.times.append(now - self._last)
        self._last = now


PARTS = ("data", "forward", "backward", "clip", "optimizer", "ema")


def time_plain_loop(
    module: LitGPT,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    precision: str,
    clip: float | None,
    steps: int,
    warmup: int,
    ema_decay: float | None = None,
) -> tuple[float, dict[str, float]]:
    """Seconds per step of the same model and optimizer in a hand-written loop, and the median seconds
    of each part of a step (PARTS: the batch, forward, backward, clipping, the optimizer with its
    schedule, and the EMA update callbacks.ema makes, as Lightning's EMAWeightAveraging does it)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

    model = module.model.to(device).train()
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    ema = AveragedModel(model, avg_fn=get_ema_avg_fn(ema_decay), use_buffers=True) if ema_decay else None
    dtype = autocast_dtype(precision)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    it = iter(batches)
    times: list[float] = []
    parts: dict[str, list[float]] = {k: [] for k in PARTS}
    marks: list[float] = []

    def mark() -> None:  # the end of a part: the device's queued work included
        sync(device)
        marks.append(time.perf_counter())

    for i in range(warmup + steps):
        marks[:] = [time.perf_counter()]
        x, y = (t.to(device, non_blocking=True) for t in next(it))
        mark()
        with ctx:
            _, loss = module(x, y)
        mark()
        loss.backward()
        mark()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        mark()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        mark()
        if ema is not None:
            ema.update_parameters(model)
        mark()
        if i >= warmup:
            times.append(marks[-1] - marks[0])
            for k, a, b in zip(PARTS, marks, marks[1:]):
                parts[k].append(b - a)
    return median(times), {k: median(v) for k, v in parts.items()}


BUILTIN = "builtin"


def baseline_command(path: str) -> list[str]:
    """How to run the reference: builtin is lit_gpt_char.baseline, anything else a script file."""
    if path == BUILTIN:
        return [sys.executable, "-m", "lit_gpt_char.baseline"]
    if Path(path).is_file():
        return [sys.executable, path]
    raise UserError(
        f"baseline={path} does not exist: pass baseline=builtin, or the path of a script that takes "
        "lit_gpt_char.baseline's command line"
    )


def run_baseline(path: str, args: list[str]) -> dict:
    """Run the reference (never concurrently with our timing) and parse its JSON line: builtin is
    lit_gpt_char.baseline, anything else a script taking the same command line."""
    r = subprocess.run([*baseline_command(path), *args], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise UserError(f"the baseline failed ({path} {' '.join(args)}):\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_train(cfg: DictConfig, s: Settings) -> dict:
    datamodule = TextDataModule(s.data, block_size=s.model.block_size, seed=s.run.seed, data_dir=s.paths.data_dir)
    module = LitGPT(datamodule.tokenizer.chars, s.model, s.optim, unit=datamodule.tokenizer.unit)
    timer = StepTimer(cfg.warmup_steps)
    with open_dict(cfg):
        cfg.trainer.max_steps = cfg.warmup_steps + cfg.steps + 1
    trainer: L.Trainer = instantiate(cfg.trainer, "trainer", callbacks=[timer], logger=False)
    trainer.fit(module, datamodule=datamodule)
    device = module.device
    step_s = sorted(timer.times)[len(timer.times) // 2]
    tokens = cfg.data.batch_size * cfg.model.block_size * trainer.world_size
    dtype = autocast_dtype(trainer.precision)
    peak = peak_matmul_flops(device, dtype)
    flops = module.model.flops_per_token(cfg.model.block_size) * tokens / step_s
    out = {
        "mode": "train",
        "tokens_per_s": tokens / step_s,
        "ms_per_step": 1000 * step_s,
        "params": module.model.num_params(),
        "precision": str(trainer.precision),
        "compile": bool(cfg.model.compile),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "mfu": flops / peak,
        "peak_matmul_tflops": peak / 1e12,
    }
    if cfg.plain_loop:
        ema = (cfg.get("callbacks") or {}).get("ema")
        plain_s, parts = time_plain_loop(
            module,
            datamodule.train_dataloader(),
            device,
            trainer.precision,
            cfg.trainer.gradient_clip_val,
            cfg.steps,
            cfg.warmup_steps,
            ema_decay=ema.decay if ema else None,
        )
        out["plain_loop_ms_per_step"] = 1000 * plain_s
        out["lightning_overhead"] = step_s / plain_s - 1
        out |= {f"{k}_ms": 1000 * v for k, v in parts.items()}  # where a step's time goes
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cfg.baseline:
        m = cfg.model
        base = run_baseline(
            cfg.baseline,
            [
                "train",
                "--n-layer",
                str(m.n_layer),
                "--n-head",
                str(m.n_head),
                "--n-embd",
                str(m.n_embd),
                "--block-size",
                str(m.block_size),
                "--batch-size",
                str(cfg.data.batch_size),
                "--dropout",
                str(m.dropout),
                "--vocab",
                str(datamodule.tokenizer.vocab_size),
                "--steps",
                str(cfg.steps),
            ],
        )
        out["baseline_tokens_per_s"] = base["tokens_per_s"]
        out["speedup_vs_baseline"] = out["tokens_per_s"] / base["tokens_per_s"]
    return out


def bench_sample(cfg: DictConfig, s: Settings) -> dict:
    """Generation speed of a model of cfg.model's size (random weights: speed does not depend on them).

    With a baseline, each of the `repeats` rounds times our generation and then the baseline's,
    and the speedup is the median of the rounds' ratios: this machine's speed drifts by tens of
    percent from minute to minute, and a ratio of two runs a few seconds apart cancels most of it.
    """
    m = cfg.model
    tok = CharTokenizer([chr(i) for i in range(32, 97)])  # 65 characters, like Tiny Shakespeare
    torch.manual_seed(cfg.seed)
    model = GPT(gpt_config(tok.vocab_size, s.model))
    tmp = tempfile.TemporaryDirectory(prefix="bench-sample-")
    out_dir = Path(tmp.name)
    torch.save(model.state_dict(), out_dir / "model.pt")
    tok.save(out_dir / "tokenizer.json")
    (out_dir / "config.json").write_text(json.dumps(model.config.to_dict()))
    gen = load_generator(out_dir, device="auto", precision=cfg.sample_precision, compile=cfg.model.compile)
    t0 = time.perf_counter()
    for _ in gen.stream("A", max_new_tokens=5, seed=0):  # warm-up (and compilation, if any)
        pass
    warmup_s = time.perf_counter() - t0
    baseline_args = [
        "sample",
        "--n-layer",
        str(m.n_layer),
        "--n-head",
        str(m.n_head),
        "--n-embd",
        str(m.n_embd),
        "--block-size",
        str(m.block_size),
        "--new-tokens",
        str(cfg.new_tokens),
    ]
    ours, theirs = [], []
    for _ in range(cfg.repeats):
        sync(gen.device)
        t0 = time.perf_counter()
        n = sum(1 for _ in gen.stream("A", max_new_tokens=cfg.new_tokens, temperature=1.0, seed=0))
        sync(gen.device)
        ours.append(n / (time.perf_counter() - t0))
        if cfg.baseline:
            theirs.append(run_baseline(cfg.baseline, baseline_args)["tokens_per_s"])
    tokens_per_s = median(ours)
    if cfg.num_samples > 1:  # characters per second over all the samples
        t0 = time.perf_counter()
        for i in range(cfg.num_samples):
            for _ in gen.stream("A", max_new_tokens=cfg.new_tokens, temperature=1.0, seed=i):
                pass
        samples_sequential = cfg.num_samples * cfg.new_tokens / (time.perf_counter() - t0)
        prompt = torch.tensor([gen.tokenizer.encode("A")] * cfg.num_samples, device=gen.device)
        torch.manual_seed(0)
        generate(gen.model, prompt, 5, compile=gen.compiled)  # this batch size's compile, if any
        sync(gen.device)
        t0 = time.perf_counter()
        generate(gen.model, prompt, cfg.new_tokens, temperature=1.0, compile=gen.compiled)
        sync(gen.device)
        samples_batched = cfg.num_samples * cfg.new_tokens / (time.perf_counter() - t0)
    out = {
        "mode": "sample",
        "tokens_per_s": tokens_per_s,
        "ms_per_token": 1000 / tokens_per_s,
        "new_tokens": n,
        "runs_tokens_per_s": [round(x, 1) for x in ours],
        "params": gen.num_params,
        "precision": gen.precision,
        "compile": bool(cfg.model.compile),
        "warmup_s": warmup_s,
        "device": str(gen.device),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if cfg.num_samples > 1:
        out[f"samples{cfg.num_samples}_sequential_tokens_per_s"] = samples_sequential
        out[f"samples{cfg.num_samples}_batched_tokens_per_s"] = samples_batched
    if cfg.first_char:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True, timeout=300)
        out["import_torch_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "lit_gpt_char.sample",
                f"ckpt={out_dir}",
                "max_new_tokens=1",
                f"precision={cfg.sample_precision}",
                "prompt=A",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        found = re.search(r"first character ([\d.]+)s", r.stderr)
        out["first_char_s"] = float(found.group(1)) if found else None
        out["process_wall_s"] = time.perf_counter() - t0
    tmp.cleanup()
    if theirs:
        ratios = [a / b for a, b in zip(ours, theirs)]
        out["baseline_tokens_per_s"] = median(theirs)
        out["runs_baseline_tokens_per_s"] = [round(x, 2) for x in theirs]
        out["speedup_vs_baseline"] = median(ratios)
        out["runs_speedup"] = [round(x, 2) for x in ratios]
    return out


def show(result: dict) -> None:
    table = Table(title=f"lit-gpt-char bench ({result['mode']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:,.4g}" if isinstance(v, float) else str(v))
    Console(stderr=True).print(table)


def bench(cfg: DictConfig) -> dict:
    settings = check_config(cfg, BenchConfig)
    if cfg.baseline:
        baseline_command(cfg.baseline)  # a wrong path stops here, before minutes of timing
    L.seed_everything(cfg.seed, verbose=False)
    if cfg.print_config:
        print_config_tree(cfg)
    result = bench_train(cfg, settings) if cfg.mode == "train" else bench_sample(cfg, settings)
    show(result)
    print(json.dumps(result), flush=True)
    return result


def usage() -> str:
    """`lit-gpt-char bench --help`: the bench's own keys (every training option works too)."""
    own = BenchConfig.__annotations__
    return help_text(
        "lit-gpt-char bench: time training or sampling here, against a plain-PyTorch reference.",
        "lit-gpt-char bench [mode=train|sample] [baseline=builtin] [any training option ...]",
        [("", BenchConfig)],
        skip=[f.name for f in dataclasses.fields(TrainConfig) if f.name not in own],
        notes=["Every option of `lit-gpt-char train --help` works too (model.*, data.*, trainer.*, experiment=...)."],
    )


main = run("bench", bench, help=usage)


if __name__ == "__main__":
    main()
