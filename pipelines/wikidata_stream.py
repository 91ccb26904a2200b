"""Wikidata dumps at dump scale: planning and the parallel parse, memory bounded, resumable.

Phase 1 (parallel). The dump is cut into chunks of about ``chunk_bytes`` on line boundaries:
a plain file by byte ranges that each worker reads itself; a ``.gz``/``.bz2`` stream by
decompressing it once in the main process (``rapidgzip``/``indexed_bzip2`` decompress in
parallel when installed) and handing out blocks. Each chunk is one task: it is parsed by
:func:`pipelines.wikidata.extract_lines` and its records become a checkpoint directory
(:mod:`pipelines.wikidata_chunks`). A killed run started again with the same inputs and options
skips the chunks already there. The tasks run inline (one worker), in a local process pool, or on
any executor given — a Dask cluster through its ``distributed.Client`` — whose workers parse the
chunk and send its files back for the driver to publish.

Phase 2 (one step, on the driver): :func:`pipelines.wikidata_merge.merge_chunks`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from pipelines.artifacts import atomic_write_json
from pipelines.errors import DumpParseError, InputError
from pipelines.readers import (check_readable, compression, count_lines_before, iter_blocks, line_range,
                               lines_before_damage)
from pipelines.wikidata import MalformedLine, Records, WikidataOptions, extract_lines, gc_paused
from pipelines.wikidata_chunks import chunk_name, chunk_tables, file_index, ipc_bytes, publish_chunk, read_meta
from pipelines.wikidata_merge import ChunkSummary, merge_chunks

log = logging.getLogger(__name__)

PLAN_VERSION = 1
DEFAULT_CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class StreamSettings:
    workers: int = 1
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    progress_every_s: float = 10.0


# -- one chunk: the task ----------------------------------------------------------------------------
def _where() -> str:
    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker

        return f"Dask worker {get_worker().address}"
    return f"host {socket.gethostname()} (pid {os.getpid()})"


def _open_range(job: dict[str, Any]):
    """A read-only memory map of the plain dump a byte-range job reads, checked to be the planned file."""
    try:
        with open(job["path"], "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else b""
    except OSError as exc:
        raise InputError(f"{job['path']}: cannot be read on {_where()} ({exc.strerror}): every worker must see "
                         "the dump at the same path (shared storage), or give a .gz/.bz2 dump, whose blocks "
                         "are sent to the workers") from None
    if size != job["size"]:
        raise InputError(f"{job['path']}: {size:,} bytes on {_where()}, {job['size']:,} where the ingest was "
                         "planned: not the same file (every worker must see the same dump at that path)")
    return mm


def parse_chunk(job: dict[str, Any]) -> tuple[Records | None, dict[str, Any]]:
    """(records, metadata) of one chunk; (None, ``{"error": ...}``) for a malformed line in strict
    mode (returned, not raised, so that its position survives the hop from a worker process)."""
    started = time.perf_counter()
    options: WikidataOptions = job["options"]
    if "data" in job:
        offset, nbytes = None, len(job["data"])
        try:
            records = extract_lines(job["data"], options)
        except MalformedLine as exc:
            return None, {"error": exc.reason, "line": exc.line, "offset": None, "first_line": job["first_line"]}
    else:  # a byte range of a plain file, parsed in place through a read-only memory map (no copies)
        mm = _open_range(job)
        try:
            offset, stop = line_range(mm, job["start"], job["end"])
            nbytes = stop - offset
            try:
                records = extract_lines(mm, options, offset, stop)
            except MalformedLine as exc:
                return None, {"error": exc.reason, "line": exc.line, "offset": offset, "first_line": None}
        finally:
            if isinstance(mm, mmap.mmap):
                with contextlib.suppress(BufferError):  # a view still alive in a traceback: GC closes it
                    mm.close()
    meta = {"lines": records.lines, "counts": dict(records.counts), "relations": records.relations,
            "bytes": nbytes, "seconds": round(time.perf_counter() - started, 3)}
    return records, meta


def run_chunk(job: dict[str, Any]) -> dict[str, Any]:
    """Parse one chunk and publish its checkpoint under ``job['out']``; return its metadata.
    Runs inline or in a local worker process (which sees the driver's work directory)."""
    with gc_paused():
        records, meta = parse_chunk(job)
        if records is not None:
            publish_chunk(Path(job["out"]), chunk_tables(records), meta)
            del records  # freed while the collector is paused
    return meta


def run_chunk_remote(job: dict[str, Any]) -> dict[str, Any]:
    """Parse one chunk on a worker that may be another machine: its files come back as bytes
    (``meta["files"]``) for the driver to publish."""
    with gc_paused():
        records, meta = parse_chunk(job)
        if records is not None:
            meta["files"] = {name: ipc_bytes(t) for name, t in chunk_tables(records).items()}
            del records
    return meta


# -- planning, checkpoints ----------------------------------------------------------------------
def _options_key(options: WikidataOptions) -> dict[str, Any]:
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in asdict(options).items()}


