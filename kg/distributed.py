"""Training on PyKEEN's PyTorch Lightning integration, for graphs that outgrow one process.

The same model (``kg.training.build_model``) is wrapped in PyKEEN's LCWA or sLCWA Lightning module
(made DDP-correct in ``kg.lightning_modules``) and fitted by a ``pytorch_lightning.Trainer`` on
``devices`` × ``num_nodes`` processes with ``strategy``.

- ``batch_size`` is the global batch: each of the N processes takes ``batch_size / N`` triples a
  step and DDP averages the gradients, so N processes take the same optimisation steps as one.
- On one node, ``strategy: auto`` with several devices runs ``ddp_spawn``: the processes are
  spawned by this call and the trained weights come back to it, so the library call, ``kalora
  embed`` and a Prefect task all work unchanged (plain ``ddp`` re-executes the command line in each
  process, which only suits a script launched per node). On CPUs the processes talk over gloo.
- Several nodes need one launch per node (``torchrun``/SLURM setting the usual environment) with
  ``strategy: ddp``; this module then runs inside each of them.

Early stopping and our resumable checkpoints are not used on this path: Lightning owns the loop.
Needs the optional dependency ``pytorch-lightning`` (``pip install 'kalora-kg[lightning]'``).
"""

from __future__ import annotations

import logging

import torch

from kg.config import EmbeddingConfig
from kg.training import build_model
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)


def world_size(config: EmbeddingConfig) -> int:
    return config.devices * config.num_nodes


def resolve_strategy(config: EmbeddingConfig) -> str:
    """``auto`` with several processes on one node: ``ddp_spawn`` (see the module docstring)."""
    if config.strategy == "auto" and world_size(config) > 1:
        return "ddp" if config.num_nodes > 1 else "ddp_spawn"
    return config.strategy


def _lit_module(config: EmbeddingConfig, factory, valid: torch.Tensor, test: torch.Tensor, model):
    from pykeen.datasets import EagerDataset
    from pykeen.triples import CoreTriplesFactory

    from kg.lightning_modules import LIT_MODULES

    def side(triples: torch.Tensor) -> CoreTriplesFactory:
        return CoreTriplesFactory(triples, num_entities=factory.num_entities, num_relations=factory.real_num_relations,
                                  create_inverse_triples=factory.create_inverse_triples)

    world = world_size(config)
    batch = config.batch_size or 256
    if batch < world:
        raise ConfigError(f"[embed -> batch_size] is the global batch and is split over {world} processes: "
                          f"expected at least {world}, got {batch}")
    kwargs = {"seed": config.seed} if config.training_loop == "slcwa" else {}
    return LIT_MODULES[config.training_loop](
        dataset=EagerDataset(training=factory, testing=side(test), validation=side(valid)), model=model,
        batch_size=batch // world, learning_rate=config.learning_rate,
        optimizer="adagrad" if config.optimizer == "adagrad" else "adam",
        label_smoothing=config.label_smoothing, **kwargs)


def train_with_lightning(config: EmbeddingConfig, factory, valid: torch.Tensor, test: torch.Tensor):
    """Fit ``config``'s model on ``factory``; return (the trained model, optimiser steps per process)."""
    try:
        import pytorch_lightning
    except ImportError:
        raise ConfigError("[embed -> engine] 'lightning' needs pytorch-lightning: pip install 'kalora-kg[lightning]'") from None

    pytorch_lightning.seed_everything(config.seed, workers=True, verbose=False)  # spawned processes re-seed from it
    model = build_model(config, factory)
    module = _lit_module(config, factory, valid, test, model)
    strategy = resolve_strategy(config)
    trainer = pytorch_lightning.Trainer(max_epochs=config.num_epochs, accelerator=config.accelerator,
                                        devices=config.devices, num_nodes=config.num_nodes, strategy=strategy,
                                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    log.info("training with PyTorch Lightning on %s: %d process(es) (%d device(s) × %d node(s)), strategy %s",
             config.accelerator, world_size(config), config.devices, config.num_nodes, strategy)
    trainer.fit(model=module)
    steps = int(trainer.callback_metrics.get("optimizer_steps", trainer.global_step))
    if steps == 0:
        raise ConfigError("[embed] the Lightning run made no optimisation step: is the training split smaller "
                          "than batch_size?")
    return model, steps
