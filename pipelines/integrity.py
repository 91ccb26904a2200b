"""Integrity of published artifacts, end to end.

Every stage that publishes files records their digests in its manifest entry
(``"integrity": {"algorithm": "sha256", "files": {"kg/entities.parquet": "…"}}``, paths relative
to ``<root>/<name>``); which paths a stage owns is fixed here (:func:`stage_paths`), so
:func:`pipelines.artifacts.record_stage` records them whatever stage calls it. Every loader that
reads an artifact verifies the recorded digests of what it reads first (:func:`verify`), and so
does a cached stage before it is skipped; ``kalora verify`` checks a whole build
(:func:`check_build`).

Digests go through :func:`pipelines.artifacts.cached_digest` (remembered per process while a file
keeps its inode, size and mtime), so within one ``kalora run`` a file is hashed once: at record,
or for the cache key of the next stage, and never again for its verification. SHA-256 was chosen
over BLAKE2b by measurement (BENCHMARKS.md, "Reliability: integrity"): with the CPU's SHA
extensions it is the faster of the two, and it is what the cache keys already use.

A mismatch is one :class:`~pipelines.errors.ArtifactError` naming the file, the expected and the
found digest, and the stage to rerun.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.artifacts import ArtifactLayout, cached_digest, read_manifest
from pipelines.errors import ArtifactError

ALGORITHM = "sha256"
ALGORITHMS = ("sha256", "blake2b")
_PARALLEL_BYTES = 1 << 20  # files at least this large are hashed on a thread pool (hashlib drops the GIL)


# -- what each stage owns -----------------------------------------------------------------------------
def stage_paths(layout: ArtifactLayout, stage: str) -> tuple[list[Path], list[Path]]:
    """(paths the manifest stage ``stage`` publishes, paths below them it does not own). A stage
    that publishes no files (``eval:linker``) owns nothing."""
    if stage == "ingest":  # the whole kg/ directory is republished; splits and stats are embed's
        return [layout.kg], [layout.splits, layout.kg / "stats.json"]
    if stage == "splits":
        return [layout.splits, layout.kg / "stats.json"], []
    if stage.startswith("embed:"):
        return [layout.embeddings(stage.split(":", 1)[1])], []
    if stage in ("index", "linker", "shards"):
        return [getattr(layout, stage)], []
    if stage == "train:stage1":  # stage 1 also saves the tokenizer and base model the later stages reuse
        a = layout.adapters
        return [a / "stage1", a / "tokenizer", a / "base_model", a / "kalora.json"], []
    if stage.startswith("train:"):
        return [layout.adapters / stage.split(":", 1)[1]], []
    return [], []


def rerun_hint(layout: ArtifactLayout, stage: str) -> str:
    """What to run to rebuild what ``stage`` published."""
    step = {"splits": "ingest"}.get(stage, stage.split(":", 1)[0])
    return f"rerun: kalora run <hpo|build.yaml> --root {layout.root} --force {step} (build {layout.name!r})"


def _owned_files(layout: ArtifactLayout, stage: str) -> list[Path]:
    include, exclude = stage_paths(layout, stage)
    out = []
    for p in include:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        for f in files:
            rel = f.relative_to(layout.base)
            # hidden entries are work directories and temporary names, never published artifacts
            if any(part.startswith(".") for part in rel.parts) or any(f == x or x in f.parents for x in exclude):
                continue
            out.append(f)
    return out


# -- digests -----------------------------------------------------------------------------------------
def digest_files(paths: list[Path], algorithm: str = ALGORITHM) -> list[str]:
    """Digests of ``paths`` (in order), the large files on a small thread pool."""
    if algorithm not in ALGORITHMS:
        raise ArtifactError(f"digest algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    big = [p for p in paths if p.stat().st_size >= _PARALLEL_BYTES]
    workers = max(1, min(4, os.cpu_count() or 1, len(big)))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            dict(zip(big, pool.map(lambda p: cached_digest(p, algorithm), big)))  # fills the cache
    return [cached_digest(p, algorithm) for p in paths]


def record_files(base: Path, paths: list[Path], algorithm: str = ALGORITHM) -> dict[str, Any]:
    """``{"algorithm", "files": {path relative to base: digest}}`` for ``paths``."""
    return {"algorithm": algorithm,
            "files": {str(p.relative_to(base)): d for p, d in zip(paths, digest_files(paths, algorithm))}}


def record_stage_files(layout: ArtifactLayout, stage: str) -> dict[str, Any] | None:
    """The integrity record of what ``stage`` published (``None`` when it publishes no files)."""
    if not stage_paths(layout, stage)[0]:
        return None
    return record_files(layout.base, _owned_files(layout, stage))


# -- checks ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileCheck:
    stage: str
    path: Path
    algorithm: str
    expected: str
    found: str | None  # None: missing

    @property
    def status(self) -> str:
        return "missing" if self.found is None else "ok" if self.found == self.expected else "mismatch"

    def error(self, rerun: str, recorded: str | None = None) -> ArtifactError:
        """One line: the file, the expected and found digests, where they were recorded, what to rerun."""
        recorded = recorded or f"by the {self.stage} stage in the manifest"
        if self.found is None:
            return ArtifactError(f"{self.path}: missing (recorded {recorded}): {rerun}")
        return ArtifactError(f"{self.path}: {self.algorithm} {self.found} does not match {self.expected} recorded "
                             f"{recorded} (the file changed after it was written): {rerun}")


def check_record(base: Path, stage: str, record: dict[str, Any] | None,
                 under: Iterable[Path] | None = None) -> list[FileCheck]:
    """Check the files of an integrity ``record`` (those below one of ``under``, when given)."""
    if not record:
        return []
    algorithm, files = record.get("algorithm", ALGORITHM), record.get("files") or {}
    roots = None if under is None else [Path(u).resolve() for u in under]
    chosen = []
    for rel, expected in sorted(files.items()):
        path = base / rel
        if roots is None or any(r == path.resolve() or r in path.resolve().parents for r in roots):
            chosen.append((path, expected))
    present = [p for p, _ in chosen if p.is_file()]
    found = dict(zip(present, digest_files(present, algorithm)))
    return [FileCheck(stage, p, algorithm, e, found.get(p)) for p, e in chosen]


def _entries(layout: ArtifactLayout, manifest: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    return (manifest if manifest is not None else read_manifest(layout)).get("stages", {})


def check_build(layout: ArtifactLayout) -> dict[str, list[FileCheck] | None]:
    """Every recorded file of every stage that publishes files; ``None`` for such a stage whose
    entry records no digests (built before they were recorded)."""
    out: dict[str, list[FileCheck] | None] = {}
    for stage, entry in sorted(_entries(layout).items()):
        if stage_paths(layout, stage)[0] or entry.get("integrity"):
            out[stage] = check_record(layout.base, stage, entry.get("integrity")) if entry.get("integrity") else None
    return out


def build_report(layout: ArtifactLayout) -> tuple[list[str], list[str]]:
    """(a table: stage, files, ok, mismatch, missing; one line per problem) for ``kalora verify``."""
    rows, problems = [("stage", "files", "ok", "mismatch", "missing")], []
    for stage, checks in check_build(layout).items():
        if checks is None:
            rows.append((stage, "-", "-", "-", "-"))
            problems.append(f"{layout.base}: the {stage} stage recorded no digests (built by an older version): "
                            f"{rerun_hint(layout, stage)}")
            continue
        status = [c.status for c in checks]
        rows.append((stage, str(len(checks)), *(str(status.count(s)) for s in ("ok", "mismatch", "missing"))))
        problems += [str(c.error(rerun_hint(layout, stage))) for c in checks if c.status != "ok"]
    width = [max(len(r[i]) for r in rows) for i in range(5)]
    table = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, width))) for r in rows]
    return table, problems


def verify(layout: ArtifactLayout, paths: Iterable[Path], *, stages: Iterable[str] = ()) -> None:
    """Verify every recorded file below ``paths`` (files or directories), whichever stage recorded
    it, and every file recorded by ``stages``; raise one :class:`ArtifactError` for the first
    problem. Files no entry records (a build from before digests were recorded) pass unchecked."""
    paths, stages = list(paths), set(stages)
    for stage, entry in sorted(_entries(layout).items()):
        record = entry.get("integrity")
        checks = check_record(layout.base, stage, record, None if stage in stages else paths)
        for check in checks:
            if check.status != "ok":
                raise check.error(rerun_hint(layout, stage))


def verify_entry(layout: ArtifactLayout, stage: str, outputs: Iterable[Path]) -> None:
    """A stage about to be skipped as cached: its own files and everything recorded below its outputs."""
    verify(layout, outputs, stages=[stage])


@contextlib.contextmanager
def reading(path: Path, rerun: str) -> Iterator[None]:
    """Name ``path`` in one :class:`ArtifactError` when reading it fails on its content (corrupt
    Parquet, JSON, ``.npy``; not UTF-8): the check for files that no manifest entry records."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"{path}: unreadable ({type(exc).__name__}: {detail}): {rerun}") from None


