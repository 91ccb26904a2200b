"""Candidate generation behind one callable signature: ``gen(mentions, k) -> list[list[Candidate]]``.

- :class:`ExactAliasGenerator`: normalised alias lookup (case/punctuation/accent-insensitive).
- :class:`TfidfCharGenerator`: character 3-gram TF-IDF cosine over the unique aliases (the
  approach of scispaCy's candidate generator), exact sparse search.
- :class:`ChainedGenerator`: exact hits first, then fuzzy ones to fill up to ``k``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from linking.aliases import KIND_WEIGHTS, DEFAULT_KIND_WEIGHT, AliasTable
from pipelines.errors import InputError
from pipelines.normalize import normalize_alias


@dataclass(frozen=True)
class Candidate:
    entity_index: int
    score: float         # string similarity in [0, 1]
    alias: str           # the alias that matched
    kind: str


class CandidateGenerator(Protocol):
    def __call__(self, mentions: list[str], k: int) -> list[list[Candidate]]: ...


def _check_mentions(mentions) -> list[str]:
    if isinstance(mentions, str) or not isinstance(mentions, (list, tuple)):
        raise InputError(f"mentions must be a list of strings, got {type(mentions).__name__}")
    for i, m in enumerate(mentions):
        if not isinstance(m, str):
            raise InputError(f"mention {i} must be a string, got {type(m).__name__}")
    return list(mentions)


def candidates_from_rows(table: AliasTable, rows: list[int], k: int) -> list[Candidate]:
    """One candidate per entity among exact alias hits ``rows``, scored by the best alias kind."""
    best: dict[int, Candidate] = {}
    for row in rows:
        kind = table.kind[row]
        cand = Candidate(int(table.entity_index[row]), KIND_WEIGHTS.get(kind, DEFAULT_KIND_WEIGHT), table.alias[row], kind)
        if cand.entity_index not in best or cand.score > best[cand.entity_index].score:
            best[cand.entity_index] = cand
    return sorted(best.values(), key=lambda c: -c.score)[:k]


class ExactAliasGenerator:
    def __init__(self, table: AliasTable):
        self.by_norm: dict[str, list[int]] = {}
        for row, norm in enumerate(table.alias_norm):
            self.by_norm.setdefault(norm, []).append(row)
        self.table = table

    def __call__(self, mentions: list[str], k: int) -> list[list[Candidate]]:
        return [candidates_from_rows(self.table, self.by_norm.get(normalize_alias(m), []), k)
                for m in _check_mentions(mentions)]


class TfidfCharGenerator:
    """Character 3-gram TF-IDF over unique normalised aliases; cosine by sparse dot product."""

    def __init__(self, table: AliasTable, vocabulary: dict[str, int] | None = None, idf: np.ndarray | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.table = table
        self.norms, inverse = np.unique(np.asarray(table.alias_norm, dtype=object), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        self.rows_sorted = order
        self.starts = np.searchsorted(inverse[order], np.arange(len(self.norms)))
        self.ends = np.append(self.starts[1:], len(order))
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), min_df=1, dtype=np.float32,
                                          sublinear_tf=True)
        if vocabulary is None:
            self.matrix = self.vectorizer.fit_transform(self.norms.tolist())
        else:
            self.vectorizer.vocabulary_ = vocabulary
            self.vectorizer.idf_ = idf
            self.matrix = self.vectorizer.transform(self.norms.tolist())
        self.matrix_t = self.matrix.T.tocsr()

    def save(self, path: Path) -> None:
        vocab = {k: int(v) for k, v in self.vectorizer.vocabulary_.items()}
        (path / "tfidf_vocab.json").write_text(json.dumps(vocab))
        np.save(path / "tfidf_idf.npy", self.vectorizer.idf_.astype(np.float32), allow_pickle=False)

    @classmethod
    def load(cls, path: Path, table: AliasTable) -> "TfidfCharGenerator":
        vocab = json.loads((path / "tfidf_vocab.json").read_text())
        return cls(table, vocab, np.load(path / "tfidf_idf.npy", allow_pickle=False))

    def __call__(self, mentions: list[str], k: int) -> list[list[Candidate]]:
        mentions = _check_mentions(mentions)
        queries = self.vectorizer.transform([normalize_alias(m) for m in mentions])
        sims = (queries @ self.matrix_t).tocsr()
        out = []
        for q in range(len(mentions)):
            row = sims.getrow(q)
            if row.nnz == 0:
                out.append([])
                continue
            top = row.indices[np.argsort(-row.data)[: 4 * k]]
            scores = dict(zip(row.indices, row.data))
            best: dict[int, Candidate] = {}
            for u in top:
                for r in self.rows_sorted[self.starts[u]:self.ends[u]]:
                    ent = int(self.table.entity_index[r])
                    if ent not in best:
                        best[ent] = Candidate(ent, float(scores[u]), self.table.alias[r], self.table.kind[r])
            out.append(sorted(best.values(), key=lambda c: -c.score)[:k])
        return out


class ChainedGenerator:
    """Exact alias hits first (they are certain string matches), then fuzzy ones up to ``k``."""

    def __init__(self, *generators: CandidateGenerator):
        self.generators = generators

    def __call__(self, mentions: list[str], k: int) -> list[list[Candidate]]:
        results = [gen(mentions, k) for gen in self.generators]
        out = []
        for per_mention in zip(*results):
            merged: dict[int, Candidate] = {}
            for cands in per_mention:
                for c in cands:
                    if c.entity_index not in merged:
                        merged[c.entity_index] = c
            out.append(list(merged.values())[:k])
        return out
