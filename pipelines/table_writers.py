"""Streaming Parquet writers of the canonical tables: rows go out in bounded batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.spill import batched
from pipelines.storage import storage_errors

TRIPLES_PER_PART = 1_000_000
WRITE_ROWS = 65_536  # rows per Parquet write call (row group) while streaming a table out


def columns(rows: list[tuple], names: list[str]) -> dict[str, list]:
    cols = list(zip(*rows)) if rows else [[] for _ in names]
    return dict(zip(names, map(list, cols)))


def entity_columns(rows: list[tuple[int, object]], names: list[str]) -> dict[str, list]:
    """``(index, Entity)`` pairs as the columns of ``entities.parquet``."""
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
        n += write_rows(out_dir / f"part-{part:05d}.parquet", schema.TRIPLES, columns, part_rows)
        part += 1
        if first is None:
            break
    return n
