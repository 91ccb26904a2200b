"""External sorting for builds larger than memory: rows go to disk as sorted Parquet runs of a
bounded size, and come back as one sorted stream (a k-way merge that holds one small batch per run).
"""

from __future__ import annotations

import heapq
import itertools
import shutil
import tempfile
from collections.abc import Collection, Iterable, Iterator
from operator import itemgetter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.storage import storage_errors

RUN_ROWS = 200_000    # rows held in memory before a run is sorted and written
MERGE_ROWS = 200_000  # rows held in memory by a merge, over all runs together
GROUP_ROWS = 4_096    # Parquet row group of a run: the unit a merge decodes at a time
FAN_IN = 16           # runs merged at once: every open run holds reader buffers, so more runs are
                      # first merged into longer ones (a classic multi-pass external sort)


class SortedRuns:
    """Append rows (tuples matching ``schema``) in any order; read them back sorted by their first
    ``key_columns`` fields, which must order any two rows without reaching a null (end the key
    with a unique sequence number)."""

    def __init__(self, directory: Path, schema: pa.Schema, key_columns: int, run_rows: int = RUN_ROWS):
        self.directory = Path(tempfile.mkdtemp(prefix="runs-", dir=directory))
        self.schema = schema
        self.key = itemgetter(*range(key_columns))
        self.sort_keys = [(name, "ascending") for name in schema.names[:key_columns]]
        self.run_rows = run_rows
        self.buffer: list[tuple] = []
        self.paths: list[Path] = []
        self.rows = 0
        self._names = itertools.count()

    def add(self, row: tuple) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= self.run_rows:
            self.flush()

    def extend(self, rows: Iterable[tuple]) -> None:
        for row in rows:
            self.add(row)

    def flush(self) -> None:
        if not self.buffer:
            return
        columns = list(zip(*self.buffer))
        table = pa.table([pa.array(c, f.type) for c, f in zip(columns, self.schema)], schema=self.schema)
        table = table.sort_by(self.sort_keys)  # byte order of UTF-8 = code point order = Python's str order
        path = self.directory / f"run-{next(self._names):06d}.parquet"
        with storage_errors(path):
            pq.write_table(table, path, compression="lz4", row_group_size=GROUP_ROWS)  # scratch, never published
        self.paths.append(path)
        self.rows += len(self.buffer)
        self.buffer = []

    def __len__(self) -> int:
        return self.rows + len(self.buffer)

    def sorted(self) -> Iterator[tuple]:
        """Every row added so far, in ``key`` order (the runs stay on disk until :meth:`close`)."""
        self.flush()
        while len(self.paths) > FAN_IN:
            group, self.paths = self.paths[:FAN_IN], self.paths[FAN_IN:]
            self.paths.append(self._merge_to_run(group))
        if len(self.paths) == 1:
            return read_rows(self.paths[0])
        return self._merged(self.paths)

    def _merged(self, paths: list[Path]) -> Iterator[tuple]:
        batch_rows = max(256, MERGE_ROWS // len(paths))
        return heapq.merge(*(read_rows(p, batch_rows) for p in paths), key=self.key)

    def _merge_to_run(self, paths: list[Path]) -> Path:
        out = self.directory / f"run-{next(self._names):06d}.parquet"
        with storage_errors(out), pq.ParquetWriter(out, self.schema, compression="lz4") as writer:
            for chunk in batched(self._merged(paths), GROUP_ROWS):
                columns = list(zip(*chunk))
                writer.write_table(pa.table([pa.array(c, f.type) for c, f in zip(columns, self.schema)],
                                            schema=self.schema))
        for p in paths:
            p.unlink()
        return out

    def contains_any(self, column: str, values: Collection[str]) -> bool:
        """Whether any row added so far has one of ``values`` in ``column`` (vectorised, run by run)."""
        self.flush()
        if not values:
            return False
        value_set = pa.array(list(values), self.schema.field(column).type)
        return any(pc.any(pc.is_in(pq.read_table(p, columns=[column])[column], value_set=value_set)).as_py()
                   for p in self.paths)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.paths = []


def read_rows(path: Path, batch_rows: int = GROUP_ROWS) -> Iterator[tuple]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        yield from zip(*(col.to_pylist() for col in batch.columns))


def batched(rows: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
