"""Negated and uncertain concept mentions, NegEx/ConText-style: "no seizures", "hypotonia was not
observed", "possible ptosis", "cannot be excluded".

A trigger phrase opens a scope forwards ("pre": "no", "denies", "negative for", "possible") or
backwards ("post": "was ruled out", "were absent", "is suspected") of at most ``scope`` tokens,
closed early by a termination term ("but", "however", "although", ";") or the sentence's end. A
mention inside a negation scope is negated, inside an uncertainty scope uncertain. Pseudo-triggers
("no increase", "not only", "gram negative") are recognised first so they open nothing. Every list
is extendable through :class:`NegationRules` (the linker's ``negation_triggers`` setting).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spacy.tokens import Doc, Span

TRIGGERS: dict[str, tuple[str, ...]] = {
    "pre_negation": (
        "no", "not", "without", "denies", "denied", "deny", "negative for", "no evidence of", "no sign of",
        "no signs of", "absence of", "absent", "free of", "ruled out", "rules out", "never", "neither", "nor",
        "did not have", "does not have", "did not show", "does not show", "did not exhibit", "no history of",
        "lack of", "lacks", "lacked", "unremarkable for", "resolved", "non", "none",
    ),
    "post_negation": (
        "was ruled out", "were ruled out", "is ruled out", "are ruled out", "is absent", "was absent",
        "were absent", "are absent", "not seen", "was negative", "were negative", "not detected",
        "was not observed", "were not observed", "was not present", "were not present", "was not found",
        "were not found", "was excluded", "were excluded", "was not noted", "were not noted",
    ),
    "pre_uncertain": (
        "possible", "possibly", "probable", "probably", "suspected", "suspicion of", "suspicious for",
        "may have", "might have", "questionable", "rule out", "r/o", "cannot exclude", "cannot rule out",
        "consistent with possible", "concern for", "likely", "presumed", "differential diagnosis",
    ),
    "post_uncertain": (
        "is suspected", "was suspected", "were suspected", "cannot be excluded", "could not be excluded",
        "cannot be ruled out", "could not be ruled out", "is possible", "was possible", "is likely",
        "was considered", "were considered", "is questionable",
    ),
    "pseudo": (
        "no increase", "no change", "no further", "not only", "not necessarily", "not certain if",
        "gram negative", "without difficulty", "no significant change", "not ruled out", "not excluded",
        "no longer", "nor did", "not been ruled out",
    ),
    "termination": (
        "but", "however", "although", "though", "except", "aside from", "apart from", "whereas", "yet",
        "which", "who", "while", "nevertheless", "still", "except for", ";", ":", ".", "!", "?",
    ),
}


@dataclass(frozen=True)
class NegationRules:
    scope: int = 8                                   # tokens a trigger reaches
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)  # more phrases per TRIGGERS kind

    def phrases(self, kind: str) -> tuple[tuple[str, ...], ...]:
        # spaCy splits "cannot" into "can" + "not" and "didn't" into "did" + "n't" (read as "not")
        return tuple(tuple(p.lower().replace("cannot", "can not").split())
                     for p in (*TRIGGERS[kind], *self.extra.get(kind, ())))


def _compile(phrases: tuple[tuple[str, ...], ...]) -> dict[str, list[tuple[str, ...]]]:
    """Phrases by first word, longest first."""
    out: dict[str, list[tuple[str, ...]]] = {}
    for p in sorted(set(phrases), key=len, reverse=True):
        out.setdefault(p[0], []).append(p)
    return out


def _find(words: list[str], phrases: dict[str, list[tuple[str, ...]]]) -> list[tuple[int, int]]:
    """(start, end) token offsets of every phrase occurrence, the longest at each start."""
    out = []
    for i, w in enumerate(words):
        for p in phrases.get(w, ()):
            if tuple(words[i:i + len(p)]) == p:
                out.append((i, i + len(p)))
                break
    return out


class ScopeFinder:
    """Marks spans negated / uncertain; one instance per rule set (the phrase lists are compiled once)."""

    def __init__(self, rules: NegationRules = NegationRules()):
        self.rules = rules
        self.kinds = {kind: _compile(rules.phrases(kind)) for kind in TRIGGERS}

    def _scopes(self, words: list[str]) -> dict[str, list[tuple[int, int]]]:
        """Per "negation"/"uncertain": token ranges [start, end) inside the sentence that are in scope."""
        pseudo = {i for s, e in _find(words, self.kinds["pseudo"]) for i in range(s, e)}
        stops = sorted(s for s, _ in _find(words, self.kinds["termination"]))
        scope = self.rules.scope
        out: dict[str, list[tuple[int, int]]] = {"negation": [], "uncertain": []}
        for kind, label in (("negation", "negation"), ("uncertain", "uncertain")):
            for s, e in _find(words, self.kinds[f"pre_{kind}"]):
                if s in pseudo:
                    continue
                end = min([x for x in stops if x >= e] + [e + scope, len(words)])
                out[label].append((e, end))
            for s, e in _find(words, self.kinds[f"post_{kind}"]):
                if s in pseudo:
                    continue
                start = max([x + 1 for x in stops if x < s] + [s - scope, 0])
                out[label].append((start, s))
        return out

    def mark(self, doc: Doc, spans: list[Span]) -> list[tuple[bool, bool]]:
        """(negated, uncertain) for each span, judged within its sentence."""
        by_sentence: dict[int, dict[str, list[tuple[int, int]]]] = {}
        result = []
        for span in spans:
            sent = span.sent if doc.has_annotation("SENT_START") else doc[:]
            if sent.start not in by_sentence:
                by_sentence[sent.start] = self._scopes(["not" if t.lower_ == "n't" else t.lower_ for t in sent])
            scopes = by_sentence[sent.start]
            s = span.start - sent.start
            result.append(tuple(any(a <= s < b for a, b in scopes[k])
                                for k in ("negation", "uncertain")))
        return result
