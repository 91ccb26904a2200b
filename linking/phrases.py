"""Mentions that are not spelled like any alias: word-bag matches in sentence-bounded windows.

Clinicians write "the ears were low-set", "muscles were weak", "hypotonic", "dysplastic nails";
the ontology spells *Low-set ears*, *Muscle weakness*, *Hypotonia*, *Nail dysplasia*. The exact
alias matcher (:mod:`linking.matcher`) finds none of them. This module keys every alias by the
sorted bag of its content-word stems (:func:`bag_key`: Snowball/Porter2 stems, plus the paired
medical suffixes -ia/-ic, -osis/-otic, -asia/-astic, -y/-ic, so "hypotonia" and "hypotonic" meet),
and proposes as mentions the windows of consecutive content words inside one clause of one
sentence whose bag equals an alias's bag. Function words ("were", "the", "of", "very", "slightly")
inside a window are skipped; punctuation other than hyphens and apostrophes, coordinators and
sentence bounds close it.

:class:`BagMatcher` returns windows as the alias matcher returns matches: (start token, end token,
alias rows), longest first and non-overlapping. The linker tries windows only on tokens no exact
match took, and ranks their candidates like any mention.
"""

from __future__ import annotations

from functools import lru_cache

from linking.aliases import AliasTable, is_case_sensitive
from linking.keys import STOPWORDS
from linking.matcher import norm_token
from pipelines.normalize import variant_key

# words skipped inside a text window (and left out of an alias's bag): articles, prepositions,
# auxiliaries and degree adverbs; a name that is only such words has no bag
SKIPPED = STOPWORDS | frozenset(
    "was were is are be been being has have had also very mildly moderately severely markedly slightly "
    "somewhat extremely relatively significantly noticeably rather quite bilaterally".split())
# words that close a window: coordinators and negation/contrast words ("and", "or", "but", "not")
CLOSING = frozenset("and or nor but not no without than".split())
MAX_WORDS = 6          # content words in one window (HPO names: 99% have <= 6)
MAX_SKIPPED = 3        # skipped words in a row inside a window
# alias kinds a bag may stand for: not symbols and abbreviations (their case matters), not broad or
# related synonyms (a different concept spelled nearly alike is too likely)
BAG_KINDS_EXCLUDED = frozenset({"symbol", "abbreviation", "synonym_broad", "synonym_related"})
MIN_SINGLE = 5         # a one-word window must have a stem this long ("obes" is too short, "hypoton" not)

_SUFFIXES = (("ically", ""), ("ical", ""), ("otic", "o"), ("osis", "o"), ("astic", "as"), ("asia", "as"),
             ("aly", "al"), ("alic", "al"), ("ophy", "oph"), ("ophic", "oph"), ("etry", "etr"), ("etric", "etr"),
             ("ia", ""), ("ic", ""))
# kept whole: -itis, -ism and -ing name their own concepts ("Tendonitis", "Alcoholism", "Mouthing"),
# and the -ic words whose stem is another body part's word ("limbic" is not "limb")
_WHOLE = ("itis", "ism", "ing")
_WHOLE_WORDS = frozenset({"limbic"})


@lru_cache(maxsize=None)
def _english():
    import snowballstemmer

    return snowballstemmer.stemmer("english")


@lru_cache(maxsize=500_000)
def word_stem(word: str) -> str:
    """The stem a word is compared by: paired medical suffixes first ("scoliosis"/"scoliotic" →
    "scolio", "hypoplasia"/"hypoplastic" → "hypoplas", "microcephalic" → "microcephal"), else the
    Porter2 stem; -itis, -ism and -ing words are kept whole."""
    if word.endswith(_WHOLE) or word in _WHOLE_WORDS:
        return word
    for suffix, repl in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) + len(repl) >= 4:
            return word[: len(word) - len(suffix)] + repl
    return _english().stemWord(word)


@lru_cache(maxsize=500_000)
def word_key(word: str) -> str:
    """A normalised word's American/singular form (``variant_key``), except that "-is" words keep
    their "s" ("tendonitis" is singular)."""
    key = variant_key(word)
    return key + "s" if word.endswith("is") and not key.endswith("is") else key


def content_stems(norm: str) -> list[str]:
    """Stems of the content words of a normalised text (American/singular forms, skipped words out)."""
    return [word_stem(word_key(w)) for w in norm.split(" ") if w and w not in SKIPPED and w not in CLOSING]


def bag_key(norm: str) -> str:
    """The order-free key of a normalised name: its content-word stems, sorted, space-joined; ""
    for a name with a word that closes a text window ("Seizures without fever", "No eyelashes",
    "Cleft lip and palate"): no window can hold such a name, and keyed by its other words it would
    match their opposite ("seizures with fever", "eyelashes")."""
    if any(w in CLOSING for w in norm.split(" ")):
        return ""
    return " ".join(sorted(content_stems(norm)))


