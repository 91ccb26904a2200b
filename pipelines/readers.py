"""Opening dumps: plain, gzip or bzip2, detected from the magic bytes, with clear errors."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
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
