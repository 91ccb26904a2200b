"""A full disk or an I/O error at a writer is one line naming the path and the free space, exit 2,
and nothing half-published; a damaged .gz names the line where it breaks. ENOSPC and EIO are
injected (monkeypatch): no tmpfs is available to fill for real."""

from __future__ import annotations

import errno
import gzip
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from pipelines import wikidata_chunks
from pipelines.artifacts import ArtifactLayout, atomic_write_bytes, staged_dir
from pipelines.errors import DumpParseError, StorageError
from pipelines.ingest import IngestOptions, ingest

FREE = r"\(\d+(\.\d)? (B|KiB|MiB|GiB) free of \d+(\.\d)? (B|KiB|MiB|GiB)\)"


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(base: Path) -> list[str]:
    """Temporary names a failed publish could leave behind."""
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.name.endswith(".tmp") or ".old-" in p.name)


def test_writer_errors_atomic_write_names_the_file_and_keeps_the_old(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    atomic_write_bytes(target, b"old")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(StorageError, match=rf"^{re.escape(str(target))}: No space left on device while writing {FREE}"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_writer_errors_eio_in_a_staged_directory(tmp_path):
    final = tmp_path / "index"
    with staged_dir(final) as tmp:
        (tmp / "a").write_text("published")
    with pytest.raises(StorageError, match=rf"Input/output error while writing {FREE}"):
        with staged_dir(final) as tmp:
            (tmp / "a").write_text("half")
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(tmp / "a"))
    assert (final / "a").read_text() == "published" and _leftovers(tmp_path) == []


def test_writer_errors_safetensors_style_message_in_a_staged_directory(tmp_path):
    """safetensors reports Rust's io::Error in its own exception type, without an errno."""
    class SafetensorError(Exception):
        pass

    with pytest.raises(StorageError, match=rf"No space left on device while writing {FREE}"):
        with staged_dir(tmp_path / "embeddings"):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')
    assert not (tmp_path / "embeddings").exists() and _leftovers(tmp_path) == []


def test_writer_errors_other_failures_pass_through(tmp_path):
    with pytest.raises(ValueError, match="a bug"):
        with staged_dir(tmp_path / "x"):
            raise ValueError("a bug")
    with pytest.raises(PermissionError):
        with staged_dir(tmp_path / "y"):
            raise PermissionError(errno.EACCES, "Permission denied")


def test_writer_errors_ingest_parquet_writer_full_disk_cli(tmp_path, tiny_sources, monkeypatch, capsys):
    """pyarrow's ENOSPC (an OSError without errno) in the table writer: exit 2, one line, no kg/."""
    real = pq.ParquetWriter.write_table

    def write_table(self, table, *args, **kwargs):
        if "triples" in str(getattr(self, "where", "")):
            raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
        return real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    rc = main(["ingest", *map(str, tiny_sources), "--name", "t", "--root", str(tmp_path)])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert rc == 2 and len(err) == 1, err
    assert re.search(rf"^kalora: error: \S+/triples/part-00000\.parquet: No space left on device while writing {FREE}; "
                     r"nothing was published", err[0]), err[0]
    layout = ArtifactLayout(tmp_path, "t")
    assert not layout.kg.exists() and _leftovers(layout.base) == []


def test_writer_errors_wikidata_chunk_checkpoint_full_disk_then_resume(tmp_path, data_dir, monkeypatch):
    dump = data_dir / "wikidata_sample_100_items.json.bz2"
    layout = ArtifactLayout(tmp_path, "wd")
    real, calls = wikidata_chunks.fsync_tree, {"n": 0}

    def fsync_tree(path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second chunk's checkpoint hits a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path)

    monkeypatch.setattr(wikidata_chunks, "fsync_tree", fsync_tree)
    options = IngestOptions(workers=1, chunk_mb=0.05)
    with pytest.raises(StorageError, match=r"\.work/ingest/chunks/\.000-0000001\.\w+\.tmp: No space left on device"):
        ingest([dump], "wikidata", layout, options)
    assert not layout.kg.exists()
    monkeypatch.setattr(wikidata_chunks, "fsync_tree", real)
    entry = ingest([dump], "wikidata", layout, options)  # resumes from the chunk that was complete
    assert entry["counts"]["entities"] == 100 == pq.read_table(layout.entities).num_rows


@pytest.mark.parametrize("name,fmt", [("t.tsv.gz", "triples"), ("wd.json.gz", "wikidata")])
def test_writer_errors_truncated_gz_names_the_real_line(tmp_path, data_dir, name, fmt):
    import bz2

    if fmt == "triples":
        text = b"".join(b"Q%d\tP31\tQ%d\n" % (i, i + 1) for i in range(4000))
    else:
        text = bz2.open(data_dir / "wikidata_sample_100_items.json.bz2").read()
    packed = gzip.compress(text)
    path = tmp_path / name
    path.write_bytes(packed[: len(packed) // 2])
    whole = 0  # the whole lines a reader can get before the damage
    with gzip.open(path) as fh:
        try:
            while data := fh.read1(4096):
                whole += data.count(b"\n")
        except EOFError:
            pass
    assert whole > 6
    with pytest.raises(DumpParseError, match=rf":{whole + 1}: compressed stream ended early or is corrupt after "
                                             rf"line {whole:,} "):
        ingest([path], fmt, ArtifactLayout(tmp_path, "x"), IngestOptions(workers=1))


def test_writer_errors_cli_catches_a_storage_failure_without_a_path(tmp_path, monkeypatch, capsys):
    """A writer outside the staged/atomic helpers (a training checkpoint's safetensors save) still
    ends in one line and exit 2; any other exception is not swallowed."""
    import flows.cli as cli

    class SafetensorError(Exception):
        pass

    def full(args):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              'message: "No space left on device" })')

    (tmp_path / "kg").mkdir()
    monkeypatch.setattr(cli, "cmd_index", full)
    assert main(["index", "--name", "kg", "--root", str(tmp_path)]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and re.search(rf"^kalora: error: {re.escape(str(tmp_path))}/kg: No space left on device "
                                       rf"while writing {FREE}", err[0]), err

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_index", bug)
    with pytest.raises(KeyError):
        main(["index", "--name", "kg", "--root", str(tmp_path)])


def test_writer_errors_full_disk_is_not_retried_by_the_flow():
    from flows.build import is_transient

    assert not is_transient(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert not is_transient(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"))
    assert not is_transient(StorageError("x: No space left on device while writing"))
    assert is_transient(OSError(errno.EIO, os.strerror(errno.EIO)))  # storage that may come back
