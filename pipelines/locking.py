"""One writer per KG: an advisory lock on ``<root>/<name>`` held by every stage that writes.

The lock is ``filelock.UnixFileLock`` (``fcntl.flock``) on ``<root>/<name>/.writer.lock``. The
kernel drops a ``flock`` when its holder dies, however it dies (SIGKILL included), so a stale lock
of a dead process is taken over by the next writer without any clean-up or guessing from pids.
``filelock`` does the locking, the polling of ``wait`` and the counting of nested holds; what it
does not do is say who holds a native lock, so the ``on_acquired`` callback writes a small JSON
holder record (pid, host, start time, command) into the lock file itself, through the descriptor
that holds the lock. A second writer reads that record and fails with one line naming the holder
(:class:`~pipelines.errors.KGLockedError`), or waits for it (``wait=True``).

The lock belongs to the process that runs the build, not to one thread: one flow run acquires it
once and its stages, tasks and subflows (Prefect's thread pool, the CLI, the library functions they
call) acquire it again without blocking (a shared, non-thread-local hold count). Worker processes of
the same run (Dask chunk parsers) never take it: they only write under ``.work/``, and only the
holder publishes. Readers (``kalora link``, ``candidates``, a loaded pipeline) never touch the lock.

``flock`` is reliable on local filesystems; on NFS it depends on the server. A shared artifact root
across machines needs one scheduler per KG (one deployment with a concurrency limit of 1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import Timeout, UnixFileLock

from pipelines.artifacts import ArtifactLayout
from pipelines.errors import InputError, KGLockedError

log = logging.getLogger(__name__)

LOCK_NAME = ".writer.lock"
# One attempt (timeout=0) of a thread can fail while another thread of this process is half-way
# through acquiring or releasing the same shared hold; the guard keeps those steps apart.
_GUARD = threading.Lock()


def lock_path(layout: ArtifactLayout) -> Path:
    return layout.base / LOCK_NAME


def holder_record() -> dict[str, Any]:
    """Who this process is, as a second writer will be told."""
    command = " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command[:200]}


def _write_holder(fd: int) -> None:
    """``on_acquired``: replace the lock file's content with this process's holder record. The
    record is written through the locked descriptor, so it always describes the live holder."""
    data = (json.dumps(holder_record(), sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def read_holder(layout: ArtifactLayout, attempts: int = 20) -> dict[str, Any] | None:
    """The holder record in the lock file, or None when there is none (never locked, or a holder
    caught between truncating and writing it: retried for a short while)."""
    path = lock_path(layout)
    for _ in range(attempts):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
            record = json.loads(text)
            if isinstance(record, dict) and "pid" in record:
                return record
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return None


def describe_holder(record: dict[str, Any] | None) -> str:
    if not record:
        return "another process (no holder record)"
    command = f" ({record['command']})" if record.get("command") else ""
    return f"pid {record.get('pid')} on {record.get('host', '?')} since {record.get('started_at', '?')}{command}"


def _lock(layout: ArtifactLayout) -> UnixFileLock:
    try:
        layout.base.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise InputError(f"{layout.base}: cannot create the KG folder ({getattr(exc, 'strerror', None) or exc})") from None
    # one instance per path in this process (is_singleton) with a hold count shared by its threads
    # (thread_local=False): the tasks of a run re-enter the run's hold instead of deadlocking on it
    return UnixFileLock(lock_path(layout), thread_local=False, is_singleton=True, preserve_lock_file=True,
                        on_acquired=_write_holder)


def held_here(layout: ArtifactLayout) -> bool:
    """Whether this process holds the writer lock of ``layout``."""
    return lock_path(layout).exists() and _lock(layout).is_locked


@contextlib.contextmanager
def kg_write_lock(layout: ArtifactLayout, wait: bool = False, create: bool = True) -> Iterator[None]:
    """Hold the writer lock of ``<root>/<name>`` for the block (re-entrant within this process).

    Held elsewhere: raise :class:`KGLockedError` naming the holder, or with ``wait`` block until it
    is released (a dead holder's lock is released by the kernel). ``create=False``: a KG folder that
    does not exist is not created for the lock (a stage that needs upstream artifacts fails with
    its own message, without leaving an empty folder behind)."""
    if not create and not layout.base.is_dir():
        yield
        return
    lock = _lock(layout)
    try:
        with _GUARD:
            lock.acquire(timeout=0)
    except Timeout:
        holder = describe_holder(read_holder(layout))
        if not wait:
            raise KGLockedError(f"{layout.base} is being written by {holder}: wait for it to finish, "
                                f"or pass --wait (flow parameter wait) to start when it does") from None
        log.info("%s is being written by %s: waiting for it to finish", layout.base, holder)
        lock.acquire(timeout=-1)
    try:
        yield
    finally:
        with _GUARD:
            lock.release()
