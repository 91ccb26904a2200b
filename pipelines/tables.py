"""Accumulate canonical KG records from any reader and publish them as Parquet tables.

Readers hand plain records to :class:`KGBuilder`; it deduplicates them, resolves id redirects
(``alt_id``/``replaced_by``), assigns deterministic contiguous indices (entities sorted by id,
0 is padding) and writes ``kg/`` atomically. Triples, and the bare entities of triples files,
go to disk in sorted runs of bounded size and are merged back while the tables are written, so
memory stays bounded by the entities with rich records (ontology terms, annotations), not by the
edges. Nothing is dropped silently: every discarded record is counted by reason, and with
``strict`` any drop is an error.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.artifacts import fsync_tree, staged_dir
from pipelines.errors import DumpParseError, InputError
from pipelines.normalize import normalize_alias
from pipelines.storage import storage_errors
from pipelines.spill import RUN_ROWS, SortedRuns, batched

log = logging.getLogger(__name__)

TRIPLES_PER_PART = 1_000_000
WRITE_ROWS = 65_536  # rows per Parquet write call (row group) while streaming a table out

_RAW_TRIPLE = pa.schema([("head", pa.string()), ("relation", pa.string()), ("tail", pa.string()),
                         ("seq", pa.int64()), ("source", pa.string()), ("known", pa.bool_())])
_BARE_ENTITY = pa.schema([("entity_id", pa.string()), ("seq", pa.int64()), ("label", pa.string()),
                          ("types", pa.list_(pa.string())), ("source", pa.string())])
_BY_ID = itemgetter(0, 1)


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
    """Collects entities, aliases, relations and triples; writes the canonical tables.

    ``work_dir`` holds the sorted runs (default: a temporary directory); ``strict`` turns any
    dropped record into an error when the tables are written."""

    entities: dict[str, Entity] = field(default_factory=dict)
    aliases: set[tuple[str, str, str, str, str | None]] = field(default_factory=set)
    xrefs: set[tuple[str, str]] = field(default_factory=set)
    relations: dict[str, str] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    sliced_out: set[str] = field(default_factory=set)  # live ids a root_term slice left out on request
    dropped: Counter = field(default_factory=Counter)
    merged: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    work_dir: Path | None = None
    run_rows: int = RUN_ROWS
    strict: bool = False

    def __post_init__(self) -> None:
        self._seq = itertools.count()
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._triples: SortedRuns | None = None
        self._bare: SortedRuns | None = None
        self._bare_buffer: dict[str, tuple[int, str, set[str] | None, str]] = {}
        self._bare_aliases: set[tuple[str, str]] = set()  # (label, id) of bare entities

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

    def add_bare_entity(self, entity_id: str, label: str | None, entity_type: str | None, source: str) -> None:
        """An entity known only by id (and perhaps a label, which becomes an alias, and a type), as
        triples files give them: kept on disk, not in memory. A rich record of the same id
        (:meth:`add_entity`) keeps its own label and gains the type."""
        known = self.entities.get(entity_id)
        if known is not None:
            if entity_type and entity_type not in known.types:
                known.types = sorted({*known.types, entity_type})
            if label:
                self.add_alias(label, entity_id, "label")
            return
        if label and label.strip():
            self._bare_aliases.add((label.strip(), entity_id))
        buffered = self._bare_buffer.get(entity_id)
        if buffered is None:  # the type set only when there is a type: most triples files have none
            buffered = self._bare_buffer[entity_id] = (next(self._seq), label or entity_id,
                                                      {entity_type} if entity_type else None, source)
        elif entity_type:
            if buffered[2] is None:
                buffered = self._bare_buffer[entity_id] = (*buffered[:2], set(), buffered[3])
            buffered[2].add(entity_type)
        if len(self._bare_buffer) >= self.run_rows:
            self._flush_bare()

    def add_alias(self, alias: str, entity_id: str, kind: str, lang: str = "en", scope: str | None = None) -> None:
        alias = alias.strip()
        if not alias:
            self.drop("alias_empty", f"empty alias of {entity_id}")
            return
        self.aliases.add((alias, entity_id, kind, lang, scope))

    def add_xref(self, entity_id: str, xref: str) -> None:
        self.xrefs.add((entity_id, xref))

    def add_relation(self, relation_id: str, label: str) -> None:
        self.relations.setdefault(relation_id, label)

    def add_triple(self, head: str, relation: str, tail: str, source: str, known: bool = False) -> None:
        """``known``: both ends were registered with :meth:`add_bare_entity` (no lookup needed)."""
        if self._triples is None:
            self._triples = SortedRuns(self._work(), _RAW_TRIPLE, 4, self.run_rows)
        self._triples.add((head, relation, tail, next(self._seq), source, known))

    def add_redirect(self, old_id: str, new_id: str) -> None:
        self.redirects[old_id] = new_id

    def bump_prior(self, entity_id: str, amount: float = 1.0) -> None:
        ent = self.entities.get(self.resolve(entity_id) or "")
        if ent is not None:
            ent.prior += amount

    def resolve(self, entity_id: str) -> str | None:
        """Follow redirects (alt ids, replaced_by) to a live entity id with a rich record, or None."""
        seen = 0
        while entity_id not in self.entities and entity_id in self.redirects and seen < 10:
            entity_id = self.redirects[entity_id]
            seen += 1
        return entity_id if entity_id in self.entities else None

    def drop(self, reason: str, example: str) -> None:
        """Count one discarded record under ``reason``, remembering the first example of each."""
        self.dropped[reason] += 1
        self.examples.setdefault(reason, example)

    # -- scratch space ----------------------------------------------------------------------
    def _work(self) -> Path:
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            return self.work_dir
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="kalora-build-")
        return Path(self._scratch.name)

    def _flush_bare(self) -> None:
        if self._bare is None:
            self._bare = SortedRuns(self._work(), _BARE_ENTITY, 2, self.run_rows)
        for eid, (seq, label, types, source) in self._bare_buffer.items():
            self._bare.add((eid, seq, label, sorted(types) if types else [], source))
        self._bare_buffer = {}
        self._bare.flush()

    def close(self) -> None:
        """Remove the sorted runs (the builder cannot write again afterwards)."""
        for runs in (self._triples, self._bare):
            if runs is not None:
                runs.close()
        if self._scratch is not None:
            self._scratch.cleanup()

    # -- finishing ----------------------------------------------------------------------------
    def _entity_rows(self) -> Iterator[Entity]:
        """Every entity in id order: rich records merged with the bare ids of triples files."""
        if self._bare_buffer:
            self._flush_bare()
        rich = ((eid, -1, None, None, None) for eid in sorted(self.entities))
        stream = heapq.merge(rich, self._bare.sorted(), key=_BY_ID) if self._bare is not None else rich
        for eid, group in itertools.groupby(stream, key=itemgetter(0)):
            _, seq, label, types, source = next(group)
            ent = self.entities.get(eid) if seq == -1 else Entity(eid, label, None, list(types), source)
            extra = {t for row in group for t in row[3]}
            if extra - set(ent.types):
                ent = Entity(ent.entity_id, ent.label, ent.description, sorted({*ent.types, *extra}), ent.source, ent.prior)
            yield ent

    def _checked_triples(self) -> Iterator[tuple]:
        """Raw triples with both ends resolved to live entities and a known relation, in key order."""
        if self._triples is None:
            return iter(())
        resolve = self.resolve
        unknown_entity = unknown_relation = 0

        def checked():
            nonlocal unknown_entity, unknown_relation
            for h, r, t, seq, src, known in self._triples.sorted():
                if not known:
                    rh, rt = resolve(h), resolve(t)
                    if rh is None or rt is None:
                        self.drop("triple_unknown_entity", f"({h}, {r}, {t}) from {src}")
                        continue
                    h, t = rh, rt
                if r not in self.relations:
                    self.drop("triple_unknown_relation", f"({h}, {r}, {t}) from {src}")
                    continue
                yield h, r, t, seq, src

        redirected = set(self.redirects) - set(self.entities)
        if not any(self._triples.contains_any(end, redirected) for end in ("head", "tail")):
            return checked()  # resolution changes no id: the merge order still holds
        resorted = SortedRuns(self._work(), _RAW_TRIPLE.remove(5), 4, self.run_rows)
        resorted.extend(checked())
        return resorted.sorted()

    def _distinct_triples(self) -> Iterator[tuple[str, str, str, str]]:
        """One row per (head, relation, tail), the source of its first occurrence; repeats counted."""
        for key, group in itertools.groupby(self._checked_triples(), key=itemgetter(0, 1, 2)):
            first = next(group)
            self.merged["duplicate_triples"] += sum(1 for _ in group)
            yield (*key, first[4])

    def _resolved_aliases(self) -> list[tuple[str, str, str, str, str, str | None]]:
        rows = []
        bare = ((alias, eid, "label", "en", None) for alias, eid in self._bare_aliases)
        for alias, eid, kind, lang, scope in itertools.chain(self.aliases, bare):
            target = eid if (alias, eid) in self._bare_aliases else self.resolve(eid)
            if target is None:
                self.drop("alias_unknown_entity", f"{alias!r} → {eid}")
                continue
            norm = normalize_alias(alias)
            if not norm:
                self.drop("alias_normalises_to_nothing", f"{alias!r} of {eid}")
                continue
            rows.append((alias, norm, target, kind, lang, scope))
        return sorted(set(rows), key=lambda r: (*r[:5], r[5] or ""))

    def write(self, kg_dir: Path) -> dict[str, int]:
        """Publish ``kg_dir`` atomically; return counts (written, merged and dropped by reason)."""
        if not self.entities and not self._bare_buffer and self._bare is None:
            raise InputError("no entities were read: check the input files and the --format")
        try:
            with staged_dir(kg_dir) as tmp:
                aliases = self._resolved_aliases()
                counts = {"entities": write_rows(tmp / "entities.parquet", schema.ENTITIES, _entity_columns,
                                                 enumerate(self._entity_rows(), 1))}
                counts["aliases"] = write_rows(tmp / "aliases.parquet", schema.ALIASES, _columns, aliases)
                rel_ids = sorted(self.relations)
                counts["relations"] = write_rows(tmp / "relations.parquet", schema.RELATIONS, _columns,
                                                 [(r, i, self.relations[r]) for i, r in enumerate(rel_ids, 1)])
                if self.xrefs:
                    xrefs = sorted({(t, x.split(":", 1)[0] if ":" in x else "", x)
                                    for e, x in self.xrefs if (t := self.resolve(e)) is not None})
                    counts["xrefs"] = write_rows(tmp / "xrefs.parquet", schema.XREFS, _columns, xrefs)
                (tmp / "triples").mkdir()
                counts["triples"] = write_parts(tmp / "triples", self._distinct_triples())
                self._check_strict()
                fsync_tree(tmp)
        finally:
            self.close()
        counts.update({f"merged_{k}": v for k, v in sorted(self.merged.items()) if v})
        counts.update({f"dropped_{k}": v for k, v in sorted(self.dropped.items())})
        for reason, n in sorted(self.dropped.items()):
            log.warning("dropped %d records: %s (e.g. %s)", n, reason.replace("_", " "), self.examples.get(reason))
        return counts

    def _check_strict(self) -> None:
        if self.strict and self.dropped:
            reason, n = sorted(self.dropped.items())[0]
            raise InputError(f"--strict: {n} record(s) dropped as {reason.replace('_', ' ')}, "
                             f"e.g. {self.examples.get(reason)}")


def drop_row(counts: Counter, reason: str, path: Path, line: int | None, what: str, strict: bool) -> None:
    """Count one input row a reader discards under ``dropped_<reason>``; with ``strict`` it is an
    error naming the file and line instead."""
    if strict:
        raise DumpParseError(path, line, f"{what} (--strict: it would be dropped as {reason.replace('_', ' ')})")
    counts[f"dropped_{reason}"] += 1


# -- streaming Parquet writers -----------------------------------------------------------------------
def _columns(rows: list[tuple], names: list[str]) -> dict[str, list]:
    cols = list(zip(*rows)) if rows else [[] for _ in names]
    return dict(zip(names, map(list, cols)))


def _entity_columns(rows: list[tuple[int, Entity]], names: list[str]) -> dict[str, list]:
    return {"entity_id": [e.entity_id for _, e in rows], "index": [i for i, _ in rows],
            "label": [e.label for _, e in rows], "description": [e.description for _, e in rows],
            "types": [sorted(set(e.types)) for _, e in rows], "source": [e.source for _, e in rows],
            "prior": [e.prior for _, e in rows]}


def write_rows(path: Path, table_schema: pa.Schema, to_columns, rows) -> int:
    """Write ``rows`` to one Parquet file in bounded batches (``to_columns`` turns a batch into columns)."""
    n = 0
    with storage_errors(path), pq.ParquetWriter(path, table_schema) as writer:
        for chunk in batched(rows, WRITE_ROWS):
            writer.write_table(pa.table(to_columns(chunk, table_schema.names), schema=table_schema))
            n += len(chunk)
        if n == 0:
            writer.write_table(table_schema.empty_table())
    return n


def write_parts(out_dir: Path, rows: Iterator[tuple]) -> int:
    """Triples in ``part-NNNNN.parquet`` files of at most TRIPLES_PER_PART rows (one, empty, if none)."""
    rows = iter(rows)
    n = part = 0
    while (first := next(rows, None)) is not None or part == 0:
        part_rows = itertools.chain([first] if first is not None else [], itertools.islice(rows, TRIPLES_PER_PART - 1))
        n += write_rows(out_dir / f"part-{part:05d}.parquet", schema.TRIPLES, _columns, part_rows)
        part += 1
        if first is None:
            break
    return n
