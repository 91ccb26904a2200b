"""Arrow schemas of the canonical KG tables (see ARCHITECTURE.md, "The artifact directory")."""

from __future__ import annotations

import pyarrow as pa

ENTITIES = pa.schema(
    [
        ("entity_id", pa.string()),
        ("index", pa.int32()),
        ("label", pa.string()),
        ("description", pa.string()),
        ("types", pa.list_(pa.string())),
        ("source", pa.string()),
        ("prior", pa.float32()),
    ]
)
ALIASES = pa.schema(
    [
        ("alias", pa.string()),
        ("alias_norm", pa.string()),
        ("entity_id", pa.string()),
        ("kind", pa.string()),
        ("lang", pa.string()),
        ("scope", pa.string()),  # OBO synonym scope: EXACT, BROAD, NARROW, RELATED (null elsewhere)
    ]
)
# OBO/UMLS cross-references: one row per (entity, xref), e.g. HP:0001250 ↔ UMLS:C0036572
XREFS = pa.schema([("entity_id", pa.string()), ("db", pa.string()), ("xref", pa.string())])
RELATIONS = pa.schema([("relation_id", pa.string()), ("index", pa.int32()), ("label", pa.string())])
TRIPLES = pa.schema(
    [("head", pa.string()), ("relation", pa.string()), ("tail", pa.string()), ("source", pa.string())]
)
# optional Wikidata tables (IngestOptions.literals / .qualifiers): claim values that are not entities,
# and the qualifiers of kept claims, joined to their claim on (head, relation, value)
LITERALS = pa.schema(
    [("entity_id", pa.string()), ("property", pa.string()), ("datatype", pa.string()),
     ("value", pa.string()), ("lang", pa.string())]
)
QUALIFIERS = pa.schema(
    [("head", pa.string()), ("relation", pa.string()), ("value", pa.string()),
     ("qualifier_property", pa.string()), ("qualifier_value", pa.string())]
)
SPLIT = pa.schema([("head_index", pa.int32()), ("relation_index", pa.int32()), ("tail_index", pa.int32())])

SPAN = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("entity_index", pa.int32())])
SCORED_SPAN = pa.struct(
    [("start", pa.int32()), ("end", pa.int32()), ("entity_index", pa.int32()), ("score", pa.float32())]
)
KNOWLEDGE_SHARD = pa.schema(
    [
        ("text", pa.string()),
        ("spans", pa.list_(SPAN)),
        ("head_index", pa.int32()),
        ("relation_index", pa.int32()),
        ("tail_index", pa.int32()),
        ("template", pa.string()),
        ("split", pa.string()),
    ]
)
JOINT_SHARD = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("spans", pa.list_(SCORED_SPAN)),
        ("target", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
    ]
)
ALIGNMENT_SHARD = pa.schema(
    [
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("prompt_spans", pa.list_(SPAN)),
        ("chosen_spans", pa.list_(SPAN)),
        ("rejected_spans", pa.list_(SPAN)),
        ("source", pa.string()),
        ("split", pa.string()),
    ]
)
