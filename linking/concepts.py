"""What a linked document says: concept spans, abbreviations resolved, concept lists.

``doc.spans["kg_concepts"]`` holds every linked span, overlapping ones included; ``doc.ents`` the
best non-overlapping ones. :func:`doc_concepts` is the concept list users ask for (negated mentions
left out unless asked for).
"""

from __future__ import annotations

from spacy.tokens import Doc, Span

from linking.abbreviations import find_abbreviations

CONCEPTS_KEY = "kg_concepts"


def _copy(doc: Doc, start: int, end: int, source: Span) -> Span:
    span = Span(doc, start, end, label=source.label_, kb_id=source.kb_id_)
    span._.kg_score, span._.kg_candidates = source._.kg_score, source._.kg_candidates
    span._.abbreviation_of = source.text
    return span


def abbreviation_uses(doc: Doc, linked: list[Span]) -> list[Span]:
    """Spans for the short forms of abbreviations defined in ``doc`` whose long form was linked (the
    linked span covering the most of the long form, ending where it ends), at the definition and at
    every later use, with the long form's concept; short forms already linked to it are skipped."""
    by_end: dict[int, list[Span]] = {}
    for span in linked:
        by_end.setdefault(span.end, []).append(span)
    taken = {(s.start, s.end, s.kb_id_) for s in linked}
    out = []
    for abbr in find_abbreviations(doc):
        inside = [s for s in by_end.get(abbr.long.end, []) if s.start >= abbr.long.start]
        if not inside:
            continue
        source = min(inside, key=lambda s: s.start)
        for short in (abbr.short, *abbr.uses):
            if (short.start, short.end, source.kb_id_) not in taken:
                taken.add((short.start, short.end, source.kb_id_))
                out.append(_copy(doc, short.start, short.end, source))
    return out


def doc_concepts(doc: Doc, *, include_negated: bool = False, include_uncertain: bool = True) -> list[str]:
    """The distinct KG ids a linked document mentions, in order of first mention."""
    spans = doc.spans[CONCEPTS_KEY] if CONCEPTS_KEY in doc.spans else doc.ents
    seen: dict[str, None] = {}
    for span in spans:
        if (include_negated or not span._.negated) and (include_uncertain or not span._.uncertain):
            seen.setdefault(span.kb_id_, None)
    return list(seen)
