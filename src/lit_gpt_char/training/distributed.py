"""Training on several processes (trainer=ddp | ddp_spawn | fsdp): what train.py checks and says.

Lightning does the distributed work itself; the data module gives each rank its own windows and
the module reduces the val loss over ranks. What is left is the launch: Lightning's `ddp` (and
`fsdp`) start the other processes of a node by re-running the command line, which cannot work
inside a Hydra multirun (each child would start a sweep of its own), so such a sweep is refused
before anything runs; and the batch that one optimizer step sees is stated, because with
several processes it is no longer `data.batch_size`. Each single-node launch also gets a port of
its own for the processes to meet on (see `choose_main_port`).
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from lit_gpt_char.core.checkpoint import safe_load
from lit_gpt_char.errors import LaunchError, in_multirun

# Start methods that do not re-run the command line (torch.multiprocessing instead).
SPAWNED = ("spawn", "fork", "notebook")
# A MASTER_PORT the user gave (or the launcher that started this process): never replaced.
_GIVEN_PORT = "MASTER_PORT" in os.environ


def _count_devices(devices: Any, accelerator: str) -> int:
    """Processes per node that `trainer.devices` asks for (auto and -1: every GPU, or one CPU process)."""
    if isinstance(devices, str):
        s = devices.strip()
        if "," in s:  # "0,1": device indices
            return len([p for p in s.split(",") if p.strip()])
        devices = int(s) if s.lstrip("-").isdigit() else s
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        return len(devices)
    if accelerator in ("gpu", "cuda", "auto"):
        import torch

        return max(1, torch.cuda.device_count())
    return 1


def relaunches_command(trainer_cfg: Mapping) -> bool:
    """Whether Lightning would start this run's other processes by re-running the command line.

    That is its subprocess launcher: `strategy=ddp` (or fsdp, deepspeed, ...) with more than one
    process, unless a cluster manager (SLURM, torchrun, MPI, LSF) started every process itself.
    `strategy=auto` with several devices is DDP too. The spawn/fork variants are not.
    """
    strategy = trainer_cfg.get("strategy", "auto")
    if isinstance(strategy, str):
        spawned = any(s in strategy for s in SPAWNED)
    else:  # a strategy object config, e.g. {_target_: ...DDPStrategy, start_method: spawn}
        spawned = str(strategy.get("start_method", "popen")) in ("spawn", "fork", "forkserver")
    if spawned or strategy in ("single_device", "dp"):
        return False
    devices = _count_devices(trainer_cfg.get("devices", "auto"), str(trainer_cfg.get("accelerator", "auto")))
    if devices * int(trainer_cfg.get("num_nodes", 1) or 1) <= 1:
        return False
    return not _started_externally()


def _started_externally() -> bool:
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    return any(env.detect() for env in (SLURMEnvironment, TorchElasticEnvironment, MPIEnvironment, LSFEnvironment))


def ephemeral_ports_start() -> int:
    """The first port the kernel hands out for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default; elsewhere the range differs, and a wrong guess costs only a rare race


def free_port_below_ephemeral(low: int = 20_000) -> int | None:
    """A free TCP port between `low` and the start of the kernel's ephemeral range; None if none is found."""
    high = ephemeral_ports_start()
    if high <= low:
        return None
    rng = random.SystemRandom()  # not `random`: seed_everything would give every run the same port
    for _ in range(50):
        port = rng.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return port
    return None


def choose_main_port(trainer_cfg: Mapping) -> None:
    """Give a multi-process run on this machine a fresh MASTER_PORT outside the ephemeral range.

    Lightning otherwise takes a port the kernel hands out for outgoing connections (a bind to port
    0) and keeps it in the environment for the rest of the process. Both invite races on one
    machine: a rank retrying to reach rank 0's store before it listens can be given that very port
    as its own source port and connect to itself (TCP simultaneous open), and the next job of a
    ddp_spawn sweep re-binds the port while the last job's sockets are still closing. A
    MASTER_PORT set before this process started is kept, as are the ports of processes that a
    launcher (Lightning, SLURM, torchrun, MPI, LSF) started.
    """
    if _GIVEN_PORT or "LOCAL_RANK" in os.environ or int(trainer_cfg.get("num_nodes", 1) or 1) != 1:
        return
    devices = _count_devices(trainer_cfg.get("devices", "auto"), str(trainer_cfg.get("accelerator", "auto")))
    if devices <= 1 or trainer_cfg.get("strategy") in ("single_device", "dp") or _started_externally():
        return
    port = free_port_below_ephemeral()
    if port is not None:
        os.environ["MASTER_PORT"] = str(port)


def check_launch(cfg: DictConfig) -> None:
    """Refuse a Hydra multirun whose jobs would re-run the command line (plain ddp), with what works."""
    if in_multirun() and relaunches_command(cfg.trainer):
        raise LaunchError(
            f"trainer.strategy={cfg.trainer.get('strategy')} with several processes cannot run inside a "
            "multirun (-m): Lightning would re-run the whole sweep command in every extra process. "
            "Use trainer=ddp_spawn for a sweep on this machine, or launcher=slurm (one task per GPU) "
            "on a cluster; trainer=ddp is for single runs."
        )


def best_model_score(trainer: L.Trainer) -> float | None:
    """The best val loss ModelCheckpoint saw; else the last one logged; None if none ran.

    Under ddp_spawn the training ran in worker processes and Lightning sends back only the best
    checkpoint's path, not its score: the score is then read from that checkpoint's callback state.
    """
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint):
        if ckpt.best_model_score is not None:
            return float(ckpt.best_model_score)
        if ckpt.best_model_path and Path(ckpt.best_model_path).is_file():
            state = safe_load(ckpt.best_model_path).get("callbacks", {}).get(ckpt.state_key, {})
            if state.get("best_model_score") is not None:
                return float(state["best_model_score"])
    loss = trainer.callback_metrics.get("val/loss")
    return float(loss) if loss is not None else None


def effective_batch(trainer: L.Trainer, batch_size: int, block_size: int) -> str:
    """One line: windows (and tokens) per optimizer step, and how they multiply up."""
    per_node = trainer.num_devices
    windows = batch_size * per_node * trainer.num_nodes * trainer.accumulate_grad_batches
    return (
        f"Effective batch: {windows} windows ({windows * block_size:,} tokens) per optimizer step = "
        f"{batch_size} per process x {per_node} device(s) x {trainer.num_nodes} node(s) x "
        f"{trainer.accumulate_grad_batches} accumulated batch(es)"
    )