def make_plan(paths: list[Path], options: WikidataOptions, settings: StreamSettings) -> dict[str, Any]:
    """What a checkpoint is valid for: the inputs (path, size, mtime), the options and the chunking."""
    stats = [p.stat() for p in paths]
    plan = {"version": PLAN_VERSION, "chunk_bytes": settings.chunk_bytes, "options": _options_key(options),
            "sources": [{"path": str(p.resolve()), "size": s.st_size, "mtime_ns": s.st_mtime_ns}
                        for p, s in zip(paths, stats)]}
    return json.loads(json.dumps(plan))  # as it reads back from plan.json


def prepare_work(work: Path, plan: dict[str, Any]) -> set[str]:
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


def iter_jobs(paths: list[Path], settings: StreamSettings, done: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(chunk name, job) of every chunk not done yet, in dump order (without options and output)."""
    for fi, path in enumerate(paths):
        if compression(path) is not None:
            yield from _compressed_jobs(fi, path, settings, done)
            continue
        size = path.stat().st_size
        for ci, start in enumerate(range(0, max(size, 1), settings.chunk_bytes)):
            name = chunk_name(fi, ci)
            if name not in done:
                yield name, {"path": str(path.absolute()), "size": size, "start": start,
                             "end": min(size, start + settings.chunk_bytes)}


def _compressed_jobs(fi: int, path: Path, settings: StreamSettings, done: set[str]) -> Iterator[tuple[str, dict]]:
    line = 0
    try:
        for ci, block in iter_blocks(path, settings.chunk_bytes, threads=settings.workers):
            name = chunk_name(fi, ci)
            if name not in done:
                yield name, {"data": block, "first_line": line}
            line += block.count(b"\n")
    except (EOFError, OSError, RuntimeError, ValueError) as exc:
        line = lines_before_damage(path)  # the whole lines of the block cut short count too
        raise DumpParseError(path, line + 1, f"compressed stream ended early or is corrupt after line {line:,} "
                             f"({exc or type(exc).__name__}); nothing was published") from None


class _Progress:
    """Chunk metadata as it comes in: the merge's summary, strict-mode errors, a periodic log line."""

    def __init__(self, paths: list[Path], every_s: float):
        self.paths, self.every_s = paths, every_s
        self.summary = ChunkSummary(len(paths))
        self.errors: list[tuple[str, dict[str, Any]]] = []
        self.entities = self.chunks = self.resumed = 0
        self.start = self.last = time.perf_counter()

    def add(self, name: str, meta: dict[str, Any], resumed: bool = False) -> None:
        if "error" in meta:
            self.errors.append((name, meta))
            return
        self.summary.add(name, file_index(name), meta)
        self.entities += meta["counts"].get("entities", 0)
        self.chunks += 1
        self.resumed += resumed
        now = time.perf_counter()
        if not resumed and now - self.last >= self.every_s:
            self.last = now
            rate = self.entities / max(now - self.start, 1e-9)
            log.info("wikidata: %d chunks (%d resumed), %s entities, %s entities/s", self.chunks, self.resumed,
                     f"{self.entities:,}", f"{rate:,.0f}")

    def raise_first_error(self) -> None:
        if not self.errors:
            return
        name, meta = min(self.errors, key=lambda e: (e[0], e[1]["line"]))  # the earliest in the dump
        path = self.paths[file_index(name)]
        if meta["offset"] is not None:
            line = count_lines_before(str(path), meta["offset"]) + meta["line"]
        else:
            line = meta["first_line"] + meta["line"]
        raise DumpParseError(path, line, meta["error"])


# -- running the chunk tasks ------------------------------------------------------------------------
def _run_inline(jobs: Iterator[tuple[str, dict]], progress: _Progress) -> None:
    for name, job in jobs:
        progress.add(name, run_chunk(job))
        if progress.errors:
            break


def _run_pool(pool: Executor, slots: int, task: Callable[[dict], dict], jobs: Iterator[tuple[str, dict]],
              progress: _Progress, finished: Callable[[str, dict], dict]) -> None:
    """Submit ``task(job)`` for each job with at most ``2 * slots`` in flight (bounded memory)."""
    pending: dict[Future, str] = {}

    def drain() -> None:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for fut in done:
            name = pending.pop(fut)
            progress.add(name, finished(name, fut.result()))

    try:
        for name, job in jobs:
            while len(pending) >= 2 * slots:
                drain()
            if progress.errors:  # stop handing out work; chunks already running may hold an earlier error
                break
            pending[pool.submit(task, job)] = name
        while pending:
            drain()
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise


# -- a cluster: any Executor, or a distributed.Client ---------------------------------------------
_SHARED_HINT = ("every worker must see the dump at the same path (shared storage mounted alike on every "
                "machine), or give a .gz/.bz2 dump, whose blocks the driver sends to the workers")


def dask_client(address: str, timeout: float = 30):
    """A ``distributed.Client`` connected to the scheduler at ``address`` (a context manager), or
    an :class:`InputError` saying what is missing or unreachable."""
    try:
        from distributed import Client
    except ImportError:
        raise InputError("a Dask cluster needs the distributed package: pip install 'kalora-kg[dask]'") from None
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {address} ({exc})") from None


def _probe(sources: list[tuple[str, int]]) -> list[str]:
    """Run on each worker: what is wrong with the plain dumps it would read (nothing: [])."""
    problems = []
    for path, size in sources:
        try:
            actual = os.stat(path).st_size
        except OSError as exc:
            problems.append(f"{path}: cannot be read ({exc.strerror})")
            continue
        if actual != size:
            problems.append(f"{path}: {actual:,} bytes, {size:,} where the ingest was planned: not the same file")
    return problems


def _on_cluster(executor: Any, paths: list[Path], workers: int) -> tuple[Executor, int]:
    """(executor, task slots) for a ``distributed.Client`` (each worker checked to see the plain
    dumps first: one clear error instead of a failure inside a worker) or for an ``Executor``
    (``workers`` slots)."""
    if not (hasattr(executor, "get_executor") and hasattr(executor, "nthreads")):
        return executor, max(1, workers)
    nthreads = executor.nthreads()
    if not nthreads:
        raise InputError(f"the Dask cluster at {executor.scheduler.address} has no workers")
    plain = [(str(p.absolute()), p.stat().st_size) for p in paths if compression(p) is None]
    if plain:
        for worker, problems in sorted(executor.run(_probe, plain).items()):
            if problems:
                raise InputError(f"{problems[0]} on Dask worker {worker}: {_SHARED_HINT}")
    log.info("wikidata: chunks go to the Dask cluster at %s (%d workers, %d threads)",
             executor.scheduler.address, len(nthreads), sum(nthreads.values()))
    return executor.get_executor(pure=False), sum(nthreads.values())


def _parse_all(jobs: Iterator[tuple[str, dict]], progress: _Progress, settings: StreamSettings,
               executor: Any, paths: list[Path], chunks_dir: Path) -> int:
    """Run every chunk task; return the number of parallel slots used."""
    if executor is not None:
        pool, slots = _on_cluster(executor, paths, settings.workers)

        def publish(name: str, meta: dict[str, Any]) -> dict[str, Any]:
            files = meta.pop("files", None)
            if files is not None:
                publish_chunk(chunks_dir / name, files, meta)
            return meta

        _run_pool(pool, slots, run_chunk_remote, jobs, progress, publish)
        return slots
    workers = max(1, settings.workers)
    if workers == 1:
        _run_inline(jobs, progress)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            _run_pool(pool, workers, run_chunk, jobs, progress, lambda name, meta: meta)
    return workers


# -- the entry point ----------------------------------------------------------------------------
def ingest_wikidata(paths: list[Path], kg_dir: Path, options: WikidataOptions = WikidataOptions(),
                    settings: StreamSettings = StreamSettings(), quarantine_dir: Path | None = None,
                    work_dir: Path | None = None, executor: Any = None) -> dict[str, Any]:
    """Ingest Wikidata dumps into ``kg_dir`` (published atomically); return counts.

    ``work_dir`` holds the checkpoints (default ``<kg_dir>/../.work/ingest``) and is removed after a
    successful publish. ``executor`` (a ``distributed.Client``, or any ``concurrent.futures``
    executor) runs the chunk tasks instead of ``settings.workers`` local processes; the merge
    stays here. The tables do not depend on how the chunks were run.
    """
    paths = [check_readable(p) for p in paths]
    work = work_dir or kg_dir.parent / ".work" / "ingest"
    done = prepare_work(work, make_plan(paths, options, settings))
    chunks_dir = work / "chunks"
    progress = _Progress(paths, settings.progress_every_s)
    for name in sorted(done):
        progress.add(name, read_meta(chunks_dir, name), resumed=True)
    started = time.perf_counter()
    jobs = ((name, {**job, "options": options, "out": str(chunks_dir / name)})
            for name, job in iter_jobs(paths, settings, done))
    workers = _parse_all(jobs, progress, settings, executor, paths, chunks_dir)
    progress.raise_first_error()
    parse_s = time.perf_counter() - started
    log.info("parsed %s entities from %d chunks in %.1fs; merging", f"{progress.entities:,}", progress.chunks, parse_s)
    counts = merge_chunks(paths, progress.summary, chunks_dir, kg_dir, quarantine_dir or kg_dir.parent / "quarantine")
    counts["parse_seconds"] = round(parse_s, 3)
    counts["merge_seconds"] = round(time.perf_counter() - started - parse_s, 3)
    counts["workers"] = workers
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # the .work folder, when nothing else uses it
    return counts
