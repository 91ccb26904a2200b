"""Digests of a saved linker's files: recorded at save, verified at load (``spacy.load`` included).

The component directory carries its own ``checksums.json`` because a saved pipeline is loaded
without the build manifest; the record and the check are :mod:`pipelines.integrity`'s, the same
ones the manifest uses for every other artifact.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.integrity import verify_dir_checksums, write_dir_checksums

CHECKSUMS_FILE = "checksums.json"


def _rerun(path: Path) -> str:
    build = path.parent.parent  # <root>/<name>/linker/<component>
    return f"rebuild the linker: kalora linker --name {build.name} --root {build.parent} (or kalora run ... --force linker)"


def write_checksums(path: Path, names: list[str]) -> None:
    """Record the digest of every file in ``names`` (relative to ``path``) in ``checksums.json``."""
    write_dir_checksums(path, names, CHECKSUMS_FILE)


def verify_checksums(path: Path) -> dict[str, str]:
    """Check every file ``checksums.json`` lists; one :class:`ArtifactError` for the first file that
    is missing or whose digest differs from the recorded one."""
    return verify_dir_checksums(path, CHECKSUMS_FILE, "linker", _rerun(Path(path)))
