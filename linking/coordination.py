"""Coordinated mentions: one concept per conjunct.

"aplastic or hypoplastic nails" names *aplastic nails* and *hypoplastic nails*; "short stature and
limbs" names *short stature* and *short limbs*. The alias matcher finds only the contiguous one
("hypoplastic nails", "short stature"). Around every alias match this module tries the two
shapes of coordination, and keeps a reading only when it is itself an alias of the knowledge base:

- shared head: ``X (, Y)* (and|or|/) <match: M1 .. Mn>`` → ``X M2 .. Mn`` for each single-token
  conjunct ``X`` before the match;
- shared modifier: ``<match: M1 .. Mn> (and|or) Z`` → ``M1 .. Mn-1 Z`` for a single-token ``Z``
  right after the match, at the end of the phrase.

The new mention is the conjunct's own token (so ``doc.ents`` keeps both concepts), and
``span._.kg_text`` holds the reading that was looked up ("aplastic nails").
"""

from __future__ import annotations

from spacy.tokens import Doc

from linking.matcher import AliasMatcher, norm_token

COORDINATORS = {"and", "or", "/", "and/or", "nor"}
_PHRASE_END = {".", ",", ";", ":", ")", "(", "and", "or", "with", "in", "of", "was", "were", "is", "are"}


def _rows(matcher: AliasMatcher, words: list[str], surface: str) -> list[int]:
    return matcher.lookup(" ".join(w for w in map(norm_token, words) if w), surface)


def _word(token) -> bool:
    return token.is_alpha and len(token.text) > 1


def expansions(doc: Doc, found: list[tuple[int, int, list[int]]],
               matcher: AliasMatcher) -> list[tuple[int, int, list[int], str]]:
    """(start token, end token, alias rows, reading) for each conjunct that completes to an alias."""
    out = []
    taken = {(s, e) for s, e, _ in found}
    for start, end, _ in found:
        if end - start < 2:
            continue
        head = [t.text for t in doc[start + 1:end]]
        i = start - 1  # shared head: walk left over "X or", "X, Y and"
        if i >= 0 and doc[i].lower_ in COORDINATORS:
            j = i - 1
            while j >= 0 and _word(doc[j]) and (j, j + 1) not in taken:
                reading = [doc[j].text, *head]
                rows = _rows(matcher, reading, " ".join(reading))
                if rows:
                    out.append((j, j + 1, rows, " ".join(reading)))
                    taken.add((j, j + 1))
                if j - 1 >= 0 and doc[j - 1].text == ",":
                    j -= 2
                else:
                    break
        k = end  # shared modifier: "M1 .. Mn and Z"
        if (k + 1 < len(doc) and doc[k].lower_ in {"and", "or"} and _word(doc[k + 1])
                and (k + 2 == len(doc) or doc[k + 2].lower_ in _PHRASE_END) and (k + 1, k + 2) not in taken):
            reading = [t.text for t in doc[start:end - 1]] + [doc[k + 1].text]
            rows = _rows(matcher, reading, " ".join(reading))
            if rows:
                out.append((k + 1, k + 2, rows, " ".join(reading)))
                taken.add((k + 1, k + 2))
    return out
