"""Embeddings trained by several processes: PyKEEN's Lightning modules under DDP (gloo on CPU)."""

import numpy as np
import pytest
import torch

pytest.importorskip("pytorch_lightning")


def _instances(rank: int, world: int, n: int = 103, batch: int = 4, seed: int = 7):
    from kg.lightning_modules import ShardedSLCWAInstances

    triples = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long), torch.arange(n)], dim=1)
    return ShardedSLCWAInstances(mapped_triples=triples, batch_size=batch, num_entities=n, num_relations=1,
                                 rank=rank, world_size=world, seed=seed)


def test_kg_sharded_slcwa_instances_split_each_epoch_disjointly_and_equally():
    world = 2
    ranks = [_instances(r, world) for r in range(world)]
    for epoch in range(2):
        shares = [[i for batch in inst.iter_triple_ids() for i in batch] for inst in ranks]
        assert [len(s) for s in shares] == [48, 48]  # 103 // 2 = 51 triples each, 12 full batches of 4
        assert not set(shares[0]) & set(shares[1])
        assert len(ranks[0]) == len(ranks[1]) == 12
        if epoch == 0:
            first = shares[0]
    assert shares[0] != first  # a new permutation every epoch


def test_kg_sharded_slcwa_instances_one_process_sees_every_triple():
    inst = _instances(0, 1, n=12, batch=4)
    ids = sorted(i for batch in inst.iter_triple_ids() for i in batch)
    assert ids == list(range(12)) and len(inst) == 3


def test_kg_lightning_auto_strategy_spawns_on_one_node_and_refuses_tiny_global_batch():
    from functools import partial

    from kg.config import EmbeddingConfig
    from kg.distributed import _lit_module, resolve_strategy
    from pipelines.errors import ConfigError

    lightning = partial(EmbeddingConfig, model="transe", training_loop="slcwa", engine="lightning")
    assert resolve_strategy(lightning(devices=2)) == "ddp_spawn"
    assert resolve_strategy(lightning(devices=2, num_nodes=2)) == "ddp"
    assert resolve_strategy(lightning(devices=1)) == "auto"
    assert resolve_strategy(lightning(devices=2, strategy="ddp")) == "ddp"
    with pytest.raises(ConfigError, match=r"\[embed -> batch_size\] is the global batch .* 4 processes"):
        _lit_module(lightning(devices=4, batch_size=2), None, None, None, None)


def test_kg_shared_negative_loop_names_the_engine_that_scales():
    from kg.config import EmbeddingConfig
    from pipelines.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[embed -> engine\] .* use engine: lightning with training_loop: slcwa"):
        EmbeddingConfig(training_loop="shared", engine="lightning", devices=2)


def _umls_mrr(devices: int, loop: str) -> tuple[float, int]:
    from pykeen.datasets import UMLS
    from pykeen.triples import CoreTriplesFactory

    from kg.config import EmbeddingConfig
    from kg.distributed import train_with_lightning
    from kg.evaluate import filtered_rank_metrics

    ds = UMLS()
    train, valid, test = (ds.training.mapped_triples, ds.validation.mapped_triples, ds.testing.mapped_triples)
    cfg = EmbeddingConfig.from_dict({"model": "complex", "engine": "lightning", "accelerator": "cpu",
                                     "devices": devices, "training_loop": loop, "num_epochs": 30,
                                     "batch_size": 256, "embedding_dim": 64, "seed": 1})
    factory = CoreTriplesFactory(train, num_entities=ds.num_entities, num_relations=ds.num_relations,
                                 create_inverse_triples=cfg.inverse_triples)
    model, steps = train_with_lightning(cfg, factory, valid, test)
    known = torch.cat([train, valid, test]).numpy()
    return filtered_rank_metrics(model, test.numpy(), known, ds.num_relations)["mrr"], steps


@pytest.mark.slow
def test_kg_two_processes_reach_the_single_process_mrr_on_umls():
    """ComplEx, sLCWA, on PyKEEN's bundled UMLS: 2 DDP processes (gloo) take the same number of
    optimiser steps as one process with the same global batch, and land within 0.02 MRR of it."""
    single, single_steps = _umls_mrr(1, "slcwa")
    double, double_steps = _umls_mrr(2, "slcwa")
    assert single > 0.5  # it learned: a random model on UMLS scores about 0.05
    assert double_steps == single_steps
    assert abs(double - single) <= 0.02, (single, double)
