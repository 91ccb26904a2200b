"""Benchmark peer: scispaCy's char-3-gram TF-IDF + nmslib HNSW candidate generator.

A reference point for the entity-linking benchmark, NOT part of the kalora-kg
pipeline. scispaCy needs numpy<2 (and scipy<1.11 to build an index), so this
script must run in the separate peer venv, never in the project's .venv:

    python3 -m venv .venv-scispacy
    .venv-scispacy/bin/pip install "numpy<2" scispacy nmslib-metabrainz "scipy<1.11"
    .venv-scispacy/bin/python benchmarks/scispacy_peer.py --kb KB.jsonl \
        --mentions MENTIONS.txt --out OUT.jsonl --k 10 --index-dir DIR

KB.jsonl holds one scispaCy Entity per line ({"concept_id", "canonical_name",
"aliases", "types", "definition"}); the name must end in "jsonl". The index is
built with scispacy.candidate_generation.create_tfidf_ann_index, which re-loads
DIR instead of rebuilding when DIR already holds the four index files (stderr
says "index_cached": true then; the cache is keyed on DIR only, so use a fresh
DIR per KB / --min-df). Queries always go to the index as saved and re-loaded.
Scoring follows scispaCy's EntityLinker: a concept's score is max(similarities)
over its aliases among the k nearest alias neighbours, sorted descending.
The linker's 0.7 threshold is NOT applied. Everything runs offline.

Output: one JSON line per mention line (blank lines included, in order):
{"mention": ..., "candidates": [{"concept_id": ..., "score": ...}, ...]}.
A JSON timing line goes last to stderr.
"""
import argparse
import contextlib
import json
import os
import sys
import time

import scispacy.candidate_generation as cg
from scispacy.candidate_generation import CandidateGenerator, LinkerPaths, create_tfidf_ann_index
from scispacy.linking_utils import KnowledgeBase

SCISPACY_MIN_DF = 10  # hard-coded in create_tfidf_ann_index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kb", required=True, help="KB in scispaCy jsonl format")
    ap.add_argument("--mentions", required=True, help="one mention per line")
    ap.add_argument("--out", required=True, help="output jsonl")
    ap.add_argument("--k", type=int, default=10, help="concepts to output per mention")
    ap.add_argument("--ann-k", type=int, default=None,
                    help="alias neighbours asked of the generator (default: --k, as scispaCy's k)")
    ap.add_argument("--index-dir", required=True, help="where the index is saved / re-loaded")
    ap.add_argument("--ef-search", type=int, default=200, help="HNSW efSearch (scispaCy default 200)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--min-df", type=int, default=SCISPACY_MIN_DF,
                    help="TfidfVectorizer min_df; scispaCy uses 10, lower it only for tiny KBs")
    args = ap.parse_args()
    ann_k = args.ann_k or args.k

    if args.min_df != SCISPACY_MIN_DF:  # same recipe, only min_df changed
        base = cg.TfidfVectorizer
        cg.TfidfVectorizer = lambda **kw: base(**{**kw, "min_df": args.min_df})

    os.makedirs(args.index_dir, exist_ok=True)
    cached = LinkerPaths.from_directory(args.index_dir).is_locally_cached()
    t0 = time.perf_counter()
    kb = KnowledgeBase(file_path=args.kb)
    t1 = time.perf_counter()
    if not cached:
        with contextlib.redirect_stdout(sys.stderr):  # scispaCy prints progress to stdout
            create_tfidf_ann_index(out_path=args.index_dir, kb=kb, ef_search=args.ef_search)
    t2 = time.perf_counter()
    # Always query the index as saved and re-loaded (float16 vectors, efSearch set), as
    # scispaCy's EntityLinker does: a fresh in-memory build would score slightly differently.
    aliases, vectorizer, ann_index = LinkerPaths.from_directory(args.index_dir).load(
        ef_search=args.ef_search)
    generator = CandidateGenerator(ann_index=ann_index, tfidf_vectorizer=vectorizer,
                                   ann_concept_aliases_list=aliases, kb=kb)
    t3 = time.perf_counter()

    with open(args.mentions, encoding="utf-8") as f:
        mentions = f.read().splitlines()

    batches = []
    q0 = time.perf_counter()
    for i in range(0, len(mentions), args.batch_size):
        batches.extend(generator(mentions[i:i + args.batch_size], ann_k))
    query_s = time.perf_counter() - q0

    with open(args.out, "w", encoding="utf-8") as out:
        for mention, cands in zip(mentions, batches):
            scored = sorted(((c.concept_id, max(c.similarities)) for c in cands),
                            key=lambda x: x[1], reverse=True)[: args.k]
            out.write(json.dumps({"mention": mention, "candidates": [
                {"concept_id": cid, "score": float(s)} for cid, s in scored]}) + "\n")

    print(json.dumps({
        "kb_load_s": round(t1 - t0, 4),
        "index_build_s": round(t2 - t1, 4),
        "index_load_s": round(t3 - t2, 4),
        "index_cached": cached,
        "index_aliases": len(aliases),
        "kb_concepts": len(kb.cui_to_entity),
        "query_s": round(query_s, 4),
        "queries": len(mentions),
        "queries_per_s": round(len(mentions) / query_s, 2) if query_s > 0 else None,
        "k": args.k, "ann_k": ann_k, "ef_search": args.ef_search, "min_df": args.min_df,
    }), file=sys.stderr)


if __name__ == "__main__":
    main()
