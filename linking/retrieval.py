"""Everything the candidate generator and the context similarity need over one knowledge base.

:class:`Retrieval` holds the trained models (name encoder, reranker) and the structures built over
the KB's names (the sparse name index and its FAISS index, the TF-IDF generator, transformer name
vectors, the entities' context profiles). A freshly built linker creates each on first use;
:meth:`Retrieval.save` builds what the configured linker uses and writes it, and
:meth:`Retrieval.load` restores all of it from those files, so a loaded linker's first call
trains, fits and indexes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from linking.candidates import (CandidateGenerator, DenseNameGenerator, ExactAliasGenerator, HybridGenerator,
                                TfidfCharGenerator)
from linking.context import ContextModel
from linking.encoder import WEIGHTS_FILE as ENCODER_WEIGHTS
from linking.encoder import NameEncoder
from linking.kb import KnowledgeBase
from linking.names import NameIndex, PoolSize
from linking.reranker import RerankedGenerator, Reranker
from pipelines.errors import ArtifactError


class Retrieval:
    def __init__(self, kb: KnowledgeBase, *, dense_model: str | None = None,
                 fuzzy_weights: dict[str, float] | None = None, candidate_pool: dict[str, int] | None = None,
                 encoder: NameEncoder | None = None, reranker: Reranker | None = None, name: str = "kg_linker"):
        self.kb, self.name = kb, name
        self.dense_model = dense_model
        self.fuzzy_weights = dict(fuzzy_weights or {"tfidf": 0.5, "dense": 0.5})
        self.candidate_pool = dict(candidate_pool or {})
        self.encoder, self.reranker = encoder, reranker
        self._exact: ExactAliasGenerator | None = None
        self._tfidf: TfidfCharGenerator | None = None
        self._dense: DenseNameGenerator | None = None
        self._names: NameIndex | None = None
        self._context: ContextModel | None = None

    def set_models(self, encoder: NameEncoder | None, reranker: Reranker | None) -> None:
        self.encoder, self.reranker = encoder, reranker
        self._names = None  # the name index holds the encoder's vectors

    # -- the candidate generator ----------------------------------------------------------------
    def generator(self) -> CandidateGenerator:
        """The reranked pool when there is a reranker, else exact hits then TF-IDF (and dense) neighbours."""
        if self.reranker is None:
            return self._untrained_hybrid()
        # the pool the reranker was trained on (its rank features depend on it)
        saved = self.reranker.meta.get("pool")
        index = self.name_index()
        pool = PoolSize(**saved) if saved else PoolSize.from_config(self.candidate_pool, index.encoder is not None)
        return RerankedGenerator(index, self.reranker, self.kb.prior, self._query_encoder(), pool)

    def name_index(self) -> NameIndex:
        if self._names is None:
            self._check_encoder()
            dense = self.dense_generator() if self.dense_model is not None else None
            self._names = NameIndex(self.kb.table, name_vectors=dense.vectors if dense else None, encoder=self.encoder,
                                    name_faiss=dense.index if dense else None)
        return self._names

    def _check_encoder(self) -> None:
        _require_encoder(self.reranker.meta if self.reranker else {}, self.encoder is not None, self.name)

    @staticmethod
    def check_complete(path: Path, name: str = "kg_linker") -> None:
        """Refuse a saved linker whose reranker needs a name encoder that is not there."""
        if (path / "reranker.json").exists():
            _require_encoder(Reranker.load(path / "reranker.json").meta, (path / ENCODER_WEIGHTS).exists(), name)

    def _query_encoder(self):
        return self.dense_generator().encode if self.dense_model is not None else None

    def name_vectors_fn(self):
        """For training: dense vectors of names, looked up in the (cached) table encodings."""
        if self.dense_model is None:
            return None
        dense = self.dense_generator()
        position = {n: i for i, n in enumerate(dense.norms.tolist())}

        def vectors(names: list[str]) -> np.ndarray:
            missing = [n for n in names if n not in position]
            extra = dict(zip(missing, dense.encode(missing))) if missing else {}
            return np.stack([dense.vectors[position[n]] if n in position else extra[n] for n in names])

        return vectors

    def context_model(self) -> ContextModel:
        if self._context is None:
            self._context = ContextModel(self.kb.profiles())
        return self._context

    def _untrained_hybrid(self) -> HybridGenerator:
        if self._exact is None:
            self._exact = ExactAliasGenerator(self.kb.table)
        fuzzy = [(self.tfidf_generator(), self.fuzzy_weights.get("tfidf", 0.5))]
        if self.dense_model is not None:
            fuzzy.append((self.dense_generator(), self.fuzzy_weights.get("dense", 0.5)))
        return HybridGenerator(self._exact, fuzzy)

    def tfidf_generator(self) -> TfidfCharGenerator:
        if self._tfidf is None:
            self._tfidf = TfidfCharGenerator(self.kb.table)
        return self._tfidf

    def dense_generator(self) -> DenseNameGenerator:
        if self._dense is None:
            self._dense = DenseNameGenerator(self.kb.table, self.dense_model)
        return self._dense

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: Path) -> list[str]:
        """Build what this linker's generator uses, and write it; returns the file names written."""
        import faiss

        written = self.context_model().save(path)
        if self.dense_model is not None:
            dense = self.dense_generator()
            np.save(path / "name_vectors.npy", dense.vectors, allow_pickle=False)
            faiss.write_index(dense.index, str(path / "name_vectors.faiss"))
            written += ["name_vectors.npy", "name_vectors.faiss"]
        if self.reranker is None:
            return written + self.tfidf_generator().save(path)
        self.reranker.save(path / "reranker.json")
        written.append("reranker.json")
        if self.encoder is not None:
            written += self.encoder.save(path)
        pool = self.generator().pool
        return written + self.name_index().save(path, pool)

    @classmethod
    def load(cls, path: Path, kb: KnowledgeBase, **settings) -> "Retrieval":
        """Restore everything :meth:`save` wrote (``settings``: the component's dense_model,
        fuzzy_weights, candidate_pool and name)."""
        import faiss

        reranker = Reranker.load(path / "reranker.json") if (path / "reranker.json").exists() else None
        encoder = NameEncoder.load(path) if (path / ENCODER_WEIGHTS).exists() else None
        self = cls(kb, encoder=encoder, reranker=reranker, **settings)
        self._context = ContextModel.load(path)
        if self.dense_model is not None:
            self._dense = DenseNameGenerator(kb.table, self.dense_model,
                                             np.load(path / "name_vectors.npy", allow_pickle=False),
                                             index=faiss.read_index(str(path / "name_vectors.faiss")))
        if reranker is None:
            self._exact = ExactAliasGenerator(kb.table)
            self._tfidf = TfidfCharGenerator.load(path, kb.table)
        else:
            self._names = NameIndex.load(path, kb.table, self._dense.vectors if self._dense else None, encoder,
                                         name_faiss=self._dense.index if self._dense else None)
        return self


def _require_encoder(reranker_meta: dict, has_encoder: bool, name: str) -> None:
    if reranker_meta.get("name_encoder") and not has_encoder:
        raise ArtifactError(f"the {name} reranker was trained with a name encoder that is missing: rebuild the linker")
