"""Abbreviations defined in a document: "nevoid basal cell carcinoma syndrome (NBCCS)".

The algorithm of Schwartz & Hearst (2003), the one scispaCy's ``AbbreviationDetector`` uses
(scispaCy itself needs numpy < 2, so it cannot be a dependency here): a parenthesis after a phrase
proposes a short form; the long form is the shortest run of preceding words, at most
``min(len(short) + 5, 2 * len(short))`` of them, in which every character of the short form can be
found right to left, the first one at the start of a word. "long form (SF)" and "SF (long form)"
are both recognised. Later uses of the short form (same case, whole tokens) are returned so the
linker can give them the long form's concept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spacy.tokens import Doc, Span

_PAREN = re.compile(r"\(([^()]{1,80})\)")


@dataclass(frozen=True)
class Abbreviation:
    long: Span    # the long form, as tokens of the document
    short: Span   # the short form at its definition
    uses: tuple[Span, ...]  # later whole-token uses of the short form (the definition excluded)


def is_short_form(text: str) -> bool:
    """2-10 characters, at most two words, starting alphanumeric, with at least one letter."""
    return (2 <= len(text) <= 10 and len(text.split()) <= 2 and text[0].isalnum()
            and any(c.isalpha() for c in text))


def best_long_form(short: str, candidate: str) -> str | None:
    """The shortest suffix of ``candidate`` (a run of words) that explains ``short``: each short-form
    character (letters and digits) is found in order from the right, the first at a word start."""
    s, l = len(short) - 1, len(candidate) - 1
    while s >= 0:
        c = short[s].lower()
        if not c.isalnum():
            s -= 1
            continue
        while l >= 0 and (candidate[l].lower() != c or (s == 0 and l > 0 and candidate[l - 1].isalnum())):
            l -= 1
        if l < 0:
            return None
        l -= 1
        s -= 1
    long = candidate[candidate.rfind(" ", 0, l + 1) + 1:]
    return long if long and len(long) > len(short) and short.lower() not in long.lower().split() else None


def _words_before(text: str, end: int, n: int) -> tuple[str, int]:
    """The last ``n`` whitespace-separated words of ``text[:end]`` (one sentence), and their start."""
    chunk = text[:end].rstrip()
    starts = [m.start() for m in re.finditer(r"\S+", chunk)][-n:]
    return (chunk[starts[0]:], starts[0]) if starts else ("", end)


def _span(doc: Doc, start: int, end: int) -> Span | None:
    return doc.char_span(start, end, alignment_mode="expand")


def _definitions(doc: Doc) -> list[tuple[Span, Span]]:
    """(long form, short form) pairs defined in ``doc``, sentence by sentence when it has sentences."""
    pairs = []
    sents = list(doc.sents) if doc.has_annotation("SENT_START") else [doc[:]]
    for sent in sents:
        text, base = sent.text, sent.start_char
        for m in _PAREN.finditer(text):
            inner = m.group(1).strip()
            before = text[:m.start()].rstrip()
            if is_short_form(inner):  # long form (SF)
                window = min(len(inner) + 5, 2 * len(inner))
                candidate, cstart = _words_before(text, len(before), window)
                long = best_long_form(inner, candidate)
                if long is None:
                    continue
                lstart = base + cstart + len(candidate) - len(long)
                short_start = base + m.start(1) + (len(m.group(1)) - len(m.group(1).lstrip()))
                spans = _span(doc, lstart, lstart + len(long)), _span(doc, short_start, short_start + len(inner))
            elif len(inner.split()) > 2 and (sf := before.rsplit(None, 1)[-1] if before else "") and is_short_form(sf):
                long = best_long_form(sf, inner)  # SF (long form)
                if long is None:
                    continue
                lstart = base + m.start(1) + (len(m.group(1)) - len(m.group(1).lstrip())) + len(inner) - len(long)
                spans = _span(doc, lstart, lstart + len(long)), _span(doc, base + len(before) - len(sf), base + len(before))
            else:
                continue
            if all(s is not None for s in spans):
                pairs.append(spans)
    return pairs


def find_abbreviations(doc: Doc) -> list[Abbreviation]:
    """Every abbreviation defined in ``doc`` with its later uses (first definition of a short form wins)."""
    out, seen = [], set()
    starts: dict[str, list[int]] | None = None
    for long, short in _definitions(doc):
        if short.text in seen:
            continue
        seen.add(short.text)
        if starts is None:  # token positions by text, built once per document that defines any
            starts = {}
            for t in doc:
                starts.setdefault(t.text, []).append(t.i)
        n = len(short)
        uses = tuple(doc[i:i + n] for i in starts.get(short[0].text, ())
                     if i != short.start and not (long.start <= i < long.end) and i + n <= len(doc)
                     and (n == 1 or doc[i:i + n].text == short.text))
        out.append(Abbreviation(long, short, uses))
    return out
