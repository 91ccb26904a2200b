"""The optimisation loop every stage shares: gradient accumulation, autocast (bf16/fp16 where the
device supports it), gradient clipping, cosine schedule with warm-up, and resumable checkpoints
(trainable tensors, optimizer state and RNG as safetensors, counters and history as JSON — no
pickle anywhere)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.config import StageConfig
from pipelines.artifacts import atomic_write_json
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
STEP_FILE = "state.json"


def cosine_with_warmup(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def device_of_choice() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a GPU that has it, else fp16 on a GPU, full precision on CPU (CPU bf16
    autocast is slower than fp32 on most CPUs); ``bf16``/``fp16`` are refused where unsupported."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("[train -> stage -> precision] fp16 autocast needs a CUDA device; use bf16 or fp32 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("[train -> stage -> precision] this GPU has no bf16; use fp16 or auto")
    return torch.bfloat16 if precision == "bf16" else torch.float16


@dataclass
class LoopState:
    step: int = 0
    micro_batches: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_loop_checkpoint(directory: Path, model: nn.Module, optimizer, scheduler, state: LoopState,
                         fingerprint: dict[str, Any]) -> None:
    """Written to a sibling and renamed, so an interrupted save leaves the previous checkpoint."""
    from safetensors.torch import save_file

    from kg.training import flatten_optimizer

    tmp = directory.with_name(directory.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_tensors, opt_scalars = flatten_optimizer(optimizer)
    tensors = {f"param.{k}": v for k, v in trainable_state(model).items()}
    tensors.update({k: v.cpu() for k, v in opt_tensors.items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    save_file(tensors, str(tmp / STATE_FILE))
    atomic_write_json(tmp / STEP_FILE, {"step": state.step, "micro_batches": state.micro_batches,
                                        "history": state.history, "optimizer": opt_scalars,
                                        "scheduler": scheduler.state_dict(), "fingerprint": fingerprint})
    # swap by renames: deleting the old checkpoint first could be interrupted half-way and leave
    # a directory with a step file and no weights, which the next run would fail to load
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def load_loop_checkpoint(directory: Path, model: nn.Module, optimizer, scheduler,
                         fingerprint: dict[str, Any]) -> LoopState | None:
    """The saved state when ``directory`` holds a checkpoint of the same run (same fingerprint:
    stage config, model config, inputs); None otherwise (a stale checkpoint is ignored, with a log line)."""
    from safetensors.torch import load_file

    from kg.training import unflatten_optimizer

    if not (directory / STEP_FILE).exists():
        directory = directory.with_name(directory.name + ".old")  # a save killed between its two renames
        if not (directory / STEP_FILE).exists():
            return None
    scalars = json.loads((directory / STEP_FILE).read_text())
    if scalars.get("fingerprint") != json.loads(json.dumps(fingerprint, default=str)):
        log.info("%s: checkpoint of a different configuration, starting over", directory)
        return None
    tensors = load_file(str(directory / STATE_FILE))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            if k.startswith("param."):
                params[k[len("param."):]].copy_(v)
    optimizer.load_state_dict(unflatten_optimizer(tensors, scalars["optimizer"]))
    scheduler.load_state_dict(scalars["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    log.info("%s: resuming at step %d", directory, scalars["step"])
    return LoopState(scalars["step"], scalars["micro_batches"], scalars["history"])


def run_loop(name: str, model: nn.Module, optimizer, config: StageConfig,
             batches: Callable[[int], Iterator[dict[str, torch.Tensor]]],
             compute: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]],
             checkpoint_dir: Path | None = None, fingerprint: dict[str, Any] | None = None,
             after_step: Callable[[int], dict[str, float]] | None = None, progress: bool = False) -> list[dict[str, float]]:
    """Train for ``config.max_steps`` optimiser steps. ``batches(skip)`` yields micro-batches forever,
    skipping the first ``skip`` (resume); ``compute(batch)`` returns the loss and floats to log,
    averaged over the accumulation; ``after_step(step)`` runs after each update (AdaLoRA's rank
    allocation, loss-weight logging) and returns more floats to log."""
    device = next(model.parameters()).device
    dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scheduler = cosine_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    fingerprint = fingerprint or {}
    state = (load_loop_checkpoint(checkpoint_dir, model, optimizer, scheduler, fingerprint)
             if checkpoint_dir is not None else None) or LoopState()
    stream = batches(state.micro_batches)
    steps = range(state.step, config.max_steps)
    if progress:
        from rich.progress import track

        steps = track(steps, description=name)
    model.train()
    for step in steps:
        optimizer.zero_grad(set_to_none=True)
        logged: dict[str, float] = {}
        for _ in range(config.gradient_accumulation):
            batch = {k: v.to(device) for k, v in next(stream).items()}
            state.micro_batches += 1
            ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
            with ctx:
                loss, logs = compute(batch)
            loss = loss / config.gradient_accumulation
            (scaler.scale(loss) if scaler else loss).backward()
            for k, v in logs.items():
                logged[k] = logged.get(k, 0.0) + v / config.gradient_accumulation
        if scaler:
            scaler.unscale_(optimizer)
        logged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        state.step = step + 1
        if after_step is not None:
            logged.update(after_step(state.step))
        state.history.append({"step": state.step, **logged, "lr": scheduler.get_last_lr()[0]})
        if config.checkpoint_every and checkpoint_dir is not None and state.step % config.checkpoint_every == 0 \
                and state.step < config.max_steps:
            save_loop_checkpoint(checkpoint_dir, model, optimizer, scheduler, state, fingerprint)
    return state.history
