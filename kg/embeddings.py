"""Train TransE/ComplEx with PyKEEN on the canonical tables and export the vectors.

Exports follow ARCHITECTURE.md: ``embeddings/<model>/{entities,relations}.parquet`` (vectors as
``fixed_size_list<float32>``), ``.npy`` twins whose row *i* is index *i* (row 0: zero padding),
the model state dict as safetensors (never a pickle), ``metrics.json`` and a loss plot.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kg.config import EmbeddingConfig
from kg.evaluate import filtered_rank_metrics
from kg.ids import IdMap, load_entity_map, load_relation_map, mapped_triples
from kg.splits import SplitConfig, read_splits, split_triples, write_splits
from kg.stats import graph_stats
from pipelines.artifacts import ArtifactLayout, Timer, atomic_write_json, record_stage, staged_dir

log = logging.getLogger(__name__)

PYKEEN_MODELS = {"transe": "TransE", "complex": "ComplEx"}


def ensure_splits(layout: ArtifactLayout, config: SplitConfig = SplitConfig()) -> dict[str, np.ndarray]:
    if (layout.splits / "test.parquet").exists():
        return read_splits(layout)
    triples = mapped_triples(layout)
    splits = split_triples(triples, config)
    write_splits(layout, splits)
    rel_labels = dict(zip(*[pq.read_table(layout.relations).column(c).to_pylist() for c in ("index", "label")]))
    stats = graph_stats(triples, rel_labels)
    atomic_write_json(layout.kg / "stats.json", stats)
    record_stage(layout, "splits", parameters=vars(config), counts={k: len(v) for k, v in splits.items()},
                 metrics={"components": stats["components"]["count"], "largest_component": stats["components"]["largest"]})
    return splits


def _to_pykeen(arr: np.ndarray) -> torch.Tensor:
    # Our indices start at 1 (0 is padding); PyKEEN's start at 0.
    return torch.as_tensor(arr.astype(np.int64) - 1)


def _build_model(config: EmbeddingConfig, factory):
    from pykeen.models import model_resolver

    kwargs: dict[str, Any] = {"embedding_dim": config.embedding_dim, "random_seed": config.seed}
    if config.loss is not None:
        kwargs["loss"] = config.loss
    if config.model == "complex" and config.regularizer_weight > 0:
        kwargs["entity_representations_kwargs"] = {"regularizer": "lp", "regularizer_kwargs": {"p": 3.0, "weight": config.regularizer_weight}}
    return model_resolver.make(PYKEEN_MODELS[config.model], triples_factory=factory, **kwargs)


def _vectors(representation) -> np.ndarray:
    with torch.no_grad():
        x = representation(indices=None).detach().cpu()
    if x.is_complex():  # ComplEx: real and imaginary halves concatenated (d = 2 × rank)
        x = torch.cat([x.real, x.imag], dim=-1)
    return x.float().numpy()


def _write_vectors(path: Path, ids: IdMap, id_column: str, vectors: np.ndarray) -> None:
    dim = vectors.shape[1]
    table = pa.table(
        {
            id_column: ids.ids,
            "index": pa.array(range(1, len(ids.ids) + 1), pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        }
    )
    pq.write_table(table, path)
    padded = np.zeros((len(ids.ids) + 1, dim), dtype=np.float32)
    padded[1:] = vectors
    np.save(path.with_suffix(".npy"), padded, allow_pickle=False)


def embedding_version(vectors: np.ndarray, config: EmbeddingConfig) -> str:
    h = hashlib.sha256(np.ascontiguousarray(vectors).tobytes())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    return f"{config.model}-{h.hexdigest()[:16]}"


def _plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(losses) + 1), losses, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_embeddings(layout: ArtifactLayout, config: EmbeddingConfig = EmbeddingConfig(),
                     *, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate (filtered MRR, Hits@k) and export one embedding model; return the manifest entry."""
    from pykeen.training import SLCWATrainingLoop
    from pykeen.triples import CoreTriplesFactory

    torch.manual_seed(config.seed)
    entities, relations = load_entity_map(layout), load_relation_map(layout)
    splits = ensure_splits(layout)
    train = _to_pykeen(splits["train"])
    factory = CoreTriplesFactory(train, num_entities=len(entities.ids), num_relations=len(relations.ids))
    model = _build_model(config, factory)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate) if config.optimizer == "adam" \
        else torch.optim.Adagrad(model.parameters(), lr=config.learning_rate)
    loop = SLCWATrainingLoop(model=model, triples_factory=factory, optimizer=optimizer,
                             negative_sampler="basic", negative_sampler_kwargs={"num_negs_per_pos": config.num_negs_per_pos})
    log.info("training %s (dim %d) on %d triples, %d entities, %d epochs",
             config.model, config.embedding_dim, len(train), len(entities.ids), config.num_epochs)
    with Timer() as train_timer:
        losses = loop.train(triples_factory=factory, num_epochs=config.num_epochs, batch_size=config.batch_size,
                            use_tqdm=progress, use_tqdm_batch=False,
                            pin_memory=torch.cuda.is_available())
    test = _to_pykeen(splits["test"])
    if config.eval_max_triples is not None and len(test) > config.eval_max_triples:
        pick = np.random.default_rng(config.seed).choice(len(test), config.eval_max_triples, replace=False)
        test_eval = test[np.sort(pick)]
    else:
        test_eval = test
    with Timer() as eval_timer:
        known = torch.cat([train, _to_pykeen(splits["valid"]), test]).numpy()
        ranking = filtered_rank_metrics(model, test_eval.numpy(), known, len(relations.ids),
                                        batch_size=config.eval_batch_size)
    metrics = {
        **ranking,
        "evaluated_triples": int(len(test_eval)),
        "test_triples": int(len(test)),
        "train_seconds": round(train_timer.seconds, 2),
        "eval_seconds": round(eval_timer.seconds, 2),
        "losses": [float(x) for x in (losses or [])],
    }
    ent_vec = _vectors(model.entity_representations[0])
    rel_vec = _vectors(model.relation_representations[0])
    version = embedding_version(ent_vec, config)
    out_dir = layout.embeddings(config.model)
    with staged_dir(out_dir) as tmp:
        _write_vectors(tmp / "entities.parquet", entities, "entity_id", ent_vec)
        _write_vectors(tmp / "relations.parquet", relations, "relation_id", rel_vec)
        from safetensors.torch import save_file

        state = {k: (torch.view_as_real(v) if v.is_complex() else v).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {"model": config.model, "embedding_version": version, "dim": int(ent_vec.shape[1]),
                "complex_layout": "real_imag_concat" if config.model == "complex" else None,
                "config": config.to_dict(), "metrics": metrics, "padding_index": 0}
        atomic_write_json(tmp / "metrics.json", meta)
        _plot_losses(metrics["losses"], tmp / "loss.png")
    log.info("%s filtered MRR %.3f Hits@10 %.3f on %d test triples", config.model, metrics["mrr"], metrics["hits_at_10"], len(test_eval))
    return record_stage(layout, f"embed:{config.model}", parameters=config.to_dict(),
                        outputs={"embeddings": str(out_dir), "embedding_version": version},
                        counts={"entities": len(entities.ids), "relations": len(relations.ids), "train_triples": len(train)},
                        metrics={k: v for k, v in metrics.items() if k != "losses"},
                        wall_time_s=train_timer.seconds + eval_timer.seconds)


def load_entity_vectors(layout: ArtifactLayout, model: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(index-aligned vectors with padding row 0, metrics.json content)."""
    out_dir = layout.require(layout.embeddings(model), "embed")
    meta = json.loads((out_dir / "metrics.json").read_text())
    return np.load(out_dir / "entities.npy", allow_pickle=False), meta
