"""Phase 2 of Wikidata ingestion: merge the chunk checkpoints into the canonical tables.

One pass per table, in chunk order. Entities get contiguous indices in dump order; a repeated
entity id is dropped and counted. Which ids exist is kept in bitmaps over the numeric part of the
id (:class:`IdSet`; Q/P/L namespaces: about 17 MB for all of Wikidata's id space, whatever the
dump size), so a triple whose tail is not an ingested entity is dropped and counted without a
join. Triple duplicates can only come from one entity's own claims and are removed per entity
when the chunk is parsed. Nothing here holds more than one chunk's tables in memory. The tables
go to a staged ``kg/``, fsynced, that replaces the old one only when complete; malformed lines go
to a quarantine file per dump with their line numbers in the dump.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.artifacts import atomic_write_bytes, fsync_dir, fsync_tree, staged_dir
from pipelines.errors import InputError
from pipelines.storage import storage_errors
from pipelines.table_writers import TRIPLES_PER_PART
from pipelines.wikidata_chunks import read_table

log = logging.getLogger(__name__)

# entity namespaces with numeric ids, tracked in bitmaps when merging; any other id is "other"
NAMESPACES = "QPL"
OTHER_NS = len(NAMESPACES)


def split_ids(ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Namespace code (0=Q, 1=P, 2=L, 3=other) and numeric part (-1 for other) of each id."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    numeric = pc.fill_null(pc.match_substring_regex(ids, r"^[QPL][0-9]{1,17}$"), False).to_numpy(zero_copy_only=False)
    ns = np.full(len(ids), OTHER_NS, np.int8)
    num = np.full(len(ids), -1, np.int64)
    if numeric.any():
        sel = pa.array(numeric)
        valid = ids.filter(sel)
        codes = np.full(len(valid), OTHER_NS, np.int8)
        for k, letter in enumerate(NAMESPACES):
            codes[pc.starts_with(valid, letter).to_numpy(zero_copy_only=False)] = k
        ns[numeric] = codes
        num[numeric] = pc.cast(pc.utf8_slice_codeunits(valid, 1, 18), pa.int64()).to_numpy()
    return ns, num


class IdSet:
    """Membership of entity ids: bitmaps over the numeric part for Q/P/L ids, a set for the rest."""

    def __init__(self) -> None:
        self.bits = [np.zeros(1024, np.uint8) for _ in range(OTHER_NS)]
        self.other: set[str] = set()

    def contains(self, ns: np.ndarray, num: np.ndarray, ids: pa.Array) -> np.ndarray:
        out = np.zeros(len(ns), bool)
        for k, bits in enumerate(self.bits):
            sel = np.flatnonzero(ns == k)
            if len(sel):
                n = num[sel]
                inside = (n >> 3) < len(bits)
                hit = np.zeros(len(sel), bool)
                hit[inside] = (bits[n[inside] >> 3] & (1 << (n[inside] & 7)).astype(np.uint8)) != 0
                out[sel] = hit
        for i in np.flatnonzero(ns == OTHER_NS):
            out[i] = ids[int(i)].as_py() in self.other
        return out

    def add(self, ns: np.ndarray, num: np.ndarray, ids: pa.Array) -> None:
        for k in range(OTHER_NS):
            n = num[ns == k]
            if not len(n):
                continue
            need = int(n.max() >> 3) + 1
            if need > len(self.bits[k]):
                grown = np.zeros(max(need, 2 * len(self.bits[k])), np.uint8)
                grown[: len(self.bits[k])] = self.bits[k]
                self.bits[k] = grown
            np.bitwise_or.at(self.bits[k], n >> 3, (1 << (n & 7)).astype(np.uint8))
        for i in np.flatnonzero(ns == OTHER_NS):
            self.other.add(ids[int(i)].as_py())


def first_occurrences(ns: np.ndarray, num: np.ndarray, ids: pa.Array) -> np.ndarray:
    """True for rows whose id is not repeated earlier in the same chunk."""
    first = np.ones(len(ns), bool)
    for k in range(OTHER_NS):
        sel = np.flatnonzero(ns == k)
        if len(sel):
            _, idx = np.unique(num[sel], return_index=True)
            keep = np.zeros(len(sel), bool)
            keep[idx] = True
            first[sel] = keep
    seen: set[str] = set()
    for i in np.flatnonzero(ns == OTHER_NS):
        eid = ids[int(i)].as_py()
        first[i] = eid not in seen
        seen.add(eid)
    return first


class PartWriter:
    """Parquet parts of at most ``rows_per_part`` rows: ``<dir>/part-00000.parquet``, ..."""

    def __init__(self, directory: Path, table_schema: pa.Schema, rows_per_part: int = TRIPLES_PER_PART):
        self.dir, self.schema, self.rows_per_part = directory, table_schema, rows_per_part
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer: pq.ParquetWriter | None = None
        self.part = self.rows_in_part = self.rows = 0

    def write(self, table: pa.Table) -> None:
        with storage_errors(self.dir / f"part-{self.part:05d}.parquet"):
            self._write(table)

    def _write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.dir / f"part-{self.part:05d}.parquet", self.schema)
            take = min(table.num_rows, self.rows_per_part - self.rows_in_part)
            self.writer.write_table(table.slice(0, take))
            self.rows_in_part += take
            self.rows += take
            table = table.slice(take)
            if self.rows_in_part >= self.rows_per_part:
                self._roll()

    def _roll(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer, self.part, self.rows_in_part = None, self.part + 1, 0

    def close(self) -> None:
        if self.writer is None and self.rows == 0:  # an empty table still gets one (empty) part
            pq.write_table(self.schema.empty_table(), self.dir / "part-00000.parquet")
        elif self.writer is not None:
            self.writer.close()


@dataclass
class ChunkSummary:
    """What the merge needs from the chunks' metadata, kept small whatever the number of chunks:
    counts summed per file, (lines, malformed) per chunk, and the relations with their labels."""

    n_files: int
    counts: list[Counter] = field(init=False)
    chunks: list[dict[str, tuple[int, int]]] = field(init=False)
    relations: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # id → (chunk that named it, label)

    def __post_init__(self) -> None:
        self.counts = [Counter() for _ in range(self.n_files)]
        self.chunks = [{} for _ in range(self.n_files)]

    def add(self, name: str, fi: int, meta: dict[str, Any]) -> None:
        self.counts[fi].update(meta["counts"])
        self.chunks[fi][name] = (meta["lines"], meta["counts"].get("malformed", 0))
        for pid, label in meta["relations"].items():
            known = self.relations.get(pid)
            # a label from the property's own line wins; among several, the earliest chunk's (deterministic)
            if known is None or (label is not None and (known[1] is None or name < known[0])):
                self.relations[pid] = (name, label)

    def order(self, fi: int | None = None) -> list[str]:
        """The chunks of file ``fi`` (of every file, files in order) in dump order."""
        if fi is None:
            return [n for f in range(self.n_files) for n in sorted(self.chunks[f])]
        return sorted(self.chunks[fi])


@dataclass
class _EntityPass:
    """What pass 1 leaves for pass 2: the ids kept, and the rows of each chunk dropped as repeats."""

    known: IdSet = field(default_factory=IdSet)
    repeated_rows: dict[str, np.ndarray] = field(default_factory=dict)
    n_entities: int = 0
    n_repeated: int = 0


def _entities_pass(order: list[str], chunks_dir: Path, target: Path) -> _EntityPass:
    """Pass 1: entities get indices in dump order; repeated ids are dropped."""
    state = _EntityPass()
    with pq.ParquetWriter(target, schema.ENTITIES) as writer:
        for n in order:
            t = read_table(chunks_dir, n, "entities")
            if not t.num_rows:
                continue
            ids = t["entity_id"].combine_chunks()
            ns, num = split_ids(ids)
            keep = first_occurrences(ns, num, ids) & ~state.known.contains(ns, num, ids)
            if not keep.all():
                state.repeated_rows[n] = np.flatnonzero(~keep)
                state.n_repeated += int((~keep).sum())
                t = t.filter(pa.array(keep))
                ns, num, ids = ns[keep], num[keep], ids.filter(pa.array(keep))
            state.known.add(ns, num, ids)
            start = state.n_entities + 1
            writer.write_table(pa.table({
                "entity_id": t["entity_id"], "index": pa.array(np.arange(start, start + t.num_rows, dtype=np.int32)),
                "label": t["label"], "description": t["description"], "types": t["types"],
                "source": pa.array(["wikidata"] * t.num_rows, pa.string()), "prior": t["prior"],
            }, schema=schema.ENTITIES))
            state.n_entities += t.num_rows
    return state


class _KeyedTables:
    """Pass 2: the tables keyed by an entity row of their chunk, rows of repeated entities dropped."""

    def __init__(self, tmp: Path, ents: _EntityPass):
        self.ents = ents
        self.aliases = pq.ParquetWriter(tmp / "aliases.parquet", schema.ALIASES)
        self.triples = PartWriter(tmp / "triples", schema.TRIPLES)
        self.optional = {"literals": (PartWriter(tmp / "literals", schema.LITERALS), "entity_id"),
                         "qualifiers": (PartWriter(tmp / "qualifiers", schema.QUALIFIERS), "head")}
        self.n_aliases = 0
        self.n_unknown_tail: int | None = None  # None until a chunk has triples

    def add_chunk(self, chunks_dir: Path, n: str) -> None:
        drop = self.ents.repeated_rows.get(n)
        ids = read_table(chunks_dir, n, "entities")["entity_id"].combine_chunks()  # row → id

        def load(table: str) -> pa.Table:
            t = read_table(chunks_dir, n, table)
            if drop is None or not t.num_rows:
                return t
            return t.filter(pa.array(~np.isin(t["row"].to_numpy(), drop)))

        def with_ids(t: pa.Table, column: str) -> pa.Table:
            return t.append_column(column, pc.take(ids, t["row"]))

        a = load("aliases")
        if a.num_rows:
            a = with_ids(a, "entity_id").append_column("scope", pa.nulls(a.num_rows, pa.string()))
            self.aliases.write_table(a.select(schema.ALIASES.names).cast(schema.ALIASES))
            self.n_aliases += a.num_rows
        t = load("triples")
        if t.num_rows:
            tails = t["tail"].combine_chunks()
            ok = self.ents.known.contains(*split_ids(tails), tails)
            self.n_unknown_tail = (self.n_unknown_tail or 0) + int((~ok).sum())
            t = with_ids(t.filter(pa.array(ok)), "head")
            self.triples.write(pa.table({"head": t["head"], "relation": t["relation"], "tail": t["tail"],
                                         "source": pa.array(["wikidata"] * t.num_rows, pa.string())},
                                        schema=schema.TRIPLES))
        for name, (writer, id_col) in self.optional.items():
            x = load(name)
            if x.num_rows:
                writer.write(with_ids(x, id_col).select(writer.schema.names).cast(writer.schema))

    def close(self) -> dict[str, int]:
        """Close every table; the optional ones exist only when asked for and non-empty."""
        self.aliases.close()
        self.triples.close()
        counts = {"aliases": self.n_aliases, "triples": self.triples.rows}
        for name, (writer, _) in self.optional.items():
            writer.close()
            if writer.rows == 0:
                shutil.rmtree(writer.dir)
            else:
                counts[name] = writer.rows
        return counts


def _write_relations(relations: dict[str, str | None], target: Path) -> int:
    rel_ids = sorted(relations)
    pq.write_table(pa.table({"relation_id": rel_ids, "index": pa.array(range(1, len(rel_ids) + 1), pa.int32()),
                             "label": [relations[r] or r for r in rel_ids]}, schema=schema.RELATIONS), target)
    return len(rel_ids)


def merge_chunks(paths: list[Path], summary: ChunkSummary, chunks_dir: Path, kg_dir: Path,
                 quarantine_dir: Path) -> dict[str, Any]:
    """Publish ``kg_dir`` from the chunks listed in ``summary``; return counts (``per_file`` included)."""
    order = summary.order()
    with staged_dir(kg_dir) as tmp:
        ents = _entities_pass(order, chunks_dir, tmp / "entities.parquet")
        if not ents.n_entities:
            raise InputError(f"{', '.join(map(str, paths))}: no entities were read (is this a Wikidata JSON dump?)")
        keyed = _KeyedTables(tmp, ents)
        for n in order:
            keyed.add_chunk(chunks_dir, n)
        table_counts = keyed.close()
        n_relations = _write_relations({pid: label for pid, (_, label) in summary.relations.items()},
                                       tmp / "relations.parquet")
        fsync_tree(tmp)
    fsync_dir(kg_dir.parent)
    counts: dict[str, Any] = {"entities": ents.n_entities, "aliases": table_counts.pop("aliases"),
                              "relations": n_relations, "triples": table_counts.pop("triples"), **table_counts}
    dropped: Counter = Counter()
    if ents.n_repeated:
        dropped["entity_duplicate"] = ents.n_repeated
    if keyed.n_unknown_tail is not None:
        dropped["triple_unknown_entity"] = keyed.n_unknown_tail
    per_file: dict[str, Any] = {}
    for fi, path in enumerate(paths):
        file_counts = Counter(summary.counts[fi])
        for k in [k for k in file_counts if k.startswith("dropped_")]:
            dropped[k.removeprefix("dropped_")] += file_counts.pop(k)
        per_file[str(path)] = dict(file_counts)
        quarantined = write_quarantine(path, summary.order(fi), summary.chunks[fi], chunks_dir, quarantine_dir)
        if quarantined:
            per_file[str(path)]["quarantine_file"] = str(quarantined)
    counts.update({f"dropped_{k}": v for k, v in sorted(dropped.items())})
    for reason, v in sorted(dropped.items()):
        log.warning("dropped %d records: %s", v, reason.replace("_", " "))
    counts["per_file"] = per_file
    return counts


def write_quarantine(path: Path, names: list[str], chunks: dict[str, tuple[int, int]], chunks_dir: Path,
                     quarantine_dir: Path) -> Path | None:
    """Malformed lines with their line numbers in the dump (chunk-relative numbers made absolute)."""
    if not any(chunks[n][1] for n in names):
        return None
    out, first = [], 0
    for n in names:
        if chunks[n][1]:
            bad = read_table(chunks_dir, n, "bad")
            out.extend(b"%d\t%s\n" % (first + line, text) for line, text in
                       zip(bad["line"].to_pylist(), bad["text"].to_pylist()))
        first += chunks[n][0]
    target = quarantine_dir / f"{path.name}.tsv"
    atomic_write_bytes(target, b"".join(out))
    log.warning("%s: %d malformed lines quarantined in %s", path, len(out), target)
    return target
