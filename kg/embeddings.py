"""Train TransE/ComplEx with PyKEEN on the canonical tables and export the vectors.

Exports follow ARCHITECTURE.md: ``embeddings/<model>/{entities,relations}.parquet`` (vectors as
``fixed_size_list<float32>``), ``.npy`` twins whose row *i* is index *i* (row 0: zero padding),
the model state dict as safetensors (never a pickle), ``metrics.json`` and a plot of training
loss and validation MRR per epoch (``training.png``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kg.config import EmbeddingConfig, default_config
from kg.evaluate import filtered_rank_metrics, with_baseline
from kg.ids import IdMap, load_entity_map, load_relation_map, mapped_triples
from kg.splits import SplitConfig, k_core_triples, read_splits, split_triples, write_splits
from kg.stats import graph_stats
from kg.training import train_model
from pipelines.artifacts import ArtifactLayout, Timer, atomic_write_json, record_stage, staged_dir
from pipelines.errors import KaloraError
from pipelines.integrity import reading, verify

log = logging.getLogger(__name__)


class TrainingInterrupted(KaloraError):
    """Training stopped before its last epoch; the checkpoint lets the next run resume."""


def ensure_splits(layout: ArtifactLayout, config: SplitConfig = SplitConfig()) -> dict[str, np.ndarray]:
    """The split of this KG for ``config``; reused when ``kg/splits`` was made with the same config."""
    meta_path = layout.splits / "split.json"
    if meta_path.exists():
        verify(layout, [layout.splits, layout.triples])  # the split, and the triples it was made from
        with reading(meta_path, "rerun the ingest stage, which rewrites kg/ (kalora run ... --force ingest)"):
            made_with = json.loads(meta_path.read_bytes().decode("utf-8"))
        if made_with == json.loads(json.dumps(vars(config))):
            return read_splits(layout)
    triples = mapped_triples(layout)
    before = len(triples)
    if config.k_core > 0:
        triples = k_core_triples(triples, config.k_core)
    splits = split_triples(triples, config)
    write_splits(layout, splits, vars(config))
    rel_labels = dict(zip(*[pq.read_table(layout.relations).column(c).to_pylist() for c in ("index", "label")]))
    stats = graph_stats(triples, rel_labels)
    atomic_write_json(layout.kg / "stats.json", stats)
    record_stage(layout, "splits", parameters=vars(config),
                 counts={**{k: len(v) for k, v in splits.items()}, "removed_by_k_core": before - len(triples)},
                 metrics={"components": stats["components"]["count"], "largest_component": stats["components"]["largest"]})
    return splits


def _to_pykeen(arr: np.ndarray) -> torch.Tensor:
    # Our indices start at 1 (0 is padding); PyKEEN's start at 0.
    return torch.as_tensor(arr.astype(np.int64) - 1)


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


def _plot(losses: list[float], validation: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    if validation:
        ax2 = ax.twinx()
        ax2.plot([v["epoch"] for v in validation], [v["mrr"] for v in validation], marker="o", color="tab:red")
        ax2.set_ylabel("validation MRR", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sample(arr: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor:
    if limit is None or len(arr) <= limit:
        return arr
    return arr[np.sort(np.random.default_rng(seed).choice(len(arr), limit, replace=False))]


def load_entity_types(layout: ArtifactLayout, num_entities: int):
    """(entities × types) sparse indicator of ``kg/entities.parquet``'s ``types``, row i = index i + 1."""
    from scipy.sparse import csr_matrix

    table = pq.read_table(layout.entities, columns=["index", "types"])
    rows = np.asarray(table.column("index").to_numpy(), dtype=np.int64) - 1
    lists = table.column("types").to_pylist()
    names = {name: i for i, name in enumerate(sorted({t for ts in lists for t in ts or ()}))}
    lengths = np.array([len(ts or ()) for ts in lists], dtype=np.int64)
    cols = np.array([names[t] for ts in lists for t in ts or ()], dtype=np.int64)
    return csr_matrix((np.ones(len(cols), np.float32), (np.repeat(rows, lengths), cols)),
                      shape=(num_entities, max(len(names), 1)))