def bag_keys(table: AliasTable) -> list[str]:
    """Each alias row's bag key ("" for rows no window may match: see ``BAG_KINDS_EXCLUDED``)."""
    return ["" if kind in BAG_KINDS_EXCLUDED or is_case_sensitive(alias, kind) else bag_key(norm)
            for alias, norm, kind in zip(table.alias, table.alias_norm, table.kind)]


class BagMatcher:
    """Alias rows by bag key; :meth:`find` proposes the windows of a document whose bag is a key."""

    def __init__(self, table: AliasTable):
        self.table = table
        self.rows: dict[str, list[int]] = {}
        for row, bag in enumerate(table.bags()):  # saved with the linker, else computed once
            if bag:
                self.rows.setdefault(bag, []).append(row)

    def _stem(self, token) -> str | None:
        """A token's stem, "" for a skipped word, None for a token that closes a window."""
        token_text = token.text
        norm = norm_token(token_text)
        if not norm:
            return "" if token_text in {"-", "'", "’"} else None
        if " " in norm:  # "low-set" tokenised whole: its parts (a URL, an e-mail or a long compound closes)
            if token.like_url or token.like_email or norm.count(" ") > 2:
                return None
            stems = content_stems(norm)
            return " ".join(stems) if stems else ""
        if norm in CLOSING:
            return None
        if norm in SKIPPED:
            return ""
        return word_stem(word_key(norm))

    def find(self, doc, exclude: set[int] | None = None) -> list[tuple[int, int, list[int]]]:
        """(start token, end token, alias rows) of the longest non-overlapping windows of ``doc``
        whose content-word bag is an alias's; windows touching a token in ``exclude`` are not tried."""
        exclude = exclude or set()
        found: list[tuple[int, int, int, list[int]]] = []  # (-words, start, end, rows)
        for sent in (doc.sents if doc.has_annotation("SENT_START") else [doc[:]]):
            words: list[tuple[int, str]] = []  # (token index, stem) of the current clause
            skipped = 0
            for token in sent:
                stem = None if token.i in exclude else self._stem(token)
                if stem is None or skipped > MAX_SKIPPED:
                    self._windows(words, found)
                    words, skipped = [], 0
                    if stem is None:
                        continue
                if stem == "":
                    skipped += 1
                    continue
                skipped = 0
                for part in stem.split(" "):
                    words.append((token.i, part))
            self._windows(words, found)
        found.sort()
        taken: set[int] = set()
        out = []
        for _, start, end, rows in found:
            if any(i in taken for i in range(start, end)):
                continue
            taken.update(range(start, end))
            out.append((start, end, rows))
        out.sort()
        return out

    def _windows(self, words: list[tuple[int, str]], found: list) -> None:
        for i in range(len(words)):
            limit = min(MAX_WORDS, len(words) - i)
            bag: list[str] = []
            for j in range(i, i + limit):
                bag.append(words[j][1])
                key = " ".join(sorted(bag))
                rows = self.rows.get(key)
                if rows is None or (j == i and len(key) < MIN_SINGLE):
                    continue
                start, end = words[i][0], words[j][0] + 1
                found.append((-(j - i + 1), start, end, rows))


def _anchor(token) -> bool:
    """A token a scored window may start or end on: a content word of three letters or more."""
    return (token.is_alpha and len(token.text) > 2 and not token.is_stop
            and token.lower_ not in SKIPPED and token.lower_ not in CLOSING)


def window_spans(doc, covered: set[int], sizes: tuple[int, ...] = (2, 3)) -> list[tuple[int, int]]:
    """The ``detection: sensitive`` proposals: every window of ``sizes`` tokens inside one sentence
    that starts and ends on a content word, holds only words (and hyphens) and touches no token in
    ``covered``, as (start token, end token)."""
    windows: list[tuple[int, int]] = []
    for sent in (doc.sents if doc.has_annotation("SENT_START") else [doc[:]]):
        for i in range(sent.start, sent.end):
            if i in covered or not _anchor(doc[i]):
                continue
            for n in sizes:
                j = i + n
                if j > sent.end:
                    break
                if any(t.i in covered or not (t.is_alpha or t.text == "-") for t in doc[i:j]):
                    break
                if _anchor(doc[j - 1]):
                    windows.append((i, j))
    return windows


def select_windows(windows: list[tuple[int, int]], options: list[list], min_score: float) -> list[tuple[int, int, list]]:
    """The windows whose best candidate (``options[i]``: the candidate generator's list for
    ``windows[i]``) scores at least ``min_score``, best first and non-overlapping, in text order."""
    kept = sorted(((opts[0].score, i, j, opts) for (i, j), opts in zip(windows, options, strict=True)
                   if opts and opts[0].score >= min_score), key=lambda x: (-x[0], x[1]))
    taken: set[int] = set()
    out = []
    for _, i, j, opts in kept:
        if taken.isdisjoint(range(i, j)):
            taken.update(range(i, j))
            out.append((i, j, opts))
    return sorted(out, key=lambda x: x[:2])
