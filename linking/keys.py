"""Text keys of normalised names: content words, word stems, variant keys and initials.

Shared by the sparse name index (:mod:`linking.names`), the reranker's features
(:mod:`linking.features`) and the name encoder (:mod:`linking.encoder`).
"""

from __future__ import annotations

from pipelines.normalize import variant_key

STOPWORDS = frozenset("of the and in a an to with or by on for at from as".split())
STEM_CHARS = 5  # a word's first five letters: "abnormality"/"abnormal", "hypertrophic"/"hypertrophy"


def word_keys(norm: str, stem: int | None = STEM_CHARS) -> list[str]:
    """Content words of a normalised name in American/singular form, optionally cut to a stem."""
    return [w[:stem] if stem else w for w in variant_key(norm).split(" ") if w and w not in STOPWORDS]


class ParsedNames:
    """Per-name keys, computed once: variant key, content words, word stems."""

    def __init__(self, norms: list[str], variants: list[str] | None = None):
        self.variants = variants if variants is not None else [variant_key(n) for n in norms]
        self.words = [[w for w in v.split(" ") if w and w not in STOPWORDS] for v in self.variants]
        self.stems = [[w[:STEM_CHARS] for w in ws] for ws in self.words]


def initials(norm: str) -> str:
    """"total lung capacity" → "tlc"; "atrial septal defect" → "asd" (stop words skipped)."""
    words = [w for w in norm.split(" ") if w and w not in STOPWORDS]
    return "".join(w[0] for w in words) if len(words) >= 2 else ""


def given(tokens: list[str]) -> list[str]:
    """TF-IDF analyzer for documents that are already token lists."""
    return tokens