def _train(layout: ArtifactLayout, config: EmbeddingConfig, splits: dict[str, np.ndarray], num_entities: int,
           num_relations: int, checkpoint_dir: Path, progress: bool, stop_after_epochs: int | None):
    """(model, training state, run info) for the configured loop and engine."""
    from pykeen.triples import CoreTriplesFactory

    train, valid, test = (_to_pykeen(splits[k]) for k in ("train", "valid", "test"))
    if config.training_loop == "shared":
        from kg.shared_negatives import train_shared

        types = load_entity_types(layout, num_entities) if config.type_constraints else None
        return train_shared(config, train.numpy(), num_entities, num_relations, checkpoint_dir, progress=progress,
                            stop_after_epochs=stop_after_epochs, entity_types=types,
                            relation_labels=list(load_relation_map(layout).ids))
    factory = CoreTriplesFactory(train, num_entities=num_entities, num_relations=num_relations,
                                 create_inverse_triples=config.inverse_triples)
    if config.engine == "lightning":
        from kg.distributed import train_with_lightning
        from kg.training import TrainingState

        model, steps = train_with_lightning(config, factory, valid, test)
        run = {"finished": True, "batch_size": config.batch_size, "estimated_bytes": None, "steps": steps}
        return model, TrainingState(epoch=config.num_epochs), run
    known = torch.cat([train, valid, test]).numpy()
    return train_model(config, factory, valid.numpy(), known, num_relations, checkpoint_dir,
                       progress=progress, stop_after_epochs=stop_after_epochs)


def _evaluate(model, config: EmbeddingConfig, splits: dict[str, np.ndarray], labels: list[str]) -> dict[str, Any]:
    """Filtered MRR / Hits@k of the model and of the popularity baseline on the same seeded sample
    of the test split, overall, per side and per relation."""
    train, valid, test = (_to_pykeen(splits[k]) for k in ("train", "valid", "test"))
    known = torch.cat([train, valid, test]).numpy()
    test_eval = _sample(test, config.eval_max_triples, config.seed).numpy()
    with Timer() as eval_timer:
        ranking = filtered_rank_metrics(model, test_eval, known, len(labels), batch_size=config.eval_batch_size,
                                        relation_labels=labels)
    with Timer() as baseline_timer:
        ranking = with_baseline(ranking, train.numpy(), test_eval, known, len(labels), labels,
                                batch_size=config.eval_batch_size)
    if ranking["baseline_ratio"] is not None and ranking["baseline_ratio"] < 2:
        log.warning("the embedding's MRR %.3f is only %.2f× the popularity baseline's %.3f: it has learned little "
                    "beyond how often each entity fills each relation", ranking["mrr"], ranking["baseline_ratio"],
                    ranking["baseline"]["mrr"])
    return {**ranking, "evaluated_triples": int(len(test_eval)), "test_triples": int(len(test)),
            "eval_seconds": round(eval_timer.seconds, 2), "baseline_seconds": round(baseline_timer.seconds, 2)}


def _export_vectors(model, config: EmbeddingConfig) -> tuple[np.ndarray, np.ndarray]:
    if config.training_loop == "shared":
        with torch.no_grad():
            return (model.entity.detach().float().numpy().copy(),
                    model.relation[: model.num_relations].detach().float().numpy().copy())
    ent_vec = _vectors(model.entity_representations[0])
    # with reciprocal relations PyKEEN interleaves forward (2r) and inverse (2r + 1) relations
    rel_all = _vectors(model.relation_representations[0])
    return ent_vec, (rel_all[0::2] if config.inverse_triples else rel_all)


def _write_outputs(out_dir: Path, model, config: EmbeddingConfig, entities: IdMap, relations: IdMap,
                   metrics: dict[str, Any]) -> str:
    ent_vec, rel_vec = _export_vectors(model, config)
    version = embedding_version(ent_vec, config)
    with staged_dir(out_dir) as tmp:
        _write_vectors(tmp / "entities.parquet", entities, "entity_id", ent_vec)
        _write_vectors(tmp / "relations.parquet", relations, "relation_id", rel_vec)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        meta = {"model": config.model, "embedding_version": version, "dim": int(ent_vec.shape[1]),
                "complex_layout": "real_imag_concat" if config.model == "complex" else None,
                "config": config.to_dict(), "metrics": metrics, "padding_index": 0}
        atomic_write_json(tmp / "metrics.json", meta)
        _plot(metrics["losses"], metrics["validation"], tmp / "training.png")
    return version


