"""Alias normalisation shared by ingestion (``alias_norm``) and the linker."""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_alias(text: str) -> str:
    """Case-, accent- and punctuation-insensitive key: ``"Café-au-lait spots"`` → ``"cafe au lait spots"``."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())
