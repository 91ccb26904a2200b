"""Dump sources given as URLs: checked at validation time, fetched once into the KG's folder.

Any fsspec URL works (``https://``, ``s3://`` with s3fs installed, ``file://``); the download lands
in ``<root>/<name>/downloads/<file name>`` through a temporary name, and a later run reuses it when
the remote size is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from pipelines.errors import ConfigError

CHUNK = 1 << 22


def is_url(source: str) -> bool:
    return "://" in source


def url_filename(url: str) -> str:
    name = Path(urlparse(url).path).name
    if not name:
        raise ConfigError(f"[sources] {url}: the URL has no file name to store the dump under")
    return name


def check_url(url: str) -> None:
    """Fail now, with the URL, when no installed fsspec backend serves its scheme."""
    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"[sources] {url}: cannot read {protocol}:// URLs ({exc})") from None
    url_filename(url)


def fetch(url: str, dest: Path) -> Path:
    """Copy ``url`` to ``dest`` (temporary file, then rename); skip when ``dest`` has the remote size."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    size = fs.info(path).get("size")
    if dest.exists() and size is not None and dest.stat().st_size == size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, fs.open(path, "rb") as src:
            while block := src.read(CHUNK):
                out.write(block)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest
