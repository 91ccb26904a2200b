"""SHA-256 digests of a saved linker's files: recorded at save, verified at load."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipelines.artifacts import file_sha256
from pipelines.errors import ArtifactError

CHECKSUMS_FILE = "checksums.json"


def _digests(path: Path, names: list[str]) -> dict[str, str]:
    # hashlib releases the GIL on large blocks: the big files hash in parallel
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(zip(names, pool.map(lambda n: file_sha256(path / n), names)))


def write_checksums(path: Path, names: list[str]) -> None:
    """Record the digest of every file in ``names`` (relative to ``path``) in ``checksums.json``."""
    (path / CHECKSUMS_FILE).write_text(json.dumps({"sha256": _digests(path, sorted(set(names)))}, indent=1))


def verify_checksums(path: Path) -> dict[str, str]:
    """Check every file ``checksums.json`` lists; one :class:`ArtifactError` for the first file that
    is missing or whose digest differs from the recorded one."""
    try:
        recorded = json.loads((path / CHECKSUMS_FILE).read_text())["sha256"]
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no {CHECKSUMS_FILE} (saved by an older version): rebuild the linker") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path / CHECKSUMS_FILE}: unreadable ({exc}): rebuild the linker") from None
    missing = sorted(n for n in recorded if not (path / n).is_file())
    if missing:
        raise ArtifactError(f"{path / missing[0]}: missing (listed in {CHECKSUMS_FILE}): rebuild the linker")
    found = _digests(path, sorted(recorded))
    for name, expected in sorted(recorded.items()):
        if found[name] != expected:
            raise ArtifactError(f"{path / name}: SHA-256 {found[name]} does not match {expected} recorded when the "
                                "linker was saved (the file changed since): rebuild the linker")
    return found
