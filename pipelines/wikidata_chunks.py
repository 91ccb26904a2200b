"""The chunk checkpoint of Wikidata ingestion: one directory of Arrow IPC files per chunk.

``<work>/chunks/<file>-<chunk>/`` holds the records of one chunk (``entities``, ``aliases``,
``triples``, ``literals``, ``qualifiers``, the malformed lines in ``bad``) and ``meta.json``
(line and record counts, relations, timing). A chunk directory is published by renaming a
finished, fsynced temporary directory: it exists only when complete, so it is the checkpoint a
killed run resumes from. Workers with the work directory at hand write it themselves; workers
elsewhere (a Dask cluster) send the files' bytes back and the driver publishes them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.artifacts import fsync_dir, fsync_tree
from pipelines.storage import storage_errors
from pipelines.wikidata import Records

ARROW = {
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


def chunk_name(file_index: int, chunk_index: int) -> str:
    return f"{file_index:03d}-{chunk_index:07d}"


def file_index(name: str) -> int:
    return int(name[:3])


def chunk_tables(records: Records) -> dict[str, pa.Table]:
    """The Arrow tables of one chunk's records."""
    tables = {name: pa.table(records.columns(name), schema=ARROW[name]) for name in Records.TABLES}
    bad = {"line": [n for n, _ in records.bad], "text": [t for _, t in records.bad]}
    tables["bad"] = pa.table(bad, schema=ARROW["bad"])
    return tables


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def publish_chunk(final: Path, files: dict[str, pa.Table | bytes], meta: dict[str, Any]) -> None:
    """Write the chunk's files (tables, or their IPC bytes) and ``meta.json`` to a temporary
    directory, fsync it, and rename it to ``final``."""
    with storage_errors(final):
        _publish_chunk(final, files, meta)


def _publish_chunk(final: Path, files: dict[str, pa.Table | bytes], meta: dict[str, Any]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        for name, content in files.items():
            if isinstance(content, bytes):
                (tmp / f"{name}.arrow").write_bytes(content)
            else:
                with pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink, \
                        pa.ipc.new_file(sink, content.schema) as writer:
                    writer.write_table(content)
        (tmp / "meta.json").write_text(json.dumps(meta))
        fsync_tree(tmp)
        os.replace(tmp, final)  # the checkpoint: a chunk directory exists only when complete
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_meta(chunks_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((chunks_dir / name / "meta.json").read_text())


def read_table(chunks_dir: Path, name: str, table: str) -> pa.Table:
    """One table of a published chunk (memory-mapped)."""
    with pa.memory_map(str(chunks_dir / name / f"{table}.arrow")) as source:
        return pa.ipc.open_file(source).read_all()
