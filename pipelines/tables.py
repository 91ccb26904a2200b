"""Accumulate canonical KG records from any reader and publish them as Parquet tables.

Readers hand plain records to :class:`KGBuilder`; it deduplicates them, resolves id redirects
(``alt_id``/``replaced_by``), assigns deterministic contiguous indices (entities sorted by id,
0 is padding) and writes ``kg/`` atomically. Every record (entities, aliases, xrefs, triples)
goes to disk in sorted runs of bounded size and is merged back while the tables are written, so
memory holds only one id -> types entry per entity with a rich record, redirects and relation
labels: not names, definitions, synonyms or edges. Nothing is dropped silently: every discarded
record is counted by reason, and with ``strict`` any drop is an error.
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

from pipelines import schema
from pipelines.artifacts import fsync_tree, staged_dir
from pipelines.errors import DumpParseError, InputError
from pipelines.normalize import normalize_alias
from pipelines.spill import RUN_ROWS, SortedRuns
from pipelines.table_writers import columns, entity_columns, write_parts, write_rows

__all__ = ["Entity", "KGBuilder", "drop_row"]

log = logging.getLogger(__name__)

_RAW_TRIPLE = pa.schema([("head", pa.string()), ("relation", pa.string()), ("tail", pa.string()),
                         ("seq", pa.int64()), ("source", pa.string()), ("known", pa.bool_())])
_BARE_ENTITY = pa.schema([("entity_id", pa.string()), ("seq", pa.int64()), ("label", pa.string()),
                          ("types", pa.list_(pa.string())), ("source", pa.string())])
_RICH_ENTITY = pa.schema([("entity_id", pa.string()), ("seq", pa.int64()), ("label", pa.string()),
                          ("description", pa.string()), ("types", pa.list_(pa.string())), ("source", pa.string()),
                          ("prior", pa.float64())])
# scope "" stands for None in a run (a sort key never reaches a null); ``known``: a bare entity's label
_RAW_ALIAS = pa.schema([("alias", pa.string()), ("entity_id", pa.string()), ("kind", pa.string()),
                        ("lang", pa.string()), ("scope", pa.string()), ("known", pa.bool_())])
_BY_ID = itemgetter(0, 1)


@dataclass
class Entity:
    entity_id: str
    label: str
    description: str | None = None
    types: list[str] = field(default_factory=list)
    source: str = ""
    prior: float = 0.0


_RESOLVED_ALIAS = pa.schema([("alias", pa.string()), ("alias_norm", pa.string()), ("entity_id", pa.string()),
                             ("kind", pa.string()), ("lang", pa.string()), ("scope", pa.string())])
_RAW_XREF = pa.schema([("entity_id", pa.string()), ("db", pa.string()), ("xref", pa.string())])
# name -> (schema, key columns) of the sorted runs a builder keeps
_RUNS = {"triples": (_RAW_TRIPLE, 4), "bare": (_BARE_ENTITY, 2), "rich": (_RICH_ENTITY, 2),
         "aliases": (_RAW_ALIAS, 5), "xrefs": (_RAW_XREF, 3)}


@dataclass
class KGBuilder:
    """Collects entities, aliases, relations and triples; writes the canonical tables.

    ``work_dir`` holds the sorted runs (default: a temporary directory); ``strict`` turns any
    dropped record into an error when the tables are written."""

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
        self._runs: dict[str, SortedRuns] = {}
        self._rich: dict[str, tuple[str, ...]] = {}  # id -> types so far: the only per-entity memory
        self._type_sets: dict[tuple[str, ...], tuple[str, ...]] = {}  # interned (most entities share a few)
        self._bumps: Counter = Counter()
        self._bare_buffer: dict[str, tuple[int, str, set[str] | None, str]] = {}

    # -- adding -----------------------------------------------------------------------------
    def has_entity(self, entity_id: str) -> bool:
        """Whether ``entity_id`` has a rich record (a bare id of a triples file does not count)."""
        return entity_id in self._rich

    @property
    def entity_count(self) -> int:
        return len(self._rich)

    def add_entity(self, ent: Entity) -> None:
        """The first record of an id gives its label and source; later ones add types, a missing
        description and a higher prior (a disease seen in two annotation files)."""
        seen = self._rich.get(ent.entity_id)
        types = self._interned(ent.types if seen is None else {*seen, *ent.types})
        if seen is not None and types == seen and ent.description is None and not ent.prior:
            return  # nothing new: most repeats (one per annotation row) stop here
        self._rich[ent.entity_id] = types
        self._run("rich").add((ent.entity_id, next(self._seq), ent.label if seen is None else None,
                               ent.description, list(ent.types), ent.source, float(ent.prior)))

    def _interned(self, types) -> tuple[str, ...]:
        key = tuple(sorted(set(types)))
        return self._type_sets.setdefault(key, key)

    def add_bare_entity(self, entity_id: str, label: str | None, entity_type: str | None, source: str) -> None:
        """An entity known only by id (and perhaps a label, which becomes an alias, and a type), as
        triples files give them: kept on disk, not in memory. A rich record of the same id
        (:meth:`add_entity`) keeps its own label and gains the type."""
        if entity_id in self._rich:
            if entity_type:
                self.add_entity(Entity(entity_id, entity_id, None, [entity_type], source))
            if label:
                self.add_alias(label, entity_id, "label")
            return
        buffered = self._bare_buffer.get(entity_id)
        if label and label.strip() and (buffered is None or buffered[1] != label):
            self._run("aliases").add((label.strip(), entity_id, "label", "en", "", True))
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
        self._run("aliases").add((alias, entity_id, kind, lang, scope or "", False))

    def add_xref(self, entity_id: str, xref: str) -> None:
        self._run("xrefs").add((entity_id, xref.split(":", 1)[0] if ":" in xref else "", xref))

    def add_relation(self, relation_id: str, label: str) -> None:
        self.relations.setdefault(relation_id, label)

    def add_triple(self, head: str, relation: str, tail: str, source: str, known: bool = False) -> None:
        """``known``: both ends were registered with :meth:`add_bare_entity` (no lookup needed)."""
        self._run("triples").add((head, relation, tail, next(self._seq), source, known))

    def add_redirect(self, old_id: str, new_id: str) -> None:
        self.redirects[old_id] = new_id

    def bump_prior(self, entity_id: str, amount: float = 1.0) -> None:
        eid = self.resolve(entity_id)
        if eid is not None:
            self._bumps[eid] += amount

    def resolve(self, entity_id: str) -> str | None:
        """Follow redirects (alt ids, replaced_by) to a live entity id with a rich record, or None."""
        seen = 0
        while entity_id not in self._rich and entity_id in self.redirects and seen < 10:
            entity_id = self.redirects[entity_id]
            seen += 1
        return entity_id if entity_id in self._rich else None

    def drop(self, reason: str, example: str) -> None:
        """Count one discarded record under ``reason``, remembering the first example of each."""
        self.dropped[reason] += 1
        self.examples.setdefault(reason, example)

    # -- scratch space ----------------------------------------------------------------------
    def _run(self, name: str) -> SortedRuns:
        runs = self._runs.get(name)
        if runs is None:
            run_schema, key_columns = _RUNS[name]
            runs = self._runs[name] = SortedRuns(self._work(), run_schema, key_columns, self.run_rows)
        return runs

    def _work(self) -> Path:
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            return self.work_dir
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="kalora-build-")
        return Path(self._scratch.name)

    def _flush_bare(self) -> None:
        bare = self._run("bare")
        for eid, (seq, label, types, source) in self._bare_buffer.items():
            bare.add((eid, seq, label, sorted(types) if types else [], source))
        self._bare_buffer = {}
        bare.flush()

    def close(self) -> None:
        """Remove the sorted runs (the builder cannot write again afterwards)."""
        for runs in self._runs.values():
            runs.close()
        if self._scratch is not None:
            self._scratch.cleanup()

    # -- finishing ----------------------------------------------------------------------------
    def _rich_entities(self) -> Iterator[Entity]:
        """Each rich id's records merged: first label and source, first description, all types,
        the highest prior plus every :meth:`bump_prior`."""
        if "rich" not in self._runs:
            return
        for eid, group in itertools.groupby(self._runs["rich"].sorted(), key=itemgetter(0)):
            _, _, label, description, types, source, prior = next(group)
            types = set(types)
            for row in group:
                description = description or row[3]
                types.update(row[4])
                prior = max(prior, row[6])
            yield Entity(eid, label, description, sorted(types), source, prior + self._bumps.get(eid, 0.0))

    def _entity_rows(self) -> Iterator[Entity]:
        """Every entity in id order: rich records merged with the bare ids of triples files."""
        if self._bare_buffer:
            self._flush_bare()
        rich = ((e.entity_id, -1, e) for e in self._rich_entities())
        stream = heapq.merge(rich, self._runs["bare"].sorted(), key=_BY_ID) if "bare" in self._runs else rich
        for eid, group in itertools.groupby(stream, key=itemgetter(0)):
            first = next(group)
            ent = first[2] if first[1] == -1 else Entity(eid, first[2], None, list(first[3]), first[4])
            extra = {t for row in group for t in row[3]}
            if extra - set(ent.types):
                ent = Entity(ent.entity_id, ent.label, ent.description, sorted({*ent.types, *extra}), ent.source, ent.prior)
            yield ent

    def _resolved(self, name: str, ends: tuple[str, ...], rows, out_schema: pa.Schema, key_columns: int):
        """``rows(sorted run rows)`` with ids resolved, still in key order: when a redirect changes an
        id in one of the ``ends`` columns, the resolved rows are sorted again on disk."""
        runs = self._runs.get(name)
        if runs is None:
            return iter(())
        redirected = set(self.redirects) - self._rich.keys()
        if not any(runs.contains_any(end, redirected) for end in ends):
            return rows(runs.sorted())  # resolution changes no id: the merge order still holds
        resorted = SortedRuns(self._work(), out_schema, key_columns, self.run_rows)
        resorted.extend(rows(runs.sorted()))
        return resorted.sorted()

    def _checked_triples(self) -> Iterator[tuple]:
        """Raw triples with both ends resolved to live entities and a known relation, in key order."""
        resolve = self.resolve

        def checked(raw):
            for h, r, t, seq, src, known in raw:
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

        return self._resolved("triples", ("head", "tail"), checked, _RAW_TRIPLE.remove(5), 4)

    def _distinct_triples(self) -> Iterator[tuple[str, str, str, str]]:
        """One row per (head, relation, tail), the source of its first occurrence; repeats counted."""
        for key, group in itertools.groupby(self._checked_triples(), key=itemgetter(0, 1, 2)):
            first = next(group)
            self.merged["duplicate_triples"] += sum(1 for _ in group)
            yield (*key, first[4])

    def _alias_rows(self) -> Iterator[tuple]:
        """Distinct (alias, alias_norm, entity_id, kind, lang, scope) rows, ids resolved, sorted."""
        def resolved(raw):
            for (alias, eid, kind, lang, scope), group in itertools.groupby(raw, key=itemgetter(0, 1, 2, 3, 4)):
                target = eid if any(row[5] for row in group) else self.resolve(eid)
                if target is None:
                    self.drop("alias_unknown_entity", f"{alias!r} → {eid}")
                    continue
                norm = normalize_alias(alias)
                if not norm:
                    self.drop("alias_normalises_to_nothing", f"{alias!r} of {eid}")
                    continue
                yield alias, norm, target, kind, lang, scope

        rows = self._resolved("aliases", ("entity_id",), resolved, _RESOLVED_ALIAS, 6)
        return ((*row[:5], row[5] or None) for row, _ in itertools.groupby(rows))

    def _xref_rows(self) -> Iterator[tuple]:
        def resolved(raw):
            for eid, db, xref in raw:
                target = self.resolve(eid)
                if target is None:
                    self.drop("xref_unknown_entity", f"{xref} of {eid}")
                    continue
                yield target, db, xref

        return (row for row, _ in itertools.groupby(self._resolved("xrefs", ("entity_id",), resolved, _RAW_XREF, 3)))

    def write(self, kg_dir: Path) -> dict[str, int]:
        """Publish ``kg_dir`` atomically; return counts (written, merged and dropped by reason)."""
        if not self._rich and not self._bare_buffer and "bare" not in self._runs:
            raise InputError("no entities were read: check the input files and the --format")
        try:
            with staged_dir(kg_dir) as tmp:
                counts = {"entities": write_rows(tmp / "entities.parquet", schema.ENTITIES, entity_columns,
                                                 enumerate(self._entity_rows(), 1))}
                counts["aliases"] = write_rows(tmp / "aliases.parquet", schema.ALIASES, columns, self._alias_rows())
                rel_ids = sorted(self.relations)
                counts["relations"] = write_rows(tmp / "relations.parquet", schema.RELATIONS, columns,
                                                 [(r, i, self.relations[r]) for i, r in enumerate(rel_ids, 1)])
                if "xrefs" in self._runs:
                    counts["xrefs"] = write_rows(tmp / "xrefs.parquet", schema.XREFS, columns, self._xref_rows())
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
