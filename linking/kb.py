"""The linker's knowledge base and its on-disk form.

:class:`KnowledgeBase` is the alias table plus what the linker knows of every entity: its id,
type (the span label), popularity prior (log-scaled to [0, 1]), KG embedding (for coherence) and
description (for context similarity). Entity ``i`` of the lists is KG index ``i + 1`` (row 0 of
``prior``/``vectors`` is padding). On disk: ``aliases.parquet`` (with each alias's variant key),
``entities.parquet``, ``vectors.npy`` and ``hierarchy.npy`` (the (child, parent) KG-index edges of
the hierarchy relations, for ``allowed_roots``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from linking.aliases import AliasTable
from linking.disambiguation import prior_scores
from pipelines.errors import ArtifactError, ConfigError, InputError


@dataclass
class KnowledgeBase:
    table: AliasTable
    entity_ids: list[str]
    entity_types: list[str]
    prior: np.ndarray                # float32, by KG index (row 0 = padding)
    vectors: np.ndarray | None       # KG embeddings by KG index, or None
    descriptions: list[str]
    hierarchy: np.ndarray | None = None  # (edges × 2) int32 (child, parent) KG indexes, or None

    def branch_mask(self, roots: list[str], where: str = "linker -> allowed_roots") -> np.ndarray | None:
        """By KG index: True for ``roots`` and every entity below one of them through the hierarchy
        edges (row 0, padding, False); None when ``roots`` is empty (everything allowed)."""
        if not roots:
            return None
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import breadth_first_order

        position = {e: i + 1 for i, e in enumerate(self.entity_ids)}
        unknown = [r for r in roots if r not in position]
        if unknown:
            raise ConfigError(f"[{where}] unknown entity id(s) {unknown}: not in the linker's knowledge base "
                              f"({len(self.entity_ids):,} entities, e.g. {self.entity_ids[0]!r})")
        n = len(self.entity_ids) + 1
        mask = np.zeros(n, dtype=bool)
        edges = self.hierarchy if self.hierarchy is not None else np.empty((0, 2), np.int32)
        children = csr_matrix((np.ones(len(edges), np.int8), (edges[:, 1], edges[:, 0])), shape=(n, n))
        for root in roots:
            mask[breadth_first_order(children, position[root], directed=True, return_predecessors=False)] = True
        return mask

    @classmethod
    def create(cls, table: AliasTable, entity_ids: list[str], entity_types: list[str], priors: np.ndarray,
               vectors: np.ndarray | None = None, descriptions: list[str | None] | None = None) -> "KnowledgeBase":
        """From raw priors (sitelinks, annotation counts: log-scaled here); checks the lengths agree."""
        if len(table) == 0:
            raise InputError("cannot build a linker over an empty knowledge base (no usable aliases)")
        if vectors is not None and len(vectors) != len(entity_ids) + 1:
            raise ArtifactError(f"{len(vectors)} entity vectors for {len(entity_ids)} entities (+1 padding row)")
        if descriptions is not None and len(descriptions) != len(entity_ids):
            raise InputError(f"{len(descriptions)} descriptions for {len(entity_ids)} entities")
        prior = np.concatenate([[0.0], prior_scores(np.asarray(priors))]).astype(np.float32)
        return cls(table, list(entity_ids), list(entity_types), prior, vectors,
                   [d or "" for d in descriptions] if descriptions is not None else [""] * len(entity_ids))

    def profiles(self) -> list[str]:
        """Per entity: its names and description, the text context similarity compares against."""
        names: list[list[str]] = [[] for _ in self.entity_ids]
        for alias, ent in zip(self.table.alias, self.table.entity_index.tolist()):
            names[ent - 1].append(alias)
        return [" ".join(n) + " " + d for n, d in zip(names, self.descriptions)]

    def to_disk(self, path: Path) -> list[str]:
        """Write the tables; returns the file names written."""
        t = self.table
        pq.write_table(pa.table({"alias": t.alias, "alias_norm": t.alias_norm,
                                 "entity_index": pa.array(t.entity_index, pa.int32()), "kind": t.kind,
                                 "alias_variant": t.variants(), "alias_bag": t.bags()}), path / "aliases.parquet")
        pq.write_table(pa.table({"entity_id": self.entity_ids, "type": self.entity_types,
                                 "prior": pa.array(self.prior[1:], pa.float32()),
                                 "description": pa.array(self.descriptions, pa.string())}), path / "entities.parquet")
        written = ["aliases.parquet", "entities.parquet"]
        if self.hierarchy is not None:
            np.save(path / "hierarchy.npy", self.hierarchy.astype(np.int32), allow_pickle=False)
            written.append("hierarchy.npy")
        if self.vectors is not None:
            np.save(path / "vectors.npy", self.vectors.astype(np.float32), allow_pickle=False)
            written.append("vectors.npy")
        return written

    @classmethod
    def from_disk(cls, path: Path) -> "KnowledgeBase":
        if not (path / "aliases.parquet").exists():
            raise ArtifactError(f"{path}: no aliases.parquet: the linker was saved without a knowledge base")
        a = pq.read_table(path / "aliases.parquet")
        e = pq.read_table(path / "entities.parquet")
        variants = a.column("alias_variant").to_pylist() if "alias_variant" in a.column_names else None
        bags = a.column("alias_bag").to_pylist() if "alias_bag" in a.column_names else None  # older linkers: computed
        table = AliasTable(a.column("alias").to_pylist(), a.column("alias_norm").to_pylist(),
                           a.column("entity_index").to_numpy(), a.column("kind").to_pylist(), variants, bags)
        vectors = np.load(path / "vectors.npy", allow_pickle=False) if (path / "vectors.npy").exists() else None
        descriptions = e.column("description").to_pylist() if "description" in e.column_names else None
        kb = cls.create(table, e.column("entity_id").to_pylist(), e.column("type").to_pylist(), np.zeros(e.num_rows),
                        vectors, descriptions)
        kb.prior = np.concatenate([[0.0], e.column("prior").to_numpy()]).astype(np.float32)
        if (path / "hierarchy.npy").exists():
            kb.hierarchy = np.load(path / "hierarchy.npy", allow_pickle=False)
        return kb