def train_embeddings(layout: ArtifactLayout, config: EmbeddingConfig | None = None, *, progress: bool = True,
                     stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train (resumable), evaluate (filtered MRR, Hits@k, per relation, against the popularity
    baseline) and export one embedding model; return the manifest entry. ``stop_after_epochs``
    simulates an interruption (tests)."""
    entities, relations = load_entity_map(layout), load_relation_map(layout)
    config = config or default_config(len(entities.ids))
    splits = ensure_splits(layout, config.split)
    checkpoint_dir = layout.base / "checkpoints" / f"embed-{config.model}"
    log.info("training %s (dim %d, %s) on %d triples, %d entities, up to %d epochs", config.model,
             config.embedding_dim, config.training_loop, len(splits["train"]), len(entities.ids), config.num_epochs)
    cpu_start = time.process_time()
    with Timer() as train_timer:
        model, state, run = _train(layout, config, splits, len(entities.ids), len(relations.ids), checkpoint_dir,
                                   progress, stop_after_epochs)
    if not run["finished"]:
        raise TrainingInterrupted(f"stopped after epoch {state.epoch} of {config.num_epochs}; "
                                  f"run again to resume from {checkpoint_dir}")
    cpu_train = time.process_time() - cpu_start
    evaluation = _evaluate(model, config, splits, list(relations.ids))
    metrics = {
        **evaluation, "engine": config.engine, "optimizer_steps": run.get("steps"), "epochs": state.epoch,
        "best_epoch": state.best_epoch or state.epoch, "best_valid_mrr": state.best_mrr if state.best_mrr >= 0 else None,
        "stopped_early": state.stopped_early, "batch_size": run["batch_size"],
        "memory_estimate_bytes": run["estimated_bytes"], "train_seconds": round(train_timer.seconds, 2),
        "train_cpu_seconds": round(cpu_train, 2), "stage_cpu_seconds": round(time.process_time() - cpu_start, 2),
        "losses": state.losses, "validation": state.validation, "path_rules": run.get("path_rules"),
        "sparse_updates": run.get("sparse_updates"), "setup_seconds": run.get("setup_seconds"),
        "epoch_seconds": run.get("epoch_seconds"),
    }
    out_dir = layout.embeddings(config.model)
    version = _write_outputs(out_dir, model, config, entities, relations, metrics)
    for leftover in (checkpoint_dir, checkpoint_dir.with_name(checkpoint_dir.name + ".old")):
        shutil.rmtree(leftover, ignore_errors=True)
    log.info("%s filtered MRR %.3f Hits@10 %.3f on %d test triples (popularity baseline %.3f)", config.model,
             metrics["mrr"], metrics["hits_at_10"], metrics["evaluated_triples"], metrics["baseline"]["mrr"])
    return record_stage(layout, f"embed:{config.model}", parameters=config.to_dict(),
                        outputs={"embeddings": str(out_dir), "embedding_version": version},
                        counts={"entities": len(entities.ids), "relations": len(relations.ids),
                                "train_triples": len(splits["train"])},
                        metrics={k: v for k, v in metrics.items() if k not in ("losses", "validation")},
                        wall_time_s=train_timer.seconds + metrics["eval_seconds"] + metrics["baseline_seconds"])


def load_entity_vectors(layout: ArtifactLayout, model: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(index-aligned vectors with padding row 0, metrics.json content)."""
    out_dir = layout.require(layout.embeddings(model), "embed")
    verify(layout, [out_dir])
    with reading(out_dir, f"rerun the embed stage (kalora run ... --force embed, or kalora embed --model {model})"):
        meta = json.loads((out_dir / "metrics.json").read_bytes().decode("utf-8"))
        return np.load(out_dir / "entities.npy", allow_pickle=False), meta
