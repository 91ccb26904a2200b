"""Wikidata dumps at dump scale: parallel over chunks, memory bounded, resumable after a kill.

Phase 1 (parallel). The dump is cut into chunks of about ``chunk_bytes`` on line boundaries:
a plain file by byte ranges that each worker reads itself; a ``.gz``/``.bz2`` stream by
decompressing it once in the main process (``rapidgzip``/``indexed_bzip2`` decompress in
parallel when installed) and handing out blocks. Each worker parses its chunk with
:func:`pipelines.wikidata.extract_lines` and writes the records to Arrow IPC files in
``<kg>/.work/ingest/chunks/<file>-<chunk>/``, published by renaming a finished temporary
directory: a finished chunk is the checkpoint. A killed run started again with the same inputs and
options skips the chunks already there.

Phase 2 (merge, one pass per table, in chunk order). Entities get contiguous indices in dump
order; a repeated entity id is dropped and counted. Which ids exist is kept in bitmaps over the
numeric part of the id (Q/P/L namespaces: about 17 MB for all of Wikidata's id space, whatever the
dump size), so a triple whose tail is not an ingested entity is dropped and counted without a
join. Triple duplicates can only come from one entity's own claims and are removed per entity in
phase 1. Nothing in either phase holds more than a few chunks in memory, so peak memory does not
grow with the dump. The tables go to a staged ``kg/`` that replaces the old one only when complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.artifacts import atomic_write_bytes, atomic_write_json, staged_dir
from pipelines.errors import DumpParseError, InputError
from pipelines.readers import check_readable, compression, open_binary
from pipelines.tables import TRIPLES_PER_PART
from pipelines.wikidata import MalformedLine, Records, WikidataOptions, extract_lines

log = logging.getLogger(__name__)

PLAN_VERSION = 1
DEFAULT_CHUNK_BYTES = 32 << 20

_ARROW = {
    "entities": pa.schema([("entity_id", pa.string()), ("label", pa.string()), ("description", pa.string()),
                           ("types", pa.list_(pa.string())), ("prior", pa.float32())]),
    "aliases": pa.schema([("row", pa.int32()), ("alias", pa.string()), ("alias_norm", pa.string()),
                          ("kind", pa.string()), ("lang", pa.string())]),
    "triples": pa.schema([("row", pa.int32()), ("relation", pa.string()), ("tail", pa.string())]),
    "literals": pa.schema([("row", pa.int32()), ("property", pa.string()), ("datatype", pa.string()),
                           ("value", pa.string()), ("lang", pa.string())]),
    "qualifiers": pa.schema([("row", pa.int32()), ("relation", pa.string()), ("value", pa.string()),
                             ("qualifier_property", pa.string()), ("qualifier_value", pa.string())]),
    "bad": pa.schema([("line", pa.int32()), ("text", pa.binary())]),
}
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


# -- reading ------------------------------------------------------------------------------------
def _read_full(fh: IO[bytes], n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = fh.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def iter_blocks(path: Path, chunk_bytes: int, threads: int = 1) -> Iterator[tuple[int, bytes]]:
    """(index, block) of whole lines of about ``chunk_bytes`` each, decompressing as needed.

    Raises ``EOFError``/``OSError`` (or the parallel decompressor's error) on a damaged stream.
    """
    with open_binary(path, threads) as fh:
        carry, index = b"", 0
        while True:
            buf = _read_full(fh, chunk_bytes)
            if not buf:
                break
            buf = carry + buf
            cut = buf.rfind(b"\n")
            if cut < 0:
                carry = buf
                continue
            yield index, buf[: cut + 1]
            index += 1
            carry = buf[cut + 1:]
        if carry:
            yield index, carry


def _line_range(data, start: int, end: int) -> tuple[int, int]:
    """[first, stop) covering the lines whose first byte lies in [start, end) of ``data``."""
    size = len(data)
    first = 0 if start == 0 else data.find(b"\n", start - 1) + 1 or size
    stop = size if end >= size else data.find(b"\n", end - 1) + 1 or size
    return first, max(first, stop)


def _count_lines_before(path: str, offset: int) -> int:
    n = 0
    with open(path, "rb") as fh:
        while offset > 0:
            block = fh.read(min(offset, 16 << 20))
            if not block:
                break
            n += block.count(b"\n")
            offset -= len(block)
    return n


# -- phase 1: one chunk -------------------------------------------------------------------------
def _write_ipc(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def run_chunk(job: dict[str, Any]) -> dict[str, Any]:
    """Parse one chunk and publish its records under ``job['out']``; return its metadata.

    Runs in a worker process (or inline with one worker). A malformed line in strict mode comes
    back as ``{"error": ...}`` rather than an exception, so its position survives the process hop.
    """
    started = time.perf_counter()
    records = Records()
    if "data" in job:
        offset, nbytes = None, len(job["data"])
        try:
            extract_lines(job["data"], job["options"], records)
        except MalformedLine as exc:
            return {"error": exc.reason, "line": exc.line, "offset": None, "first_line": job.get("first_line")}
    else:  # a byte range of a plain file, parsed in place through a read-only memory map (no copies)
        with open(job["path"], "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if job["end"] > 0 else b""
        try:
            offset, stop = _line_range(mm, job["start"], job["end"])
            nbytes = stop - offset
            try:
                extract_lines(mm, job["options"], records, offset, stop)
            except MalformedLine as exc:
                return {"error": exc.reason, "line": exc.line, "offset": offset, "first_line": None}
        finally:
            if isinstance(mm, mmap.mmap):
                with contextlib.suppress(BufferError):  # a view still alive in a traceback: GC closes it
                    mm.close()
    final = Path(job["out"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        for name, cols in (("entities", records.entities), ("aliases", records.aliases),
                           ("triples", records.triples), ("literals", records.literals),
                           ("qualifiers", records.qualifiers)):
            _write_ipc(pa.table(cols, schema=_ARROW[name]), tmp / f"{name}.arrow")
        bad = {"line": [n for n, _ in records.bad], "text": [t for _, t in records.bad]}
        _write_ipc(pa.table(bad, schema=_ARROW["bad"]), tmp / "bad.arrow")
        meta = {"lines": records.lines, "counts": dict(records.counts), "relations": records.relations,
                "bytes": nbytes, "seconds": round(time.perf_counter() - started, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, final)  # the checkpoint: a chunk directory exists only when complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


# -- planning, checkpoints ----------------------------------------------------------------------
@dataclass(frozen=True)
class StreamSettings:
    workers: int = 1
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    progress_every_s: float = 10.0


def _chunk_name(file_index: int, chunk_index: int) -> str:
    return f"{file_index:03d}-{chunk_index:07d}"


def _options_key(options: WikidataOptions) -> dict[str, Any]:
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in asdict(options).items()}


def _prepare_work(work: Path, plan: dict[str, Any]) -> set[str]:
    """Reuse the chunks of an interrupted run with the same plan; otherwise start clean."""
    plan_file = work / "plan.json"
    if plan_file.exists():
        try:
            old = json.loads(plan_file.read_text())
        except json.JSONDecodeError:
            old = None
        if old == plan:
            (work / "chunks").mkdir(exist_ok=True)
            done = {p.name for p in (work / "chunks").iterdir() if p.is_dir() and not p.name.startswith(".")}
            if done:
                log.info("resuming an interrupted ingest: %d chunks already done in %s", len(done), work)
            for p in (work / "chunks").iterdir():  # leftovers of chunks being written when killed
                if p.name.startswith("."):
                    shutil.rmtree(p, ignore_errors=True)
            return done
        log.info("inputs or options changed since the interrupted ingest in %s: starting over", work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "chunks").mkdir(parents=True)
    atomic_write_json(plan_file, plan)
    return set()


# -- the entry point ----------------------------------------------------------------------------
def ingest_wikidata(paths: list[Path], kg_dir: Path, options: WikidataOptions = WikidataOptions(),
                    settings: StreamSettings = StreamSettings(), quarantine_dir: Path | None = None,
                    work_dir: Path | None = None) -> dict[str, Any]:
    """Ingest Wikidata dumps into ``kg_dir`` (published atomically); return counts.

    ``work_dir`` holds the checkpoints (default ``<kg_dir>/../.work/ingest``) and is removed after a
    successful publish.
    """
    paths = [check_readable(p) for p in paths]
    work = work_dir or kg_dir.parent / ".work" / "ingest"
    stats = [p.stat() for p in paths]
    plan = {"version": PLAN_VERSION, "chunk_bytes": settings.chunk_bytes, "options": _options_key(options),
            "sources": [{"path": str(p.resolve()), "size": s.st_size, "mtime_ns": s.st_mtime_ns}
                        for p, s in zip(paths, stats)]}
    done = _prepare_work(work, json.loads(json.dumps(plan)))  # as it reads back from plan.json
    chunks_dir = work / "chunks"
    started = time.perf_counter()
    summary = _Summary(len(paths))
    progress = _Progress(settings.progress_every_s)
    for name in sorted(done):
        meta = json.loads((chunks_dir / name / "meta.json").read_text())
        summary.add(name, int(name[:3]), meta)
        progress.add(meta, resumed=True)

    def jobs() -> Iterator[tuple[str, int, dict[str, Any]]]:
        for fi, path in enumerate(paths):
            if compression(path) is not None:
                line = 0
                try:
                    for ci, block in iter_blocks(path, settings.chunk_bytes, threads=settings.workers):
                        name = _chunk_name(fi, ci)
                        if name not in done:
                            yield name, fi, {"data": block, "first_line": line}
                        line += block.count(b"\n")
                except (EOFError, OSError, RuntimeError, ValueError) as exc:
                    raise DumpParseError(path, line, f"compressed stream ended early or is corrupt after line {line:,} "
                                         f"({exc or type(exc).__name__}); nothing was published") from None
            else:
                size = path.stat().st_size
                for ci, start in enumerate(range(0, max(size, 1), settings.chunk_bytes)):
                    name = _chunk_name(fi, ci)
                    if name not in done:
                        yield name, fi, {"path": str(path), "start": start, "end": min(size, start + settings.chunk_bytes)}

    errors: list[tuple[str, int, dict[str, Any]]] = []  # strict mode: malformed lines found by the workers

    def finished(name: str, fi: int, meta: dict[str, Any]) -> None:
        if "error" in meta:
            errors.append((name, fi, meta))
            return
        summary.add(name, fi, meta)
        progress.add(meta)

    def raise_first_error() -> None:
        name, fi, meta = min(errors, key=lambda e: (e[0], e[2]["line"]))  # the earliest in the dump
        path = paths[fi]
        if meta["offset"] is not None:
            line = _count_lines_before(str(path), meta["offset"]) + meta["line"]
        else:
            line = meta["first_line"] + meta["line"]
        raise DumpParseError(path, line, meta["error"])

    workers = max(1, settings.workers)
    if workers == 1:
        for name, fi, job in jobs():
            finished(name, fi, run_chunk({**job, "options": options, "out": str(chunks_dir / name)}))
            if errors:
                break
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            pending: dict[Future, tuple[str, int]] = {}
            try:
                for name, fi, job in jobs():
                    while len(pending) >= 2 * workers:
                        _drain(pending, finished, FIRST_COMPLETED)
                    if errors:  # stop handing out work; chunks already running may hold an earlier error
                        break
                    pending[pool.submit(run_chunk, {**job, "options": options, "out": str(chunks_dir / name)})] = (name, fi)
                while pending:
                    _drain(pending, finished, FIRST_COMPLETED)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    if errors:
        raise_first_error()
    parse_s = time.perf_counter() - started
    log.info("parsed %s entities from %d chunks in %.1fs; merging", f"{progress.entities:,}", progress.chunks, parse_s)
    counts = _merge(paths, summary, chunks_dir, kg_dir, quarantine_dir or kg_dir.parent / "quarantine")
    counts["parse_seconds"] = round(parse_s, 3)
    counts["merge_seconds"] = round(time.perf_counter() - started - parse_s, 3)
    counts["workers"] = workers
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # the .work folder, when nothing else uses it
    return counts


def _drain(pending: dict[Future, tuple[str, int]], finished, how) -> None:
    done, _ = wait(list(pending), return_when=how)
    for fut in done:
        name, fi = pending.pop(fut)
        finished(name, fi, fut.result())


class _Summary:
    """What the merge needs from the chunks' metadata, kept small whatever the number of chunks:
    counts summed per file, (lines, malformed) per chunk, and the relations with their labels."""

    def __init__(self, n_files: int) -> None:
        self.counts = [Counter() for _ in range(n_files)]
        self.chunks: list[dict[str, tuple[int, int]]] = [{} for _ in range(n_files)]
        self.relations: dict[str, tuple[str, str | None]] = {}  # id → (chunk that named it, label)

    def add(self, name: str, fi: int, meta: dict[str, Any]) -> None:
        self.counts[fi].update(meta["counts"])
        self.chunks[fi][name] = (meta["lines"], meta["counts"].get("malformed", 0))
        for pid, label in meta["relations"].items():
            known = self.relations.get(pid)
            # a label from the property's own line wins; among several, the earliest chunk's (deterministic)
            if known is None or (label is not None and (known[1] is None or name < known[0])):
                self.relations[pid] = (name, label)

    def order(self, fi: int) -> list[str]:
        return sorted(self.chunks[fi])


class _Progress:
    def __init__(self, every_s: float):
        self.every_s = every_s
        self.entities = self.bytes = self.chunks = 0
        self.start = self.last = time.perf_counter()
        self.resumed = 0

    def add(self, meta: dict[str, Any], resumed: bool = False) -> None:
        self.entities += meta["counts"].get("entities", 0)
        self.chunks += 1
        self.resumed += resumed
        now = time.perf_counter()
        if not resumed and now - self.last >= self.every_s:
            self.last = now
            rate = self.entities / max(now - self.start, 1e-9)
            log.info("wikidata: %d chunks (%d resumed), %s entities, %s entities/s", self.chunks, self.resumed,
                     f"{self.entities:,}", f"{rate:,.0f}")


# -- phase 2: merge -----------------------------------------------------------------------------
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


def _read_ipc(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def _first_occurrences(ns: np.ndarray, num: np.ndarray, ids: pa.Array) -> np.ndarray:
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


class _PartWriter:
    """Parquet parts of at most ``rows_per_part`` rows: ``<dir>/part-00000.parquet``, ..."""

    def __init__(self, directory: Path, table_schema: pa.Schema, rows_per_part: int = TRIPLES_PER_PART):
        self.dir, self.schema, self.rows_per_part = directory, table_schema, rows_per_part
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer: pq.ParquetWriter | None = None
        self.part = self.rows_in_part = self.rows = 0

    def write(self, table: pa.Table) -> None:
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


def _merge(paths: list[Path], summary: _Summary, chunks_dir: Path, kg_dir: Path, quarantine_dir: Path) -> dict[str, Any]:
    order = [n for fi in range(len(paths)) for n in summary.order(fi)]
    dropped: Counter = Counter()
    relations = {pid: label for pid, (_, label) in summary.relations.items()}
    known = IdSet()
    dup_rows: dict[str, np.ndarray] = {}
    n_entities = n_aliases = 0
    with staged_dir(kg_dir) as tmp:
        ent_writer = pq.ParquetWriter(tmp / "entities.parquet", schema.ENTITIES)
        for n in order:  # pass 1: entities, indices in dump order, repeated ids dropped
            t = _read_ipc(chunks_dir / n / "entities.arrow")
            if not t.num_rows:
                continue
            ids = t["entity_id"].combine_chunks()
            ns, num = split_ids(ids)
            keep = _first_occurrences(ns, num, ids) & ~known.contains(ns, num, ids)
            if not keep.all():
                dup_rows[n] = np.flatnonzero(~keep)
                dropped["entity_duplicate"] += int((~keep).sum())
                t = t.filter(pa.array(keep))
                ns, num, ids = ns[keep], num[keep], ids.filter(pa.array(keep))
            known.add(ns, num, ids)
            index = pa.array(np.arange(n_entities + 1, n_entities + 1 + t.num_rows, dtype=np.int32))
            ent_writer.write_table(pa.table({
                "entity_id": t["entity_id"], "index": index, "label": t["label"], "description": t["description"],
                "types": t["types"], "source": pa.array(["wikidata"] * t.num_rows, pa.string()), "prior": t["prior"],
            }, schema=schema.ENTITIES))
            n_entities += t.num_rows
        ent_writer.close()
        if not n_entities:
            raise InputError(f"{', '.join(map(str, paths))}: no entities were read (is this a Wikidata JSON dump?)")

        alias_writer = pq.ParquetWriter(tmp / "aliases.parquet", schema.ALIASES)
        triples = _PartWriter(tmp / "triples", schema.TRIPLES)
        literals = _PartWriter(tmp / "literals", schema.LITERALS)
        qualifiers = _PartWriter(tmp / "qualifiers", schema.QUALIFIERS)
        for n in order:  # pass 2: everything keyed by an entity row of its chunk
            drop = dup_rows.get(n)

            def rows_kept(t: pa.Table) -> pa.Table:
                if drop is None or not t.num_rows:
                    return t
                return t.filter(pa.array(~np.isin(t["row"].to_numpy(), drop)))

            ids = _read_ipc(chunks_dir / n / "entities.arrow")["entity_id"].combine_chunks()  # row → id

            def with_ids(t: pa.Table, column: str) -> pa.Table:
                return t.append_column(column, pc.take(ids, t["row"]))

            a = rows_kept(_read_ipc(chunks_dir / n / "aliases.arrow"))
            if a.num_rows:
                a = with_ids(a, "entity_id").append_column("scope", pa.nulls(a.num_rows, pa.string()))
                alias_writer.write_table(a.select(schema.ALIASES.names).cast(schema.ALIASES))
                n_aliases += a.num_rows
            t = rows_kept(_read_ipc(chunks_dir / n / "triples.arrow"))
            if t.num_rows:
                tails = t["tail"].combine_chunks()
                ok = known.contains(*split_ids(tails), tails)
                dropped["triple_unknown_entity"] += int((~ok).sum())
                t = with_ids(t.filter(pa.array(ok)), "head")
                triples.write(pa.table({"head": t["head"], "relation": t["relation"], "tail": t["tail"],
                                        "source": pa.array(["wikidata"] * t.num_rows, pa.string())},
                                       schema=schema.TRIPLES))
            for name, writer, sch, id_col in (("literals", literals, schema.LITERALS, "entity_id"),
                                              ("qualifiers", qualifiers, schema.QUALIFIERS, "head")):
                x = rows_kept(_read_ipc(chunks_dir / n / f"{name}.arrow"))
                if x.num_rows:
                    writer.write(with_ids(x, id_col).select(sch.names).cast(sch))
        alias_writer.close()
        triples.close()
        for optional in (literals, qualifiers):  # optional tables exist only when asked for and non-empty
            optional.close()
            if optional.rows == 0:
                shutil.rmtree(optional.dir)
        rel_ids = sorted(relations)
        pq.write_table(pa.table({"relation_id": rel_ids,
                                 "index": pa.array(range(1, len(rel_ids) + 1), pa.int32()),
                                 "label": [relations[r] or r for r in rel_ids]}, schema=schema.RELATIONS),
                       tmp / "relations.parquet")

    counts: dict[str, Any] = {"entities": n_entities, "aliases": n_aliases, "relations": len(rel_ids),
                              "triples": triples.rows}
    if literals.rows:
        counts["literals"] = literals.rows
    if qualifiers.rows:
        counts["qualifiers"] = qualifiers.rows
    per_file: dict[str, Any] = {}
    for fi, path in enumerate(paths):
        c = Counter(summary.counts[fi])
        for k in [k for k in c if k.startswith("dropped_")]:
            dropped[k.removeprefix("dropped_")] += c.pop(k)
        file_counts: dict[str, Any] = dict(c)
        quarantined = _write_quarantine(path, summary.order(fi), summary.chunks[fi], chunks_dir, quarantine_dir)
        if quarantined:
            file_counts["quarantine_file"] = str(quarantined)
        per_file[str(path)] = file_counts
    counts.update({f"dropped_{k}": v for k, v in sorted(dropped.items())})
    for reason, v in sorted(dropped.items()):
        log.warning("dropped %d records: %s", v, reason.replace("_", " "))
    counts["per_file"] = per_file
    return counts


def _write_quarantine(path: Path, names: list[str], chunks: dict[str, tuple[int, int]], chunks_dir: Path,
                      quarantine_dir: Path) -> Path | None:
    """Malformed lines with their line numbers in the dump (chunk-relative numbers made absolute)."""
    if not any(chunks[n][1] for n in names):
        return None
    out, first = [], 0
    for n in names:
        if chunks[n][1]:
            bad = _read_ipc(chunks_dir / n / "bad.arrow")
            out.extend(b"%d\t%s\n" % (first + line, text) for line, text in
                       zip(bad["line"].to_pylist(), bad["text"].to_pylist()))
        first += chunks[n][0]
    target = quarantine_dir / f"{path.name}.tsv"
    atomic_write_bytes(target, b"".join(out))
    log.warning("%s: %d malformed lines quarantined in %s", path, len(out), target)
    return target
