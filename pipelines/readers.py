"""Reading dumps: plain, gzip or bzip2 (detected from the magic bytes), cut into whole lines.

:func:`open_binary` decompresses; :func:`iter_blocks` cuts a stream into blocks of whole lines;
:func:`line_range` finds the whole lines of a byte range of a plain file (a chunk read in place);
:class:`DumpLines` walks the entity lines of a block of a ``latest-all.json``-shaped dump.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipelines.errors import InputError


def check_readable(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a dump file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    return path


def compression(path: str | Path) -> str | None:
    """``"gzip"``, ``"bzip2"`` or None, from the magic bytes."""
    with open(path, "rb") as fh:
        magic = fh.read(3)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"BZh":
        return "bzip2"
    return None


def open_binary(path: str | Path, threads: int | None = None) -> IO[bytes]:
    """A reader of the file's bytes, decompressed. With ``threads``, gzip/bzip2 go through
    rapidgzip / indexed_bzip2 (extra ``fast``) when installed, decompressing in parallel."""
    path = check_readable(path)
    kind = compression(path)
    if kind == "gzip":
        if threads is not None:
            with contextlib.suppress(ImportError):
                import rapidgzip

                return rapidgzip.open(str(path), parallelization=max(1, threads))
        return gzip.open(path, "rb")
    if kind == "bzip2":
        if threads is not None:
            with contextlib.suppress(ImportError):
                import indexed_bzip2

                return indexed_bzip2.open(str(path), parallelization=max(1, threads))
        return bz2.open(path, "rb")
    return open(path, "rb")


def open_text(path: str | Path) -> IO[str]:
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="strict", newline=None)


# -- blocks of whole lines ----------------------------------------------------------------------
def read_full(fh: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end of the stream; decompressors return short reads)."""
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
            buf = read_full(fh, chunk_bytes)
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


def line_range(data, start: int, end: int) -> tuple[int, int]:
    """[first, stop) covering the lines whose first byte lies in [start, end) of ``data``."""
    size = len(data)
    first = 0 if start == 0 else data.find(b"\n", start - 1) + 1 or size
    stop = size if end >= size else data.find(b"\n", end - 1) + 1 or size
    return first, max(first, stop)


def lines_before_damage(path: str | Path, block: int = 1 << 16) -> int:
    """The whole lines a damaged (truncated or corrupt) compressed file yields before its
    decompressor gives up: the line to report is the next one. Read again, on the error path only,
    so that the readers pay nothing for counting lines they do not number themselves."""
    n = 0
    try:
        with open_binary(path) as fh:
            read = getattr(fh, "read1", fh.read)  # one decompression step: a failing read loses no lines
            while data := read(block):
                n += data.count(b"\n")
    except (EOFError, OSError, ValueError):
        pass
    return n


def count_lines_before(path: str | Path, offset: int) -> int:
    """Newlines in the first ``offset`` bytes of a plain file."""
    n = 0
    with open(path, "rb") as fh:
        while offset > 0:
            block = fh.read(min(offset, 16 << 20))
            if not block:
                break
            n += block.count(b"\n")
            offset -= len(block)
    return n


class DumpLines:
    """The entity lines of ``data[begin:end]`` (bytes or an mmap) of a JSON-array dump with one
    entity per line: ``(lineno, line)``, 1-based within the block, each line a zero-copy
    ``memoryview`` without its surrounding blanks and trailing comma; the ``[``/``]`` and blank
    lines are skipped. After iteration ``count`` is the number of lines of the block, skipped ones
    included (what the next block's numbering starts after)."""

    def __init__(self, data, begin: int = 0, end: int | None = None):
        self.data, self.begin = data, begin
        self.end = len(data) if end is None else end
        self.count = 0

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        data, pos, size = self.data, self.begin, self.end
        find, view = data.find, memoryview(data)
        lineno = 0
        while pos < size:
            end = find(b"\n", pos, size)
            if end < 0:
                end = size
            lineno += 1
            start, stop, pos = pos, end, end + 1
            while stop > start and data[stop - 1] in b" \t\r":
                stop -= 1
            if stop > start and data[stop - 1] == 44:  # the "," after each entity
                stop -= 1
            while start < stop and data[start] in b" \t":
                start += 1
            if stop - start < 2 and data[start:stop] in (b"", b"[", b"]"):
                continue
            self.count = lineno
            yield lineno, view[start:stop]
        self.count = lineno
