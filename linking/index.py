"""FAISS index over entity vectors; row *i* of the index is row *i* of ``index/entity_ids.parquet``."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.artifacts import ArtifactLayout, Timer, atomic_write_json, record_stage, staged_dir
from pipelines.errors import ArtifactError, InputError
from pipelines.integrity import verify

log = logging.getLogger(__name__)

FLAT_MAX = 100_000  # exact search below this many entities; HNSW above


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def build_faiss(vectors: np.ndarray, *, hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128):
    """Cosine index (vectors L2-normalised, inner product); the type is chosen by size."""
    import faiss

    if vectors.ndim != 2 or len(vectors) == 0:
        raise InputError(f"cannot index an empty knowledge base (got vectors of shape {vectors.shape})")
    x = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    faiss.normalize_L2(x)
    d = x.shape[1]
    if len(x) <= FLAT_MAX:
        index = faiss.IndexFlatIP(d)
        params: dict[str, Any] = {"type": "IndexFlatIP"}
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        params = {"type": "IndexHNSWFlat", "M": hnsw_m, "efConstruction": ef_construction, "efSearch": ef_search}
    index.add(x)
    params.update({"metric": "inner_product_on_l2_normalised", "dim": d, "ntotal": int(index.ntotal)})
    return index, params


def build_entity_index(layout: ArtifactLayout, model: str = "transe") -> dict[str, Any]:
    import faiss

    from kg.embeddings import load_entity_vectors

    with Timer() as timer:
        vectors, meta = load_entity_vectors(layout, model)
        verify(layout, [layout.entities])
        ids = pq.read_table(layout.entities, columns=["entity_id", "index"])
        if len(vectors) != ids.num_rows + 1:
            raise ArtifactError(f"{layout.embeddings(model)}: {len(vectors) - 1} vectors but {ids.num_rows} entities: re-run `kalora embed`")
        index, params = build_faiss(vectors[1:])
        with staged_dir(layout.index) as tmp:
            faiss.write_index(index, str(tmp / "entities.faiss"))
            pq.write_table(ids, tmp / "entity_ids.parquet")
            params.update({"embedding_model": model, "embedding_version": meta["embedding_version"],
                           "entity_ids_sha256": _ids_digest(ids.column("entity_id").to_pylist())})
            atomic_write_json(tmp / "meta.json", params)
    return record_stage(layout, "index", parameters=params, outputs={"index": str(layout.index)},
                        counts={"entities": int(index.ntotal)}, wall_time_s=timer.seconds)


@dataclass
class EntityIndex:
    index: Any
    entity_ids: list[str]
    entity_index: np.ndarray  # KG index of each row
    meta: dict[str, Any]

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, KG indices) of the k nearest entities, cosine."""
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32).copy()
        faiss.normalize_L2(x)
        scores, rows = self.index.search(x, k)
        return scores, np.where(rows >= 0, self.entity_index[np.clip(rows, 0, None)], 0)


def load_entity_index(layout: ArtifactLayout) -> EntityIndex:
    import faiss

    path = layout.require(layout.index / "entities.faiss", "index")
    verify(layout, [layout.index])
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:  # FAISS reports a corrupt or truncated file as a RuntimeError
        raise ArtifactError(f"{path}: not a readable FAISS index ({str(exc).splitlines()[0]}): "
                            "rebuild with `kalora index`") from None
    ids = pq.read_table(layout.index / "entity_ids.parquet")
    meta = json.loads((layout.index / "meta.json").read_text())
    id_list = ids.column("entity_id").to_pylist()
    if index.ntotal != len(id_list):
        raise ArtifactError(f"{path}: index has {index.ntotal} rows but entity_ids.parquet has {len(id_list)}: rebuild with `kalora index`")
    if meta.get("entity_ids_sha256") not in (None, _ids_digest(id_list)):
        raise ArtifactError(f"{layout.index / 'entity_ids.parquet'} does not match the ids the index was built with: rebuild with `kalora index`")
    return EntityIndex(index, id_list, ids.column("index").to_numpy(), meta)


