"""Deterministic train/valid/test splits in which every entity and relation appears in train."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.artifacts import ArtifactLayout, staged_dir
from pipelines.errors import ConfigError
from pipelines.integrity import reading, verify


@dataclass(frozen=True)
class SplitConfig:
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 42
    k_core: int = 0  # > 0: keep only the k-core (every entity in >= k triples) before splitting

    def __post_init__(self) -> None:
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 0.5:
                raise ConfigError(f"[splits -> {name}] must be in [0, 0.5), got {v}")


def split_triples(triples: np.ndarray, config: SplitConfig = SplitConfig()) -> dict[str, np.ndarray]:
    """Split (n, 3) index triples. A triple that is the first (in a seeded random order) to mention
    some entity or relation is forced into train, so valid/test never hold anything unseen."""
    n = len(triples)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    shuffled = triples[order]
    forced = np.zeros(n, dtype=bool)
    for cols in ((0, 2), (1,)):
        values = np.concatenate([shuffled[:, c] for c in cols])
        positions = np.concatenate([np.arange(n)] * len(cols))
        _, first = np.unique(values, return_index=True)
        forced[positions[first]] = True
    free = np.flatnonzero(~forced)
    n_valid = min(int(round(n * config.valid_fraction)), len(free) // 2)
    n_test = min(int(round(n * config.test_fraction)), len(free) - n_valid)
    held = rng.permutation(free)
    valid_pos, test_pos = held[:n_valid], held[n_valid : n_valid + n_test]
    train_mask = np.ones(n, dtype=bool)
    train_mask[valid_pos] = False
    train_mask[test_pos] = False
    return {
        "train": shuffled[np.sort(np.flatnonzero(train_mask))],
        "valid": shuffled[np.sort(valid_pos)],
        "test": shuffled[np.sort(test_pos)],
    }


def k_core_triples(triples: np.ndarray, k: int) -> np.ndarray:
    """Iteratively drop triples touching an entity of degree < k (the graph's k-core), the usual
    cut for graphs too large or too sparse to embed whole."""
    keep = np.ones(len(triples), dtype=bool)
    while True:
        ents = triples[keep][:, [0, 2]].ravel()
        degree = np.bincount(ents, minlength=int(triples[:, [0, 2]].max()) + 1 if len(triples) else 1)
        weak = degree < k
        drop = keep & (weak[triples[:, 0]] | weak[triples[:, 2]])
        if not drop.any():
            return triples[keep]
        keep &= ~drop


def write_splits(layout: ArtifactLayout, splits: dict[str, np.ndarray], config: dict | None = None) -> None:
    from pipelines.artifacts import atomic_write_json

    with staged_dir(layout.splits) as tmp:
        if config is not None:
            atomic_write_json(tmp / "split.json", config)
        for name, arr in splits.items():
            table = pa.table(
                {c: pa.array(arr[:, i], pa.int32()) for i, c in enumerate(schema.SPLIT.names)}, schema=schema.SPLIT
            )
            pq.write_table(table, tmp / f"{name}.parquet")


def read_splits(layout: ArtifactLayout) -> dict[str, np.ndarray]:
    """The split made by ``kalora embed``, its recorded digests (and those of the triples it was
    made from) verified first."""
    verify(layout, [layout.splits, layout.triples])
    out = {}
    for name in ("train", "valid", "test"):
        path = layout.require(layout.splits / f"{name}.parquet", "embed")
        with reading(path, "rerun the ingest stage, which rewrites kg/ (kalora run ... --force ingest)"):
            table = pq.read_table(path)
        out[name] = np.stack([table.column(c).to_numpy() for c in schema.SPLIT.names], axis=1).astype(np.int32)
    return out
