"""Build, save and use the linker artifact (``linker/``: a spaCy pipeline directory)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from linking.aliases import AliasTable
from linking.config import LinkerConfig
from pipelines.artifacts import ArtifactLayout, Timer, record_stage, staged_dir
from pipelines.errors import ArtifactError, InputError
from pipelines.integrity import verify

log = logging.getLogger(__name__)


def _entity_label(types: list[str] | None) -> str:
    plain = [t for t in (types or []) if not t.startswith("branch:")]
    return (plain[0] if plain else "ENTITY").upper()


def hierarchy_edges(layout: ArtifactLayout, relations: list[str]) -> np.ndarray:
    """(child, parent) KG-index pairs of the triples whose relation is one of ``relations`` (the
    ones the KG has): what ``allowed_roots`` walks down from."""
    from kg.ids import mapped_triples

    rels = pq.read_table(layout.relations, columns=["relation_id", "index"])
    chosen = [i for r, i in zip(rels.column("relation_id").to_pylist(), rels.column("index").to_pylist())
              if r in set(relations)]
    triples = mapped_triples(layout)
    edges = triples[np.isin(triples[:, 1], chosen)][:, [0, 2]]
    log.info("hierarchy for allowed_roots: %d edges of %s", len(edges),
             [r for r in rels.column("relation_id").to_pylist() if r in set(relations)] or "no relation")
    return np.ascontiguousarray(edges, dtype=np.int32)


def build_linker(layout: ArtifactLayout, model: str | None = "transe", config: LinkerConfig | None = None) -> dict[str, Any]:
    """spacy.blank("en") + a sentencizer + ``kg_linker`` over the KG's aliases (and KG vectors for coherence); the
    component gets ``config``'s component settings, :func:`linking.train.train_models` its training
    settings. The saved pipeline carries every model and index (see :mod:`linking.component`)."""
    import spacy

    import linking.component  # noqa: F401  (registers the factory when run from a source tree)
    from linking.kb import KnowledgeBase
    from linking.train import train_models

    config = config or LinkerConfig()
    with Timer() as timer:
        verify(layout, [layout.entities, layout.aliases, *([layout.embeddings(model)] if model else [])])
        table = AliasTable.from_layout(layout)
        ents = pq.read_table(layout.entities, columns=["entity_id", "types", "prior", "description"])
        vectors = None
        if model is not None and (layout.embeddings(model) / "entities.npy").exists():
            vectors = np.load(layout.embeddings(model) / "entities.npy", allow_pickle=False)
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")  # sentence bounds for negation scopes and abbreviation definitions
        linker = nlp.add_pipe("kg_linker", config=config.component_config())
        kb = KnowledgeBase.create(table, ents.column("entity_id").to_pylist(),
                                  [_entity_label(t) for t in ents.column("types").to_pylist()],
                                  ents.column("prior").to_numpy(), vectors, ents.column("description").to_pylist())
        kb.hierarchy = hierarchy_edges(layout, config.hierarchy_relations)
        linker.set_kb(kb)
        models = train_models(table, linker.prior, config,
                              linker.retrieval.name_vectors_fn())
        linker.set_models(models.encoder, models.reranker)
        with staged_dir(layout.linker) as tmp:
            nlp.to_disk(tmp)
    log.info("linker with %d aliases saved to %s", len(table), layout.linker)
    reranker = linker.reranker.meta if linker.reranker is not None else None
    encoder = linker.encoder.meta if linker.encoder is not None else None
    return record_stage(layout, "linker", parameters={"embedding_model": model, "has_vectors": vectors is not None,
                                                      "reranker": reranker, "name_encoder": encoder,
                                                      "config": config.to_dict()},
                        outputs={"linker": str(layout.linker)}, counts={"aliases": len(table)},
                        wall_time_s=timer.seconds)


def load_linker(layout: ArtifactLayout):
    import spacy

    path = layout.require(layout.linker, "linker")
    verify(layout, [path])  # the pipeline's own files too (vocab/, config.cfg), which spaCy reads first
    try:
        return spacy.load(path)
    except (OSError, ValueError) as exc:  # ValueError: a vocab/ or config file that is not UTF-8 / JSON
        raise ArtifactError(f"{path}: not a loadable spaCy pipeline ({type(exc).__name__}: {exc}): "
                            "rebuild the linker (`kalora linker`)") from None


def doc_links(doc) -> list[dict[str, Any]]:
    return [{"start": e.start_char, "end": e.end_char, "text": e.text, "kb_id": e.kb_id_, "label": e.label_,
             "score": e._.kg_score, "negated": e._.negated, "uncertain": e._.uncertain,
             "candidates": [{"entity_id": i, "score": s} for i, s in e._.kg_candidates or []]}
            for e in doc.ents]


def link_texts(nlp, texts: list[str], batch_size: int = 256):
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text {i}: expected a string, got {type(t).__name__}")
    yield from nlp.pipe(texts, batch_size=batch_size)


def read_lines(path: Path) -> list[str]:
    from pipelines.readers import open_text

    with open_text(path) as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]
