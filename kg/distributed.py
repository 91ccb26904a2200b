"""Training on PyKEEN's PyTorch Lightning integration, for graphs that outgrow one machine.

The same model (``kg.training.build_model``) is wrapped in PyKEEN's ``LCWALitModule`` or
``SLCWALitModule`` and fitted by a ``pytorch_lightning.Trainer`` on ``devices`` × ``num_nodes``
with ``strategy`` (e.g. ``ddp``). Early stopping and our checkpoints are not used on this path:
Lightning owns the loop. Needs the optional dependency ``pytorch-lightning``
(``pip install 'kalora-kg[lightning]'``).
"""

from __future__ import annotations

import logging

import torch

from kg.config import EmbeddingConfig
from kg.training import build_model
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)


def train_with_lightning(config: EmbeddingConfig, factory, valid: torch.Tensor, test: torch.Tensor):
    try:
        import pytorch_lightning
        from pykeen.contrib.lightning import lit_module_resolver
    except ImportError:
        raise ConfigError("[embed -> engine] 'lightning' needs pytorch-lightning: pip install 'kalora-kg[lightning]'") from None
    from pykeen.datasets import EagerDataset
    from pykeen.triples import CoreTriplesFactory

    def side(triples: torch.Tensor) -> CoreTriplesFactory:
        return CoreTriplesFactory(triples, num_entities=factory.num_entities, num_relations=factory.real_num_relations,
                                  create_inverse_triples=factory.create_inverse_triples)

    torch.manual_seed(config.seed)
    dataset = EagerDataset(training=factory, testing=side(test), validation=side(valid))
    model = build_model(config, factory)
    optimizer = "adagrad" if config.optimizer == "adagrad" else "adam"
    module = lit_module_resolver.make(config.training_loop, dataset=dataset, model=model,
                                      batch_size=config.batch_size or 256, learning_rate=config.learning_rate,
                                      optimizer=optimizer, label_smoothing=config.label_smoothing)
    trainer = pytorch_lightning.Trainer(max_epochs=config.num_epochs, accelerator=config.accelerator,
                                        devices=config.devices, num_nodes=config.num_nodes, strategy=config.strategy,
                                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                        enable_model_summary=False)
    log.info("training with PyTorch Lightning on %s × %d device(s), %d node(s)", config.accelerator,
             config.devices, config.num_nodes)
    trainer.fit(model=module)
    if trainer.global_step == 0:
        raise ConfigError("[embed] the Lightning run made no optimisation step: is the training split empty "
                          "or batch_size larger than it with drop_last?")
    return model, trainer.global_step
