"""The epoch loop around PyKEEN: early stopping on validation MRR, resumable checkpoints
(safetensors + JSON, never pickle), and a memory estimate checked before training starts.

PyKEEN's own checkpoints are ``torch.save`` pickles; here the model and optimizer states are
written as safetensors and every scalar as JSON, so a checkpoint can be loaded without executing
anything. Training runs one epoch per ``loop.train`` call with the torch RNG state saved alongside,
so a run resumed from a checkpoint follows the same trajectory as one that was never interrupted.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kg.config import EmbeddingConfig
from kg.evaluate import filtered_rank_metrics
from pipelines.artifacts import atomic_write_json
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

PYKEEN_MODELS = {"transe": "TransE", "complex": "ComplEx"}
CHECKPOINT_VERSION = 1


def build_model(config: EmbeddingConfig, factory):
    from pykeen.models import model_resolver

    kwargs: dict[str, Any] = {"embedding_dim": config.embedding_dim, "random_seed": config.seed}
    if config.loss is not None:
        kwargs["loss"] = config.loss
    reg = ({"regularizer": "lp", "regularizer_kwargs": {"p": config.regularizer_p, "weight": config.regularizer_weight,
                                                         "normalize": False}}
           if config.regularizer_weight > 0 else {"regularizer": None})
    if config.model == "complex":
        kwargs.update(reg)
    else:
        kwargs["scoring_fct_norm"] = config.scoring_norm
        if config.training_loop == "lcwa":
            kwargs["entity_constrainer"] = None  # unit-norm entities cap the score range a softmax needs
        if config.regularizer_weight > 0:
            kwargs.update(reg)
    return model_resolver.make(PYKEEN_MODELS[config.model], triples_factory=factory, **kwargs)


def make_loop(config: EmbeddingConfig, model, factory):
    from pykeen.training import LCWATrainingLoop, SLCWATrainingLoop

    opt_cls = torch.optim.Adagrad if config.optimizer == "adagrad" else torch.optim.Adam
    optimizer = opt_cls(model.get_grad_params(), lr=config.learning_rate)
    if config.training_loop == "lcwa":
        return LCWATrainingLoop(model=model, triples_factory=factory, optimizer=optimizer)
    return SLCWATrainingLoop(model=model, triples_factory=factory, optimizer=optimizer, negative_sampler="basic",
                             negative_sampler_kwargs={"num_negs_per_pos": config.num_negs_per_pos})


# -- memory ---------------------------------------------------------------------------------------
def estimate_memory_bytes(config: EmbeddingConfig, num_entities: int, num_relations: int, batch_size: int) -> int:
    """Parameters (+ gradients + optimizer state) plus the scores and interaction tensors of one batch."""
    floats_per_vector = config.embedding_dim * (2 if config.model == "complex" else 1)
    rels = num_relations * (2 if config.inverse_triples else 1)
    params = (num_entities + rels) * floats_per_vector * 4
    optimizer_copies = 2 if config.optimizer == "adam" else 1
    if config.training_loop == "lcwa":
        targets = num_entities  # every entity scored (and labelled) per (h, r)
        # TransE materialises (batch, entities, dim) differences; ComplEx reduces through a matmul
        per_example = targets * (floats_per_vector if config.model == "transe" else 4) * 4 * 3
    else:
        per_example = (1 + config.num_negs_per_pos) * floats_per_vector * 4 * 6
    return int(params * (2 + optimizer_copies) + batch_size * per_example)


def available_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def choose_batch_size(config: EmbeddingConfig, num_entities: int, num_relations: int, budget: int) -> int:
    """The configured batch size, or the largest power of two (≤ 8192) whose estimate fits ``budget``."""
    if config.batch_size is not None:
        return config.batch_size
    size = 8192
    while size > 16 and estimate_memory_bytes(config, num_entities, num_relations, size) > budget:
        size //= 2
    return size


def check_memory(config: EmbeddingConfig, num_entities: int, num_relations: int, batch_size: int) -> dict[str, int]:
    need = estimate_memory_bytes(config, num_entities, num_relations, batch_size)
    free = available_memory_bytes()
    log.info("memory estimate %.2f GiB (batch %d) of %.2f GiB available", need / 2**30, batch_size, free / 2**30)
    if need > config.memory_fraction * free and not config.force:
        raise ConfigError(
            f"[embed] training needs about {need / 2**30:.1f} GiB but {free / 2**30:.1f} GiB is available "
            f"(memory_fraction {config.memory_fraction}): lower batch_size or embedding_dim, use "
            "training_loop: slcwa, filter the graph (k-core), or set force: true")
    return {"estimated_bytes": need, "available_bytes": free}


# -- checkpoints ----------------------------------------------------------------------------------
def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as (tensors for safetensors, JSON-able scalars): no pickle on disk."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{name}"] = value.contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[name] = value
    return tensors, scalars


def unflatten_optimizer(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    """The ``state_dict`` that ``flatten_optimizer`` took apart."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entries in scalars["state"].items():
        state.setdefault(int(idx), {}).update(entries)
    return {"state": state, "param_groups": scalars["param_groups"]}


