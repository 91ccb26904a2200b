"""FAISS neighbour quality of an embedding of the HPO graph (issue 14): for a seeded sample of HPO
terms (entities with an ``is_a`` edge), the fraction of the 10 nearest index neighbours that lie
within two ``is_a`` hops (either direction), and the hub share: how often the 20 highest-degree
entities appear in those top-10 lists.

    .venv/bin/python benchmarks/faiss_neighbours.py --root /tmp/a-demo --name hpo --model complex \
        [--model transe ...]                        # one row per embeddings/<model>/ of the build

The index is the one the ``index`` stage builds (linking.index.build_faiss: cosine, flat under
its size threshold).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from kg.ids import mapped_triples
from linking.index import build_faiss
from pipelines.artifacts import ArtifactLayout


def _graph(layout: ArtifactLayout):
    triples = mapped_triples(layout)
    rels = pq.read_table(layout.relations).to_pandas()
    is_a = int(rels.loc[rels.relation_id == "is_a", "index"].iloc[0])
    h, r, t = triples[:, 0], triples[:, 1], triples[:, 2]
    sel = r == is_a
    neighbours: dict[int, set[int]] = {}
    for a, b in zip(h[sel], t[sel]):
        neighbours.setdefault(int(a), set()).add(int(b))
        neighbours.setdefault(int(b), set()).add(int(a))
    degree = np.bincount(np.concatenate([h, t]))
    return neighbours, degree


def measure(vectors: np.ndarray, neighbours: dict[int, set[int]], degree: np.ndarray, sample: int = 1000,
            seed: int = 0) -> dict[str, float]:
    index, _ = build_faiss(vectors[1:])  # row 0 is padding; faiss id i is entity index i + 1
    terms = np.array(sorted(neighbours))
    queries = np.random.default_rng(seed).choice(terms, min(sample, len(terms)), replace=False)
    x = np.ascontiguousarray(vectors[queries], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    _, found = index.search(x, 11)
    hubs = set(np.argsort(-degree)[:20].tolist())
    near, hub_hits, total = 0, 0, 0
    for q, row in zip(queries, found + 1):
        row = [int(e) for e in row if e != q][:10]
        two_hops = set(neighbours.get(int(q), ()))
        for n in list(two_hops):
            two_hops |= neighbours.get(n, set())
        near += sum(e in two_hops for e in row)
        hub_hits += sum(e in hubs for e in row)
        total += len(row)
    return {"within_two_is_a_hops": near / total, "hub_share": hub_hits / total, "queries": len(queries)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--name", default="hpo")
    ap.add_argument("--model", action="append", required=True, help="embeddings/<model>/ to measure")
    ap.add_argument("--sample", type=int, default=1000)
    args = ap.parse_args()
    layout = ArtifactLayout(args.root, args.name)
    neighbours, degree = _graph(layout)
    print("| embedding | MRR | 10-NN within two is_a hops | hub share of top-10 |\n|---|---|---|---|")
    for model in args.model:
        import json

        out = layout.embeddings(model)
        vectors = np.load(out / "entities.npy", allow_pickle=False)
        mrr = json.loads((out / "metrics.json").read_text())["metrics"]["mrr"]
        m = measure(vectors, neighbours, degree, args.sample)
        print(f"| {model} | {mrr:.3f} | {m['within_two_is_a_hops']:.3f} | {m['hub_share']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
