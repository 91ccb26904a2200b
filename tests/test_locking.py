"""One writer per KG (pipelines/locking.py): a second writer gets one line naming the holder (or
waits), a dead holder's lock is taken over, the run's own threads re-enter it, readers never block."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import wikidata_stream
from pipelines.artifacts import ArtifactLayout
from pipelines.errors import KGLockedError
from pipelines.ingest import IngestOptions, ingest
from pipelines.locking import held_here, kg_write_lock, lock_path, read_holder
from pipelines.synthetic import load_templates, write_dump
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
from pipelines.artifacts import ArtifactLayout
from pipelines.locking import kg_write_lock
with kg_write_lock(ArtifactLayout(Path(sys.argv[1]), sys.argv[2])):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder_process(root: Path, name: str) -> subprocess.Popen:
    """Another process holding the writer lock of root/name (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), name], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _one_line(result, pattern: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def test_locking_second_writer_is_told_the_holder(tmp_path):
    layout = ArtifactLayout(tmp_path, "kg")
    proc = _holder_process(tmp_path, "kg")
    try:
        holder = read_holder(layout)
        assert holder["pid"] == proc.pid and holder["host"] and holder["started_at"]
        with pytest.raises(KGLockedError, match=rf"kg is being written by pid {proc.pid} on \S+ since 20\d\d-"):
            with kg_write_lock(layout):
                pass
        assert not held_here(layout)
    finally:
        proc.kill()
        proc.wait()


def test_locking_sigkilled_holder_is_taken_over(tmp_path):
    layout = ArtifactLayout(tmp_path, "kg")
    proc = _holder_process(tmp_path, "kg")
    with pytest.raises(KGLockedError):
        with kg_write_lock(layout):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_holder(layout)["pid"] == proc.pid  # the dead holder's record is still there ...
    with kg_write_lock(layout):  # ... but the kernel released its flock: taken over at once
        assert read_holder(layout)["pid"] == os.getpid()
        assert held_here(layout)
    assert not held_here(layout)


def test_locking_wait_queues_behind_the_holder(tmp_path):
    layout = ArtifactLayout(tmp_path, "kg")
    proc = _holder_process(tmp_path, "kg")
    threading.Timer(1.0, proc.kill).start()
    started = time.monotonic()
    with kg_write_lock(layout, wait=True):
        assert read_holder(layout)["pid"] == os.getpid()
    assert time.monotonic() - started >= 0.9
    proc.wait()


def test_locking_reentrant_across_threads_of_one_run(tmp_path):
    """A flow run holds the lock; its tasks on Prefect's thread pool re-enter it instead of deadlocking."""
    layout = ArtifactLayout(tmp_path, "kg")
    seen = []
    with kg_write_lock(layout):
        def task():
            with kg_write_lock(layout):
                seen.append(read_holder(layout)["pid"])

        threads = [threading.Thread(target=task) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert held_here(layout)
    assert seen == [os.getpid()] * 3
    assert not held_here(layout)


def test_locking_other_kgs_and_readers_do_not_block(tmp_path, tiny_build):
    proc = _holder_process(tiny_build.root, tiny_build.name)
    try:
        with kg_write_lock(ArtifactLayout(tiny_build.root, "another")):
            pass
        result = run_cli("link", "--name", tiny_build.name, "--root", str(tiny_build.root), "Short stature", timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        _one_line(run_cli("index", "--name", tiny_build.name, "--root", str(tiny_build.root)),
                  rf"^kalora: error: .*{tiny_build.name} is being written by pid {proc.pid} on ")
    finally:
        proc.kill()
        proc.wait()
    assert lock_path(tiny_build).exists()


def test_locking_run_on_a_busy_kg_fails_fast(tmp_path, tiny_sources):
    cfg = tmp_path / "build.yaml"
    cfg.write_text(f"name: kg\nroot: {tmp_path}\nsources: [{', '.join(map(str, tiny_sources))}]\n")
    proc = _holder_process(tmp_path, "kg")
    try:
        _one_line(run_cli("run", str(cfg)), rf"^kalora: error: .*kg is being written by pid {proc.pid} on ")
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "kg" / "kg").exists()


# -- the two concurrency cases, with real `kalora ingest` processes -------------------------
@pytest.fixture(scope="module")
def big_dump(tmp_path_factory, data_dir) -> Path:
    """A dump that takes a few seconds to ingest with one worker and many small chunks."""
    path = tmp_path_factory.mktemp("wd") / "gen.json"
    write_dump(path, 1500, load_templates(data_dir / "wikidata_sample_100_items.json.bz2"), seed=3)
    return path


def _tables(layout: ArtifactLayout) -> dict:
    return {n: pq.read_table(getattr(layout, n)) for n in ("entities", "aliases", "relations", "triples")}


def _ingest_args(dump: Path, root: Path) -> list[str]:
    return ["ingest", str(dump), "--format", "wikidata", "--name", "wd", "--root", str(root),
            "--workers", "1", "--chunk-mb", "0.1"]


def test_locking_two_ingests_one_second_apart(big_dump, tmp_path):
    reference = ArtifactLayout(tmp_path / "ref", "wd")
    ingest([big_dump], "wikidata", reference, IngestOptions(workers=1, chunk_mb=64))
    first = subprocess.Popen([sys.executable, "-m", "flows.cli", *_ingest_args(big_dump, tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    layout = ArtifactLayout(tmp_path, "wd")
    deadline = time.monotonic() + 120
    while (read_holder(layout) or {}).get("pid") != first.pid:  # the first has started writing
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    second = run_cli(*_ingest_args(big_dump, tmp_path))
    assert first.poll() is None, "the first ingest finished before the second started: make the dump larger"
    _one_line(second, rf"^kalora: error: .*wd is being written by pid {first.pid} on \S+ since \S+ \(")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    ref, got = _tables(reference), _tables(layout)
    for name in ref:
        assert ref[name].equals(got[name]), name


def test_locking_ingest_started_during_the_merge(big_dump, tmp_path, monkeypatch):
    """The second `kalora ingest` starts while the first (this process) is merging its chunks."""
    reference = ArtifactLayout(tmp_path / "ref", "wd")
    ingest([big_dump], "wikidata", reference, IngestOptions(workers=1, chunk_mb=64))
    real_merge, during = wikidata_stream.merge_chunks, {}

    def merge_with_a_second_writer(*args, **kwargs):
        during["second"] = run_cli(*_ingest_args(big_dump, tmp_path))
        during["chunks"] = sorted(p.name for p in (tmp_path / "wd" / ".work" / "ingest" / "chunks").iterdir())
        return real_merge(*args, **kwargs)

    monkeypatch.setattr(wikidata_stream, "merge_chunks", merge_with_a_second_writer)
    layout = ArtifactLayout(tmp_path, "wd")
    ingest([big_dump], "wikidata", layout, IngestOptions(workers=1, chunk_mb=0.25))
    _one_line(during["second"], rf"^kalora: error: .*wd is being written by pid {os.getpid()} on ")
    assert len(during["chunks"]) > 1  # the second writer left the live chunks alone
    ref, got = _tables(reference), _tables(layout)
    for name in ref:
        assert ref[name].equals(got[name]), name


def test_locking_stage_without_its_kg_leaves_no_folder(tmp_path):
    _one_line(run_cli("index", "--name", "missing", "--root", str(tmp_path)), r"does not exist: run `kalora embed")
    assert not (tmp_path / "missing").exists()
