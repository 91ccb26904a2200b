"""Storage failures at the writers: a full disk (ENOSPC, EDQUOT) or an I/O error (EIO) while an
artifact is written becomes one :class:`~pipelines.errors.StorageError` naming the path and the free
space of its filesystem (``shutil.disk_usage``), instead of a traceback. The writers publish by
rename (``pipelines.artifacts``), so a failed write leaves nothing half-published.

pyarrow raises ``OSError`` without an errno and safetensors a ``SafetensorError`` carrying Rust's
``io::Error``; both are recognised by their message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipelines.errors import StorageError

_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)
# how libraries that do not raise OSError (pyarrow without errno, safetensors' Rust io::Error) say it
_STORAGE_TEXTS = {errno.ENOSPC: ("No space left on device", "StorageFull", "os error 28"),
                  errno.EDQUOT: ("Disk quota exceeded", "FilesystemQuotaExceeded", "os error 122"),
                  errno.EIO: ("Input/output error", "os error 5)")}


def storage_errno(exc: BaseException) -> int | None:
    """ENOSPC, EDQUOT or EIO when ``exc`` reports one of them, else None (also for a
    ``StorageError``: it is already the one line)."""
    if isinstance(exc, StorageError):
        return None
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return exc.errno
    text = str(exc)
    return next((code for code, needles in _STORAGE_TEXTS.items() if any(n in text for n in needles)), None)


def free_space(path: Path) -> str:
    """``1.5 GiB free of 40.0 GiB`` for the filesystem holding ``path`` (or its nearest parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return "free space unknown"
    return f"{_size(usage.free)} free of {_size(usage.total)}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def storage_error(exc: BaseException, path: Path) -> StorageError | None:
    """The one-line :class:`StorageError` for ``exc`` raised while writing ``path`` (the file the
    error names, when it names one), or None when ``exc`` is not a storage failure."""
    code = storage_errno(exc)
    if code is None:
        return None
    where = Path(exc.filename) if isinstance(exc, OSError) and exc.filename else Path(path)
    return StorageError(f"{where}: {os.strerror(code)} while writing ({free_space(where)}); "
                        f"nothing was published: free some space (or fix the device) and rerun")


@contextlib.contextmanager
def storage_errors(path: Path) -> Iterator[None]:
    """Turn a full disk or an I/O error raised in the block into a :class:`StorageError` for ``path``."""
    try:
        yield
    except Exception as exc:
        err = storage_error(exc, path)
        if err is None:
            raise
        raise err from None


