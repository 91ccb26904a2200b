"""Context similarity: how well the words around a mention fit what the KG says about a candidate.

Each entity gets a profile, the word TF-IDF vector of its names and description (the HPO
definition, the Wikidata description); a mention's context is the TF-IDF vector of the words within
``window`` tokens on either side of it, the mention itself left out (its words match every
candidate's names). The similarity is their cosine. The vocabulary and weights are fitted on the
profiles, deterministically, so a saved linker rebuilds the same model from its own tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from linking.keys import given
from pipelines.errors import ArtifactError
from pipelines.normalize import normalize_alias

STOPWORDS = frozenset(
    "a an and are as at be by for from has have in into is it its of on or that the this to was were which with "
    "who whom whose not no can may also such than then there these those their they been being".split())


def context_words(text: str) -> list[str]:
    """Normalised words, stop words and one-letter tokens dropped, cut to a 6-letter stem."""
    return [w[:6] for w in normalize_alias(text).split(" ") if len(w) > 1 and w not in STOPWORDS]


class ContextModel:
    """Word TF-IDF profiles of entities; rows are KG entity indices (row 0 = padding, empty)."""

    def __init__(self, profiles: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(analyzer=given, sublinear_tf=True, dtype=np.float32)
        docs = [context_words(p or "") for p in profiles]
        matrix = self.vectorizer.fit_transform([[]] + docs) if any(docs) else sp.csr_matrix((len(docs) + 1, 1))
        self.profiles = matrix.tocsr()

    def save(self, path: Path) -> list[str]:
        """The fitted vocabulary, idf and profile matrix; returns the file names written."""
        sp.save_npz(path / "context_profiles.npz", self.profiles)
        vocab = getattr(self.vectorizer, "vocabulary_", None)
        idf = self.vectorizer.idf_.astype(np.float32) if vocab else np.zeros(0, np.float32)
        (path / "context_vocab.json").write_text(json.dumps({k: int(v) for k, v in (vocab or {}).items()}))
        np.save(path / "context_idf.npy", idf, allow_pickle=False)
        return ["context_profiles.npz", "context_vocab.json", "context_idf.npy"]

    @classmethod
    def load(cls, path: Path) -> "ContextModel":
        try:
            model = cls([])
            model.profiles = sp.load_npz(path / "context_profiles.npz").tocsr()
            vocab = json.loads((path / "context_vocab.json").read_text())
            if vocab:
                model.vectorizer.vocabulary_ = vocab
                model.vectorizer.idf_ = np.load(path / "context_idf.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: unreadable context model ({exc}): rebuild the linker") from None
        return model

    def vectors(self, contexts: list[str]) -> sp.csr_matrix:
        if not hasattr(self.vectorizer, "vocabulary_"):
            return sp.csr_matrix((len(contexts), self.profiles.shape[1]), dtype=np.float32)
        return self.vectorizer.transform([context_words(c) for c in contexts]).tocsr()

    def _vector(self, context: str) -> dict[int, float]:
        """One context's TF-IDF vector as {column: weight}, as ``vectors`` computes it (sublinear
        tf, idf, l2): sklearn's transform costs about a millisecond per call, this a few µs."""
        vocab = getattr(self.vectorizer, "vocabulary_", None)
        if not vocab:
            return {}
        counts: dict[int, int] = {}
        for w in context_words(context):
            if (col := vocab.get(w)) is not None:
                counts[col] = counts.get(col, 0) + 1
        idf = self.vectorizer.idf_
        vec = {col: (1.0 + np.log(n)) * idf[col] for col, n in counts.items()}
        norm = float(np.sqrt(sum(v * v for v in vec.values())))
        return {col: v / norm for col, v in vec.items()} if norm > 0 else {}

    def similarity(self, contexts: list[str], candidates: list[list[int]]) -> list[dict[int, float]]:
        """Cosine between each context and each of its candidate entities' profiles."""
        indptr, indices, data = self.profiles.indptr, self.profiles.indices, self.profiles.data
        out = []
        for context, ents in zip(contexts, candidates):
            vec = self._vector(context) if ents else {}
            sims = {}
            if vec:
                for ent in ents:
                    cols = indices[indptr[ent]:indptr[ent + 1]].tolist()
                    vals = data[indptr[ent]:indptr[ent + 1]].tolist()
                    sims[ent] = float(sum(vec.get(c, 0.0) * v for c, v in zip(cols, vals)))
            out.append(sims)
        return out


def mention_contexts(doc, spans, window: int = 25) -> list[str]:
    """The text of ``window`` tokens on either side of each span, without the span itself."""
    out = []
    for span in spans:
        left = doc[max(0, span.start - window):span.start].text
        right = doc[span.end:min(len(doc), span.end + window)].text
        out.append(f"{left} {right}")
    return out
