"""Longest-match alias detection over spaCy tokens, case- and punctuation-insensitive.

Token texts are normalised like aliases (``normalize_alias``); punctuation-only tokens are skipped,
so "café-au-lait spots", "Cafe au lait spots" and "CAFÉ AU LAIT SPOTS" all hit one alias. Aliases
that are abbreviations or gene symbols must also match case-sensitively ("CAT" the gene, not "cat").
"""

from __future__ import annotations

from bisect import bisect_left
from functools import lru_cache

from linking.aliases import AliasTable, is_case_sensitive
from pipelines.normalize import normalize_alias

norm_token = lru_cache(maxsize=200_000)(normalize_alias)


class AliasMatcher:
    """Rows by normalised alias, and word-prefix checks by binary search over the sorted aliases
    (not a set of every prefix: at a million aliases that set alone took tens of seconds to build
    at load). Case sensitivity is decided per row when a row is first looked up."""

    def __init__(self, table: AliasTable):
        self.rows: dict[str, list[int]] = {}
        self.table = table
        for row, norm in enumerate(table.alias_norm):
            self.rows.setdefault(norm, []).append(row)
        self._sorted = sorted(self.rows)
        self._case: dict[int, bool] = {}

    def is_prefix(self, key: str) -> bool:
        """Whether ``key`` is a whole alias or its first words."""
        if key in self.rows:
            return True
        probe = key + " "
        i = bisect_left(self._sorted, probe)
        return i < len(self._sorted) and self._sorted[i].startswith(probe)

    def case_sensitive(self, row: int) -> bool:
        if (known := self._case.get(row)) is None:
            known = self._case[row] = is_case_sensitive(self.table.alias[row], self.table.kind[row])
        return known

    def lookup(self, key: str, surface: str) -> list[int]:
        """Alias rows of the normalised ``key`` that ``surface`` may match (case-sensitive aliases
        only when spelled exactly so)."""
        return [r for r in self.rows.get(key, ()) if not self.case_sensitive(r) or self.table.alias[r] == surface]

    def find(self, text: str, tokens: list[tuple[str, int, int]]) -> list[tuple[int, int, list[int]]]:
        """``tokens``: (text, start_char, end_char). Returns (start_token, end_token, alias rows) for
        non-overlapping longest matches, left to right."""
        keyed = [(n, i) for i, (t, _, _) in enumerate(tokens) if (n := norm_token(t))]
        matches = []
        pos = 0
        while pos < len(keyed):
            best: tuple[int, list[int]] | None = None
            key = ""
            for j in range(pos, len(keyed)):
                key = keyed[j][0] if j == pos else f"{key} {keyed[j][0]}"
                if not self.is_prefix(key):
                    break
                if key in self.rows:
                    start_char, end_char = tokens[keyed[pos][1]][1], tokens[keyed[j][1]][2]
                    rows = self.lookup(key, text[start_char:end_char])
                    if rows:
                        best = (j, rows)
            if best is None:
                pos += 1
                continue
            j, rows = best
            matches.append((keyed[pos][1], keyed[j][1] + 1, rows))
            pos = j + 1
        return matches
