"""Alias normalisation shared by ingestion (``alias_norm``) and the linker."""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_alias(text: str) -> str:
    """Case-, accent- and punctuation-insensitive key: ``"Café-au-lait spots"`` → ``"cafe au lait spots"``."""
    if not text.isascii():  # ASCII has no compatibility forms or combining marks: skip the slow part
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    # runs of non-word characters (whitespace included) become one space each, so only the ends
    # can carry a space: strip() gives what " ".join(...split()) would
    return _NON_WORD.sub(" ", text.casefold()).strip()


# British → American spelling rules that clinical vocabularies vary on (HPO marks these synonyms
# "UK spelling"): word-internal patterns, applied to normalised text only.
_UK_US = [
    (re.compile(r"our\b"), "or"),                 # colour, tumour → color, tumor
    (re.compile(r"(?<=[a-z])ae(?=[a-z])"), "e"),  # haemorrhage, anaemia → hemorrhage, anemia
    (re.compile(r"oe(?=[a-z])"), "e"),            # oedema, oesophagus → edema, esophagus
    (re.compile(r"(?<=[a-z]{2})is(e|ed|es|ing|ation)\b"), r"iz\1"),  # organise → organize
    (re.compile(r"(?<=[a-z])tre\b"), "ter"),      # centre → center
    (re.compile(r"ogue\b"), "og"),                # catalogue → catalog
]
_PLURAL = [(re.compile(r"ies\b"), "y"), (re.compile(r"(?<=[sxz])es\b|(?<=ch|sh)es\b"), ""),
           (re.compile(r"(?<![su])s\b"), "")]


def variant_key(norm: str) -> str:
    """A looser key over ``normalize_alias`` output: American spelling and singular word forms, so
    "Colour blindness", "Haemorrhages" and "Color blindnesses" meet their label. Used as a fallback
    after exact keys (it merges a few distinct words, e.g. "bus"/"bu")."""
    words = []
    for word in norm.split(" "):
        if len(word) > 4:
            for pattern, repl in _PLURAL:
                new = pattern.sub(repl, word)
                if new != word:
                    word = new
                    break
            for pattern, repl in _UK_US:
                word = pattern.sub(repl, word)
        words.append(word)
    return " ".join(words)
