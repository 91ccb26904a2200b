"""Candidate generation behind one callable signature: ``gen(mentions, k) -> list[list[Candidate]]``.

- :class:`ExactAliasGenerator`: normalised alias lookup (case/punctuation/accent-insensitive).
- :class:`TfidfCharGenerator`: character 3-gram TF-IDF cosine over the unique aliases (the
  approach of scispaCy's candidate generator): exact sparse search up to ``TFIDF_EXACT_MAX``
  names, beyond that served by FAISS over a truncated-SVD projection of the TF-IDF vectors, the
  approximate neighbours re-scored by their exact cosine.
- :class:`DenseNameGenerator`: sentence embeddings of names (e.g. all-MiniLM-L6-v2), served by FAISS.
- :class:`HybridGenerator`: exact hits first, then the fuzzy generators' candidates, score-fused.
- :class:`linking.reranker.RerankedGenerator`: exact hits first, then a pooled set of names ranked by
  a reranker trained on the knowledge base's own synonyms (the linker's default when it has one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from linking.aliases import DEFAULT_KIND_WEIGHT, KIND_WEIGHTS, AliasTable, unique_norms
from pipelines.errors import ArtifactError, InputError
from pipelines.normalize import normalize_alias, variant_key


@dataclass(frozen=True)
class Candidate:
    entity_index: int
    score: float         # string similarity in [0, 1]
    alias: str           # the alias that matched
    kind: str


class CandidateGenerator(Protocol):
    def __call__(self, mentions: list[str], k: int) -> list[list[Candidate]]: ...


def check_mentions(mentions) -> list[str]:
    if isinstance(mentions, str) or not isinstance(mentions, (list, tuple)):
        raise InputError(f"mentions must be a list of strings, got {type(mentions).__name__}")
    for i, m in enumerate(mentions):
        if not isinstance(m, str):
            raise InputError(f"mention {i} must be a string, got {type(m).__name__}")
    return list(mentions)


def candidates_from_rows(table: AliasTable, rows: list[int], k: int, discount: float = 1.0) -> list[Candidate]:
    """One candidate per entity among alias hits ``rows``, scored by the best alias kind (times
    ``discount`` for a looser hit than an exact one)."""
    best: dict[int, Candidate] = {}
    for row in rows:
        kind = table.kind[row]
        cand = Candidate(int(table.entity_index[row]), KIND_WEIGHTS.get(kind, DEFAULT_KIND_WEIGHT) * discount,
                         table.alias[row], kind)
        if cand.entity_index not in best or cand.score > best[cand.entity_index].score:
            best[cand.entity_index] = cand
    return sorted(best.values(), key=lambda c: -c.score)[:k]


class ExactAliasGenerator:
    """Normalised alias lookup; when nothing matches, the looser ``variant_key`` (singular forms,
    American spelling) is tried, its hits scored a notch below exact ones."""

    VARIANT_DISCOUNT = 0.95

    def __init__(self, table: AliasTable):
        self.by_norm: dict[str, list[int]] = {}
        self.by_variant: dict[str, list[int]] = {}
        for row, (norm, variant) in enumerate(zip(table.alias_norm, table.variants())):
            self.by_norm.setdefault(norm, []).append(row)
            self.by_variant.setdefault(variant, []).append(row)
        self.table = table

    def __call__(self, mentions: list[str], k: int) -> list[list[Candidate]]:
        out = []
        for mention in check_mentions(mentions):
            norm = normalize_alias(mention)
            found = candidates_from_rows(self.table, self.by_norm.get(norm, []), k)
            if not found:
                found = [Candidate(c.entity_index, c.score * self.VARIANT_DISCOUNT, c.alias, c.kind)
                         for c in candidates_from_rows(self.table, self.by_variant.get(variant_key(norm), []), k)]
            out.append(found)
        return out


def _best_per_entity(table: AliasTable, rows_of, scored_norms, k: int) -> list[Candidate]:
    """Candidates from (unique-norm position, similarity) pairs, best alias per entity, top k."""
    best: dict[int, Candidate] = {}
    for u, score in scored_norms:
        for r in rows_of(u):
            ent = int(table.entity_index[r])
            if ent not in best:
                best[ent] = Candidate(ent, float(score), table.alias[r], table.kind[r])
    return sorted(best.values(), key=lambda c: -c.score)[:k]


class DenseNameGenerator:
    """Sentence embeddings of alias names (a mean-pooled transformer encoder such as
    all-MiniLM-L6-v2, loaded from a local directory), nearest neighbours served by FAISS."""

    def __init__(self, table: AliasTable, model_path: str | Path, vectors: np.ndarray | None = None,
                 batch_size: int = 256, index=None):
        from transformers import AutoModel, AutoTokenizer

        from linking.index import build_faiss

        self.table = table
        self.model_path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.model = AutoModel.from_pretrained(self.model_path).eval()
        self.batch_size = batch_size
        self.norms, self.rows_sorted, self.starts, self.ends = unique_norms(table)
        self.vectors = vectors if vectors is not None else self.encode(self.norms.tolist())
        if len(self.vectors) != len(self.norms):
            raise InputError(f"{len(self.vectors)} saved name vectors for {len(self.norms)} unique aliases: rebuild the linker")
        if index is not None and index.ntotal == len(self.vectors):
            self.index, self.index_params = index, {"type": type(index).__name__, "ntotal": int(index.ntotal)}
        else:
            self.index, self.index_params = build_faiss(self.vectors)

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                     max_length=32, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 1), np.float32)

    def __call__(self, mentions: list[str], k: int) -> list[list[Candidate]]:
        mentions = check_mentions(mentions)
        scores, rows = self.index.search(self.encode([normalize_alias(m) for m in mentions]), 4 * k)
        rows_of = lambda u: self.rows_sorted[self.starts[u]:self.ends[u]]  # noqa: E731
        return [_best_per_entity(self.table, rows_of, [(u, s) for u, s in zip(r, sc) if u >= 0], k)
                for r, sc in zip(rows, scores)]


TFIDF_EXACT_MAX = 200_000  # unique names searched exactly; above this, through FAISS
TFIDF_SVD_DIM = 256
TFIDF_OVERSAMPLE = 8       # approximate neighbours fetched per wanted name, then re-scored exactly


class TfidfCharGenerator:
    """Character 3-gram TF-IDF over unique normalised aliases; cosine by sparse dot product. Above
    ``exact_max`` unique names the search goes through FAISS (the index :func:`linking.index.build_faiss`
    chooses by size) over the TF-IDF vectors projected to ``svd_dim`` dimensions by truncated SVD
    (FAISS has no sparse index), and the ``oversample`` × wanted neighbours it returns are re-scored
    with the exact sparse cosine."""

    def __init__(self, table: AliasTable, vocabulary: dict[str, int] | None = None, idf: np.ndarray | None = None,
                 *, exact_max: int = TFIDF_EXACT_MAX, svd_dim: int = TFIDF_SVD_DIM,
                 oversample: int = TFIDF_OVERSAMPLE, components: np.ndarray | None = None, ann=None,
                 matrix=None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.table = table
        self.norms, self.rows_sorted, self.starts, self.ends = unique_norms(table)
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), min_df=1, dtype=np.float32,
                                          sublinear_tf=True)
        if vocabulary is None:
            self.matrix = self.vectorizer.fit_transform(self.norms.tolist())
        else:
            self.vectorizer.vocabulary_ = vocabulary
            self.vectorizer.idf_ = idf
            self.matrix = matrix if matrix is not None else self.vectorizer.transform(self.norms.tolist())
        self.matrix = self.matrix.tocsr()
        self.oversample = oversample
        self.components, self.ann, self.ann_params = None, None, None
        if len(self.norms) > exact_max:
            self._build_ann(svd_dim, components, ann)
        else:
            self.matrix_t = self.matrix.T.tocsr()

    def _build_ann(self, svd_dim: int, components: np.ndarray | None, ann) -> None:
        from linking.index import build_faiss

        if components is None:
            from sklearn.decomposition import TruncatedSVD

            dim = max(1, min(svd_dim, self.matrix.shape[1] - 1, len(self.norms) - 1))
            components = TruncatedSVD(dim, random_state=0).fit(self.matrix).components_
        if components.shape[1] != self.matrix.shape[1]:
            raise ArtifactError(f"TF-IDF projection has {components.shape[1]} columns for {self.matrix.shape[1]} "
                                "character 3-grams: rebuild the linker")
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        if ann is not None and ann.ntotal == len(self.norms) and ann.d == len(self.components):
            self.ann = ann
            self.ann_params = {"type": type(ann).__name__, "ntotal": int(ann.ntotal), "loaded": True}
        else:
            self.ann, self.ann_params = build_faiss(self._project(self.matrix))

    def _project(self, rows) -> np.ndarray:
        out = np.asarray(rows @ self.components.T, dtype=np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def save(self, path: Path) -> list[str]:
        """Vocabulary, idf, the names' TF-IDF matrix and (when searched through FAISS) the projection
        and the index; returns the file names written."""
        import scipy.sparse as sp

        vocab = {k: int(v) for k, v in self.vectorizer.vocabulary_.items()}
        (path / "tfidf_vocab.json").write_text(json.dumps(vocab))
        np.save(path / "tfidf_idf.npy", self.vectorizer.idf_.astype(np.float32), allow_pickle=False)
        sp.save_npz(path / "tfidf_matrix.npz", self.matrix)
        written = ["tfidf_vocab.json", "tfidf_idf.npy", "tfidf_matrix.npz"]
        if self.ann is not None:
            import faiss

            np.save(path / "tfidf_svd.npy", self.components, allow_pickle=False)
            faiss.write_index(self.ann, str(path / "tfidf_ann.faiss"))
            written += ["tfidf_svd.npy", "tfidf_ann.faiss"]
        return written

    @classmethod
    def load(cls, path: Path, table: AliasTable, **kwargs) -> "TfidfCharGenerator":
        import scipy.sparse as sp

        vocab = json.loads((path / "tfidf_vocab.json").read_text())
        components = ann = matrix = None
        if (path / "tfidf_matrix.npz").exists():
            matrix = sp.load_npz(path / "tfidf_matrix.npz").tocsr()
        if (path / "tfidf_svd.npy").exists() and (path / "tfidf_ann.faiss").exists():
            import faiss

            try:
                components = np.load(path / "tfidf_svd.npy", allow_pickle=False)
                ann = faiss.read_index(str(path / "tfidf_ann.faiss"))
            except (OSError, ValueError, RuntimeError) as exc:
                raise ArtifactError(f"{path}: unreadable TF-IDF index ({exc}): rebuild the linker") from None
        return cls(table, vocab, np.load(path / "tfidf_idf.npy", allow_pickle=False), components=components, ann=ann,
                   matrix=matrix, **kwargs)

    def _nearest(self, queries, width: int):
        """Per query: (unique-name positions, their cosine), best first, at most ``width``, zeros dropped."""
        if self.ann is None:
            for start in range(0, queries.shape[0], 256):
                # a chunk of similarities as a dense block: top-k by argpartition beats per-row sparse sorting
                sims = (queries[start:start + 256] @ self.matrix_t).toarray()
                top = np.argpartition(-sims, width - 1, axis=1)[:, :width] if width < sims.shape[1] else \
                    np.tile(np.arange(sims.shape[1]), (len(sims), 1))
                for row, cols in zip(sims, top):
                    cols = cols[np.argsort(-row[cols])]
                    cols = cols[row[cols] > 0]
                    yield cols, row[cols]
            return
        _, found = self.ann.search(self._project(queries), min(width * self.oversample, len(self.norms)))
        for i, cols in enumerate(found):
            cols = cols[cols >= 0]
            sims = np.asarray((self.matrix[cols] @ queries[i].T).todense()).ravel()  # exact cosine
            order = np.argsort(-sims, kind="stable")[:width]
            cols, sims = cols[order], sims[order]
            yield cols[sims > 0], sims[sims > 0]

    def __call__(self, mentions: list[str], k: int) -> list[list[Candidate]]:
        mentions = check_mentions(mentions)
        queries = self.vectorizer.transform([normalize_alias(m) for m in mentions])
        rows_of = lambda u: self.rows_sorted[self.starts[u]:self.ends[u]]  # noqa: E731
        width = min(4 * k, len(self.norms))
        return [_best_per_entity(self.table, rows_of, zip(cols, sims), k) for cols, sims in self._nearest(queries, width)]


class HybridGenerator:
    """Exact (and variant) alias hits first — they are certain string matches — then the fuzzy
    generators' candidates fused by a weighted sum of their similarities (a generator that did not
    return an entity contributes 0 for it)."""

    def __init__(self, exact: CandidateGenerator, fuzzy: list[tuple[CandidateGenerator, float]]):
        self.exact = exact
        self.fuzzy = fuzzy

    def __call__(self, mentions: list[str], k: int) -> list[list[Candidate]]:
        exact = self.exact(mentions, k)
        fuzzy = [(gen(mentions, 2 * k), weight) for gen, weight in self.fuzzy]
        total = sum(w for _, w in self.fuzzy) or 1.0
        out = []
        for m, hits in enumerate(exact):
            merged: dict[int, Candidate] = {c.entity_index: c for c in hits}
            fused: dict[int, list] = {}
            for results, weight in fuzzy:
                for c in results[m]:
                    entry = fused.setdefault(c.entity_index, [0.0, c])
                    entry[0] += weight * c.score / total
            ranked = sorted(fused.items(), key=lambda kv: -kv[1][0])
            for ent, (score, c) in ranked:
                if ent not in merged:
                    # fuzzy scores stay below the exact hits' range
                    merged[ent] = Candidate(ent, min(score, 0.79), c.alias, c.kind)
            out.append(list(merged.values())[:k])
        return out