@dataclass
class TrainingState:
    epoch: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)  # {"epoch", "mrr"}
    best_epoch: int = 0
    best_mrr: float = -1.0
    bad_validations: int = 0
    stopped_early: bool = False


def save_checkpoint(directory: Path, model, optimizer, state: TrainingState, config: EmbeddingConfig,
                    best_state: dict[str, torch.Tensor] | None) -> None:
    from safetensors.torch import save_file

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_tensors, opt_scalars = flatten_optimizer(optimizer)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "state.safetensors"))
    if best_state is not None:
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / "best.safetensors"))
    atomic_write_json(tmp / "state.json", {"version": CHECKPOINT_VERSION, "config": config.to_dict(),
                                           "optimizer": opt_scalars, "training": state.__dict__})
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: Path, model, optimizer, config: EmbeddingConfig):
    """Restore model, optimizer and RNG; returns (state, best weights) or None when there is no
    checkpoint or it belongs to a different configuration."""
    from safetensors.torch import load_file

    if not (directory / "state.json").exists():
        directory = directory.with_name(directory.name + ".old")  # a save killed between its two renames
        if not (directory / "state.json").exists():
            return None
    meta = json.loads((directory / "state.json").read_text())
    if meta.get("version") != CHECKPOINT_VERSION or meta.get("config") != json.loads(json.dumps(config.to_dict())):
        log.warning("ignoring checkpoint %s: it was written with a different configuration", directory)
        return None
    tensors = load_file(str(directory / "state.safetensors"))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
    torch.set_rng_state(tensors["rng.torch"])
    best = load_file(str(directory / "best.safetensors")) if (directory / "best.safetensors").exists() else None
    return TrainingState(**meta["training"]), best


# -- the loop -------------------------------------------------------------------------------------
def train_model(config: EmbeddingConfig, factory, valid: np.ndarray, known: np.ndarray, num_relations: int,
                checkpoint_dir: Path | None, *, progress: bool = True, stop_after_epochs: int | None = None):
    """Train ``config.num_epochs`` epochs with early stopping; return (model, state).

    ``valid``/``known`` are 0-based original-relation triples for validation MRR and its filter.
    ``stop_after_epochs`` ends the process-level run early (used to simulate an interruption)."""
    torch.manual_seed(config.seed)
    model = build_model(config, factory)
    loop = make_loop(config, model, factory)
    batch_size = choose_batch_size(config, factory.num_entities, num_relations,
                                   int(config.memory_fraction * available_memory_bytes()))
    memory = check_memory(config, factory.num_entities, num_relations, batch_size)
    state, best = TrainingState(), None
    if checkpoint_dir is not None:
        restored = load_checkpoint(checkpoint_dir, model, loop.optimizer, config)
        if restored is not None:
            state, best = restored
            log.info("resuming from %s at epoch %d", checkpoint_dir, state.epoch)
    rng = np.random.default_rng(config.seed)
    if config.valid_max_triples is not None and len(valid) > config.valid_max_triples:
        valid = valid[np.sort(rng.choice(len(valid), config.valid_max_triples, replace=False))]
    epochs_run = 0
    while state.epoch < config.num_epochs and not state.stopped_early:
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        loop._epoch = state.epoch
        losses = loop.train(triples_factory=factory, num_epochs=state.epoch + 1, batch_size=batch_size,
                            continue_training=state.epoch > 0, use_tqdm=False, use_tqdm_batch=False,
                            label_smoothing=config.label_smoothing if config.training_loop == "lcwa" else 0.0,
                            pin_memory=torch.cuda.is_available())
        state.epoch += 1
        epochs_run += 1
        state.losses.append(float(losses[-1]) if losses else float("nan"))
        if config.eval_every and len(valid) and state.epoch % config.eval_every == 0:
            mrr = filtered_rank_metrics(model, valid, known, num_relations, batch_size=config.eval_batch_size)["mrr"]
            model.train()
            state.validation.append({"epoch": state.epoch, "mrr": mrr})
            if mrr > state.best_mrr:
                state.best_mrr, state.best_epoch, state.bad_validations = mrr, state.epoch, 0
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state.bad_validations += 1
                state.stopped_early = state.bad_validations >= config.patience
            log.info("epoch %d: loss %.4f, validation MRR %.4f (best %.4f at epoch %d)", state.epoch,
                     state.losses[-1], mrr, state.best_mrr, state.best_epoch)
        elif progress:
            log.info("epoch %d/%d: loss %.4f", state.epoch, config.num_epochs, state.losses[-1])
        if checkpoint_dir is not None and config.checkpoint_every and state.epoch % config.checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, model, loop.optimizer, state, config, best)
    finished = state.epoch >= config.num_epochs or state.stopped_early
    if finished and best is not None:
        model.load_state_dict(best)
    return model, state, {"batch_size": batch_size, **memory, "finished": finished}
