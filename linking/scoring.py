"""Concept-recognition scores: document-level and mention-level micro P / R / F1, and PubTator corpora.

The protocol the concept-recognition issue names (and ``benchmarks/concept_recognition.py`` runs):
ids on both sides are mapped through ``normalise`` (an ontology's ``alt_id`` → live id) and only
ids in ``keep`` (e.g. the descendants of *Phenotypic abnormality*) are counted.

- document level: each document's set of ids against the gold set;
- mention level: a predicted (start, end, id) is correct when a gold mention of the same id
  overlaps it; a gold mention is found when a predicted mention of its id overlaps it (precision
  counts predictions, recall counts gold mentions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import InputError

Mention = tuple[int, int, str]  # (start char, end char, concept id)


@dataclass
class AnnotatedDoc:
    doc_id: str
    text: str
    mentions: list[Mention] = field(default_factory=list)


def _prf(tp_p: int, n_pred: int, tp_g: int, n_gold: int) -> dict:
    p = tp_p / n_pred if n_pred else 0.0
    r = tp_g / n_gold if n_gold else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "predicted": n_pred, "gold": n_gold}


def document_scores(pred: list[set[str]], gold: list[set[str]], normalise: dict[str, str] | None = None,
                    keep: set[str] | None = None) -> dict:
    """Micro P / R / F1 over documents' id sets."""
    tp = n_pred = n_gold = 0
    for p, g in zip(pred, gold, strict=True):
        p, g = _ids(p, normalise, keep), _ids(g, normalise, keep)
        tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
    return _prf(tp, n_pred, tp, n_gold)


def mention_scores(pred: list[list[Mention]], gold: list[list[Mention]], normalise: dict[str, str] | None = None,
                   keep: set[str] | None = None) -> dict:
    """Micro P / R / F1 over mentions: overlap and the same id."""
    tp_p = tp_g = n_pred = n_gold = 0
    for p, g in zip(pred, gold, strict=True):
        p, g = _mentions(p, normalise, keep), _mentions(g, normalise, keep)
        n_pred, n_gold = n_pred + len(p), n_gold + len(g)
        tp_p += sum(any(_overlap(m, o) for o in g) for m in p)
        tp_g += sum(any(_overlap(o, m) for m in p) for o in g)
    return _prf(tp_p, n_pred, tp_g, n_gold)


def _ids(ids, normalise, keep) -> set[str]:
    out = {normalise.get(i, i) for i in ids} if normalise else set(ids)
    return out & keep if keep is not None else out


def _mentions(mentions, normalise, keep) -> list[Mention]:
    out = [(s, e, normalise.get(i, i) if normalise else i) for s, e, i in mentions]
    return [m for m in out if keep is None or m[2] in keep]


def _overlap(a: Mention, b: Mention) -> bool:
    return a[2] == b[2] and a[0] < b[1] and b[0] < a[1]


def read_pubtator(path: str | Path) -> list[AnnotatedDoc]:
    """A PubTator file: ``id|t|title``, ``id|a|abstract``, then ``id<TAB>start<TAB>end<TAB>mention<TAB>type<TAB>ids``
    per annotation (offsets into ``title + " " + abstract``, or the abstract alone when the title is
    empty; several ids may be joined by ``,``, ``;`` or ``|``), documents separated by blank lines."""
    path = Path(path)
    docs: dict[str, AnnotatedDoc] = {}
    titles: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if "|t|" in line[:40] or "|a|" in line[:40]:
            doc_id, part, text = line.split("|", 2)
            if part == "t":
                titles[doc_id] = text
            else:
                title = titles.get(doc_id, "")
                docs[doc_id] = AnnotatedDoc(doc_id, f"{title} {text}" if title else text)
            continue
        cols = line.split("\t")
        if len(cols) < 6 or not cols[1].isdigit() or not cols[2].isdigit():
            raise InputError(f"{path}:{no}: expected 'id<TAB>start<TAB>end<TAB>mention<TAB>type<TAB>concept' "
                             f"or an 'id|t|' / 'id|a|' line, got {line[:80]!r}")
        doc = docs.get(cols[0])
        if doc is None:
            raise InputError(f"{path}:{no}: annotation of document {cols[0]!r} before its '|a|' line")
        start, end = int(cols[1]), int(cols[2])
        if not 0 <= start < end <= len(doc.text):
            raise InputError(f"{path}:{no}: offsets {start}-{end} outside document {cols[0]!r} "
                             f"({len(doc.text)} characters)")
        for concept in cols[5].replace(";", ",").replace("|", ",").split(","):
            if concept.strip():
                doc.mentions.append((start, end, concept.strip()))
    return list(docs.values())
