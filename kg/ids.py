"""Id maps of one build: entity/relation ids ↔ contiguous int32 indices (0 is padding)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.artifacts import ArtifactLayout
from pipelines.errors import ArtifactError
from pipelines.integrity import reading, verify


@dataclass(frozen=True)
class IdMap:
    ids: list[str]  # ids[i - 1] is the id of index i

    @property
    def size(self) -> int:
        """Number of rows including the padding row 0."""
        return len(self.ids) + 1

    def index_of(self) -> dict[str, int]:
        return {eid: i for i, eid in enumerate(self.ids, 1)}


def load_id_map(path: Path, id_column: str) -> IdMap:
    with reading(path, "rerun the ingest stage (kalora run ... --force ingest)"):
        table = pq.read_table(path, columns=[id_column, "index"])
    index = table.column("index").to_numpy()
    if len(index) and not np.array_equal(index, np.arange(1, len(index) + 1)):
        raise ArtifactError(f"{path}: column 'index' must be 1..{len(index)} in row order")
    return IdMap(table.column(id_column).to_pylist())


def load_entity_map(layout: ArtifactLayout) -> IdMap:
    path = layout.require(layout.entities, "ingest")
    verify(layout, [path])
    return load_id_map(path, "entity_id")


def load_relation_map(layout: ArtifactLayout) -> IdMap:
    path = layout.require(layout.relations, "ingest")
    verify(layout, [path])
    return load_id_map(path, "relation_id")


def mapped_triples(layout: ArtifactLayout) -> np.ndarray:
    """All triples as an (n, 3) int32 array of (head_index, relation_index, tail_index)."""
    verify(layout, [layout.entities, layout.relations, layout.require(layout.triples, "ingest")])
    with reading(layout.kg, "rerun the ingest stage (kalora run ... --force ingest)"):
        ents = pq.read_table(layout.entities, columns=["entity_id", "index"])
        rels = pq.read_table(layout.relations, columns=["relation_id", "index"])
        table = ds.dataset(layout.triples, format="parquet").to_table(columns=["head", "relation", "tail"])
    out = np.empty((table.num_rows, 3), dtype=np.int32)
    for col, (column, ref, ref_id) in enumerate(
        (("head", ents, "entity_id"), ("relation", rels, "relation_id"), ("tail", ents, "entity_id"))
    ):
        pos = pc.index_in(table.column(column), value_set=ref.column(ref_id))
        if pos.null_count:
            raise ArtifactError(f"{layout.triples}: {pos.null_count} {column} ids are missing from the id map")
        out[:, col] = ref.column("index").to_numpy()[pos.to_numpy().astype(np.int64)]
    return out
