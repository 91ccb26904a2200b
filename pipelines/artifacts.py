"""The artifact directory contract: paths, atomic publication and the build manifest.

Every stage writes into a temporary sibling directory or file and renames it into place when
complete, then records itself in ``<root>/<name>/manifest.json``. Nothing half-written is ever
visible under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipelines.errors import ArtifactError
from pipelines.storage import storage_error, storage_errors

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

# mkstemp/mkdtemp create 0600/0700 entries; published artifacts get the usual umask-based modes.
_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass(frozen=True)
class ArtifactLayout:
    """Where each artifact of one KG build lives: ``<root>/<name>/...``."""

    root: Path
    name: str

    @property
    def base(self) -> Path:
        return Path(self.root) / self.name

    @property
    def kg(self) -> Path:
        return self.base / "kg"

    @property
    def entities(self) -> Path:
        return self.kg / "entities.parquet"

    @property
    def aliases(self) -> Path:
        return self.kg / "aliases.parquet"

    @property
    def relations(self) -> Path:
        return self.kg / "relations.parquet"

    @property
    def triples(self) -> Path:
        return self.kg / "triples"

    @property
    def splits(self) -> Path:
        return self.kg / "splits"

    def embeddings(self, model: str) -> Path:
        return self.base / "embeddings" / model

    @property
    def index(self) -> Path:
        return self.base / "index"

    @property
    def linker(self) -> Path:
        return self.base / "linker"

    @property
    def shards(self) -> Path:
        return self.base / "shards"

    @property
    def adapters(self) -> Path:
        return self.base / "adapters"

    @property
    def manifest(self) -> Path:
        return self.base / MANIFEST

    def require(self, path: Path, stage: str) -> Path:
        """Return ``path`` or raise a clear error naming the stage that produces it."""
        if not path.exists():
            raise ArtifactError(
                f"{path} does not exist: run `kalora {stage} --name {self.name} --root {self.root}` first"
            )
        return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename."""
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (files created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush ``path`` to disk before it is published by a rename: the file itself, or every file
    and directory under it (``path`` included), so that a crash after the rename cannot leave a
    published name pointing at data still in the page cache."""
    path = Path(path)
    if not path.is_dir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        return
    for dirpath, _, filenames in os.walk(path, topdown=False):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def _owner() -> str:
    """``<pid>@<host>``: which process a staging directory belongs to."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def sweep_stale_staging(final: Path) -> list[Path]:
    """Delete what a killed process of this host left beside ``final``: its staging directory
    (``.<name>.<pid>@<host>-*.tmp``) or the previous output it had renamed aside
    (``.<name>.old-<pid>@<host>``). Entries of a live process, or of another host, are kept."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(?:old-)?(\d+)@(.+?)(?:-[a-z0-9_]+\.tmp)?")
    host, removed = socket.gethostname(), []
    for entry in final.parent.iterdir() if final.parent.is_dir() else ():
        m = pattern.fullmatch(entry.name)
        if m and m.group(2) == host and not _alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` only if the block succeeds (after
    sweeping what a killed earlier run left beside it). A full disk or an I/O error in the block
    (any writer: Parquet, safetensors, ``np.save``) removes the temporary directory and becomes one
    :class:`StorageError`; ``final`` is left as it was."""
    with storage_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_owner()}-", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = storage_error(exc, tmp) if isinstance(exc, Exception) else None
        if err is None:
            raise
        raise err from None
    os.chmod(tmp, 0o777 & ~_UMASK)
    old = final.with_name(f".{final.name}.old-{_owner()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def file_digest(path: Path, algorithm: str, chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes with a ``hashlib`` algorithm (``sha256``, ``blake2b``)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    return file_digest(path, "sha256", chunk)


def tree_sha256(path: Path, file_digest=file_sha256) -> str:
    """Content hash of a file, or of every file under a directory (names and bytes)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(path)).encode())
        h.update(file_digest(p).encode())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("kalora-kg", "pyarrow", "torch", "pykeen", "faiss-cpu", "spacy", "transformers", "peft", "prefect"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


@contextlib.contextmanager
def manifest_lock(layout: ArtifactLayout) -> Iterator[None]:
    """Serialise read-modify-write of the manifest between processes on one host (stages that run
    side by side on a Dask cluster). ``flock`` is advisory and unreliable on some network
    filesystems; a shared artifact root across machines needs one writer per KG."""
    import fcntl

    layout.base.mkdir(parents=True, exist_ok=True)
    with open(layout.base / ".manifest.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_manifest(layout: ArtifactLayout) -> dict[str, Any]:
    if not layout.manifest.exists():
        return {"schema_version": SCHEMA_VERSION, "name": layout.name, "stages": {}}
    try:
        return json.loads(layout.manifest.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{layout.manifest}: not UTF-8 text (byte {exc.start}): the manifest is corrupt; "
                            "restore it or rebuild the KG") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{layout.manifest}: not valid JSON ({exc})") from None


def record_stage(
    layout: ArtifactLayout,
    stage: str,
    *,
    inputs: dict[str, str] | None = None,
    parameters: dict[str, Any] | None = None,
    outputs: dict[str, str] | None = None,
    counts: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    wall_time_s: float | None = None,
) -> dict[str, Any]:
    """Record a completed stage in the build manifest (read-modify-atomic-write)."""
    entry = {
        "completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs or {},
        "parameters": parameters or {},
        "outputs": outputs or {},
        "counts": counts or {},
        "metrics": metrics or {},
        "wall_time_s": None if wall_time_s is None else round(wall_time_s, 3),
        "schema_version": SCHEMA_VERSION,
        "versions": library_versions(),
    }
    from pipelines.integrity import record_stage_files

    if (integrity := record_stage_files(layout, stage)) is not None:  # digests of what the stage published
        entry["integrity"] = integrity
    with manifest_lock(layout):
        manifest = read_manifest(layout)
        manifest.setdefault("stages", {})[stage] = entry
        manifest["schema_version"] = SCHEMA_VERSION
        manifest["name"] = layout.name
        atomic_write_json(layout.manifest, manifest)
    return entry


# -- caching: a stage is skipped when its manifest entry carries the same cache key -------------
def code_version(packages: list[str] | tuple[str, ...]) -> str:
    """The installed kalora-kg version, a SHA-256 over the source files of ``packages`` (every
    ``*.py`` of each top-level package) and the library versions of the manifest. Editing any
    module of a stage's packages, or upgrading torch/pykeen/spaCy/..., changes it."""
    import importlib.util

    h = hashlib.sha256()
    for name in sorted(packages):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ArtifactError(f"code_version: package {name!r} not found")
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for f in files:
            h.update(f"{name}:{f.relative_to(origin.parent)}".encode())
            h.update(f.read_bytes())
    versions = library_versions()
    h.update(json.dumps(versions, sort_keys=True).encode())
    return f"{versions.get('kalora-kg', '0+unknown')}+src.{h.hexdigest()[:16]}"


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def cached_digest(path: Path, algorithm: str = "sha256") -> str:
    """``file_sha256`` (or another hashlib ``algorithm``), remembered for this process while the
    file keeps its inode, size and mtime (several stages of one run read the same tables, and the
    integrity checks read what the cache keys hashed). Not its path: a file digested under its
    temporary name is not digested again once published by a rename."""
    st = path.stat()
    key = (algorithm, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path, algorithm)
    return _DIGESTS[key]


def input_digest(path: Path) -> str:
    """The same value as ``tree_sha256``, with per-file digests remembered (``cached_digest``)."""
    return tree_sha256(path, cached_digest)


def input_digests(paths: dict[str, Path | None]) -> dict[str, str | None]:
    """Content hash of each named input (file or directory tree); ``None`` for an absent input."""
    return {name: (input_digest(p) if p is not None and Path(p).exists() else None) for name, p in paths.items()}


def cache_key(inputs: dict[str, str | None], parameters: dict[str, Any], code: str) -> str:
    blob = json.dumps({"inputs": inputs, "parameters": parameters, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_entry(layout: ArtifactLayout, stage: str, key: str, outputs: list[Path]) -> dict[str, Any] | None:
    """The manifest entry of ``stage`` when it was recorded under ``key`` and every output still
    exists; ``None`` means the stage must run. The recorded digests of the outputs are verified
    first: a changed file is an :class:`ArtifactError`, not a silent skip."""
    entry = read_manifest(layout).get("stages", {}).get(stage)
    if not entry or entry.get("cache", {}).get("key") != key or not all(Path(p).exists() for p in outputs):
        return None
    from pipelines.integrity import verify_entry

    verify_entry(layout, stage, outputs)
    return entry


def stamp_cache(layout: ArtifactLayout, stage: str, key: str, detail: dict[str, Any]) -> None:
    """Attach the cache key to the entry the stage just recorded (only after it succeeded)."""
    with manifest_lock(layout):
        manifest = read_manifest(layout)
        entry = manifest.get("stages", {}).get(stage)
        if entry is None:
            raise ArtifactError(f"{layout.manifest}: stage {stage!r} finished without recording itself")
        entry["cache"] = {"key": key, **detail}
        atomic_write_json(layout.manifest, manifest)


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
