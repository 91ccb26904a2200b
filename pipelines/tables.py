"""Accumulate canonical KG records from any reader and publish them as Parquet tables.

Readers yield plain records; :class:`KGBuilder` deduplicates them, resolves id redirects
(``alt_id``/``replaced_by``), assigns deterministic contiguous indices (0 is padding) and writes
``kg/`` atomically. Nothing is dropped silently: every discarded record is counted by reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.artifacts import staged_dir
from pipelines.normalize import normalize_alias

log = logging.getLogger(__name__)

TRIPLES_PER_PART = 1_000_000


@dataclass
class Entity:
    entity_id: str
    label: str
    description: str | None = None
    types: list[str] = field(default_factory=list)
    source: str = ""
    prior: float = 0.0


@dataclass
class KGBuilder:
    """Collects entities, aliases, relations and triples; writes the canonical tables."""

    entities: dict[str, Entity] = field(default_factory=dict)
    aliases: set[tuple[str, str, str, str, str | None]] = field(default_factory=set)
    xrefs: set[tuple[str, str]] = field(default_factory=set)
    relations: dict[str, str] = field(default_factory=dict)
    triples: dict[tuple[str, str, str], str] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)

    # -- adding -----------------------------------------------------------------------------
    def add_entity(self, ent: Entity) -> None:
        known = self.entities.get(ent.entity_id)
        if known is None:
            self.entities[ent.entity_id] = ent
            return
        # The same entity seen twice (e.g. a disease in two annotation files): merge, keep the first label.
        known.types = sorted(set(known.types) | set(ent.types))
        known.description = known.description or ent.description
        known.prior = max(known.prior, ent.prior)

    def add_alias(self, alias: str, entity_id: str, kind: str, lang: str = "en", scope: str | None = None) -> None:
        alias = alias.strip()
        if not alias:
            self.dropped["alias_empty"] += 1
            return
        self.aliases.add((alias, entity_id, kind, lang, scope))

    def add_xref(self, entity_id: str, xref: str) -> None:
        self.xrefs.add((entity_id, xref))

    def add_relation(self, relation_id: str, label: str) -> None:
        self.relations.setdefault(relation_id, label)

    def add_triple(self, head: str, relation: str, tail: str, source: str) -> None:
        self.triples.setdefault((head, relation, tail), source)

    def add_redirect(self, old_id: str, new_id: str) -> None:
        self.redirects[old_id] = new_id

    def bump_prior(self, entity_id: str, amount: float = 1.0) -> None:
        ent = self.entities.get(self.resolve(entity_id) or "")
        if ent is not None:
            ent.prior += amount

    def resolve(self, entity_id: str) -> str | None:
        """Follow redirects (alt ids, replaced_by) to a live entity id, or None."""
        seen = 0
        while entity_id not in self.entities and entity_id in self.redirects and seen < 10:
            entity_id = self.redirects[entity_id]
            seen += 1
        return entity_id if entity_id in self.entities else None

    # -- finishing ----------------------------------------------------------------------------
    def _resolved_triples(self) -> dict[tuple[str, str, str], str]:
        out: dict[tuple[str, str, str], str] = {}
        for (h, r, t), src in self.triples.items():
            rh, rt = self.resolve(h), self.resolve(t)
            if rh is None or rt is None:
                self.dropped["triple_unknown_entity"] += 1
                continue
            if r not in self.relations:
                self.dropped["triple_unknown_relation"] += 1
                continue
            out.setdefault((rh, r, rt), src)
        return out

    def _resolved_aliases(self) -> list[tuple[str, str, str, str, str, str | None]]:
        rows = []
        for alias, eid, kind, lang, scope in self.aliases:
            target = self.resolve(eid)
            if target is None:
                self.dropped["alias_unknown_entity"] += 1
                continue
            norm = normalize_alias(alias)
            if not norm:
                self.dropped["alias_normalises_to_nothing"] += 1
                continue
            rows.append((alias, norm, target, kind, lang, scope))
        return sorted(set(rows), key=lambda r: (*r[:5], r[5] or ""))

    def write(self, kg_dir: Path) -> dict[str, int]:
        """Publish ``kg_dir`` atomically; return counts (written and dropped by reason)."""
        if not self.entities:
            from pipelines.errors import InputError

            raise InputError("no entities were read: check the input files and the --format")
        triples = self._resolved_triples()
        aliases = self._resolved_aliases()
        ids = sorted(self.entities)
        ents = [self.entities[i] for i in ids]
        rel_ids = sorted(self.relations)
        with staged_dir(kg_dir) as tmp:
            pq.write_table(
                pa.table(
                    {
                        "entity_id": ids,
                        "index": pa.array(range(1, len(ids) + 1), pa.int32()),
                        "label": [e.label for e in ents],
                        "description": [e.description for e in ents],
                        "types": [sorted(set(e.types)) for e in ents],
                        "source": [e.source for e in ents],
                        "prior": pa.array([e.prior for e in ents], pa.float32()),
                    },
                    schema=schema.ENTITIES,
                ),
                tmp / "entities.parquet",
            )
            cols = list(zip(*aliases)) if aliases else [[] for _ in schema.ALIASES.names]
            pq.write_table(
                pa.table(dict(zip(schema.ALIASES.names, map(list, cols))), schema=schema.ALIASES),
                tmp / "aliases.parquet",
            )
            pq.write_table(
                pa.table(
                    {
                        "relation_id": rel_ids,
                        "index": pa.array(range(1, len(rel_ids) + 1), pa.int32()),
                        "label": [self.relations[r] for r in rel_ids],
                    },
                    schema=schema.RELATIONS,
                ),
                tmp / "relations.parquet",
            )
            if self.xrefs:
                xrefs = sorted({(t, x) for e, x in self.xrefs if (t := self.resolve(e)) is not None})
                pq.write_table(pa.table({"entity_id": [e for e, _ in xrefs],
                                         "db": [x.split(":", 1)[0] if ":" in x else "" for _, x in xrefs],
                                         "xref": [x for _, x in xrefs]}, schema=schema.XREFS),
                               tmp / "xrefs.parquet")
            (tmp / "triples").mkdir()
            keys = sorted(triples)
            for part, start in enumerate(range(0, max(len(keys), 1), TRIPLES_PER_PART)):
                chunk = keys[start : start + TRIPLES_PER_PART]
                table = pa.table(
                    {
                        "head": [k[0] for k in chunk],
                        "relation": [k[1] for k in chunk],
                        "tail": [k[2] for k in chunk],
                        "source": [triples[k] for k in chunk],
                    },
                    schema=schema.TRIPLES,
                )
                pq.write_table(table, tmp / "triples" / f"part-{part:05d}.parquet")
        counts = {
            "entities": len(ids),
            "aliases": len(aliases),
            "relations": len(rel_ids),
            "triples": len(triples),
        }
        if self.xrefs:
            counts["xrefs"] = len(xrefs)
        counts.update({f"dropped_{k}": v for k, v in sorted(self.dropped.items())})
        for reason, n in sorted(self.dropped.items()):
            log.warning("dropped %d records: %s", n, reason.replace("_", " "))
        return counts