# -- a directory that carries its own digests (the linker's spaCy component) ------------------------
def write_dir_checksums(directory: Path, names: list[str], filename: str) -> None:
    """Record the digest of every file in ``names`` (relative to ``directory``) in ``filename``
    there, as ``{algorithm: {name: digest}}``."""
    record = record_files(directory, [directory / n for n in sorted(set(names))])
    (directory / filename).write_text(json.dumps({record["algorithm"]: record["files"]}, indent=1))


def verify_dir_checksums(directory: Path, filename: str, what: str, rerun: str) -> dict[str, str]:
    """Check every file ``filename`` lists; one :class:`ArtifactError` for the first file missing
    or changed. Returns the digests found."""
    path = directory / filename
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        found = [a for a in ALGORITHMS if isinstance(data, dict) and a in data]
        if len(found) != 1:
            raise ValueError(f"expected one key of {', '.join(ALGORITHMS)}")
        record = {"algorithm": found[0], "files": data[found[0]]}
        if not isinstance(record["files"], dict):
            raise TypeError(f"{found[0]!r} is not a mapping")
    except FileNotFoundError:
        raise ArtifactError(f"{directory}: no {filename} (saved by an older version): {rerun}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: unreadable ({exc}): {rerun}") from None
    checks = check_record(directory, what, record)
    for check in checks:
        if check.status != "ok":
            raise check.error(rerun, f"in {path} when the {what} was saved")
    return {str(c.path.relative_to(directory)): c.found for c in checks}
