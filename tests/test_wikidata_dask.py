"""One Wikidata dump's chunks as tasks on a real Dask cluster (a scheduler and two worker processes
on 127.0.0.1, started here): the same tables as the single-process ingest, and one clear error when
the workers cannot see the dump."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.artifacts import ArtifactLayout
from pipelines.errors import InputError
from pipelines.ingest import IngestOptions, ingest
from pipelines.synthetic import load_templates, write_dump
from tests.dask_cluster import local_dask_cluster

distributed = pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "wikidata_sample_100_items.json.bz2"
TIMING = ("parse_seconds", "merge_seconds", "workers")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``dask scheduler`` + ``dask worker`` (2 processes, 1 thread each), out of process, working in
    a directory of their own (so a path relative to the caller's working directory is not theirs)."""
    home = tmp_path_factory.mktemp("dask")
    with local_dask_cluster(home, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=home) as address:
        yield address


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, timeout=60, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def dump(tmp_path_factory, data_dir) -> Path:
    path = tmp_path_factory.mktemp("wd") / "gen.json"
    write_dump(path, 400, load_templates(data_dir / SAMPLE), seed=3)
    return path


def _table_digests(kg: Path) -> dict[str, str]:
    """SHA-256 of each table's content (Parquet bytes depend on row-group sizes, i.e. on the chunking)."""
    import hashlib

    import pyarrow.parquet as pq

    from pipelines.wikidata_chunks import ipc_bytes

    tables = sorted(p for p in kg.iterdir() if not p.name.startswith("."))
    return {p.name: hashlib.sha256(ipc_bytes(pq.read_table(p).combine_chunks())).hexdigest() for p in tables}


def _digest_and_counts(layout: ArtifactLayout, entry: dict) -> tuple[dict, dict]:
    counts = {k: v for k, v in entry["counts"].items() if k not in TIMING}
    counts["per_file"] = list(counts["per_file"].values())  # the same dump under another name
    return _table_digests(layout.kg), counts


@pytest.fixture(scope="module")
def reference(dump, tmp_path_factory):
    layout = ArtifactLayout(tmp_path_factory.mktemp("ref"), "wd")
    entry = ingest([dump], "wikidata", layout, IngestOptions(workers=1, chunk_mb=64, literals=True, qualifiers=True))
    return _digest_and_counts(layout, entry)


def test_wikidata_dask_chunks_on_the_cluster_give_the_same_tables(dump, reference, client, tmp_path):
    layout = ArtifactLayout(tmp_path, "wd")
    with distributed.get_task_stream(client) as stream:
        entry = ingest([dump], "wikidata", layout,
                       IngestOptions(workers=1, chunk_mb=0.25, literals=True, qualifiers=True), executor=client)
    assert _digest_and_counts(layout, entry) == reference
    chunk_tasks = [t for t in stream.data if "run_chunk_remote" in str(t["key"])]
    assert len(chunk_tasks) == -(-dump.stat().st_size // (1 << 18)) > 10  # every chunk was a task on the cluster
    assert {t["worker"] for t in chunk_tasks} <= set(client.nthreads())
    assert entry["counts"]["workers"] == 2
    assert not (layout.base / ".work").exists()


def test_wikidata_dask_compressed_dump_sends_blocks_to_the_workers(dump, reference, client, tmp_path):
    gz = tmp_path / "gen.json.gz"
    gz.write_bytes(gzip.compress(dump.read_bytes()))
    layout = ArtifactLayout(tmp_path, "wd")
    entry = ingest([gz], "wikidata", layout, IngestOptions(chunk_mb=0.5, literals=True, qualifiers=True),
                   executor=client)
    assert _digest_and_counts(layout, entry) == reference


def test_wikidata_dask_workers_that_cannot_see_the_dump_get_one_clear_error(dump, client, tmp_path, monkeypatch):
    """``/proc/self/cwd/...`` names the dump here, and a missing file in each worker's own directory."""
    here = tmp_path / "here"
    here.mkdir()
    shutil.copy(dump, here / "only-here.json")
    monkeypatch.chdir(here)
    layout = ArtifactLayout(tmp_path, "wd")
    with pytest.raises(InputError, match=r"^/proc/self/cwd/only-here\.json: cannot be read \(No such file or directory\) "
                                         r"on Dask worker tcp://127\.0\.0\.1:\d+: every worker must see the dump at the "
                                         r"same path \(shared storage"):
        ingest(["/proc/self/cwd/only-here.json"], "wikidata", layout, IngestOptions(), executor=client)
    assert not layout.kg.exists()


def test_wikidata_dask_unreachable_scheduler_is_a_user_error():
    from pipelines.wikidata_stream import dask_client

    with pytest.raises(InputError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:9"):
        dask_client("tcp://127.0.0.1:9", timeout=2)


def test_wikidata_dask_cli_flag(dump, reference, cluster, tmp_path):
    out = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(dump), "--name", "wd", "--root", str(tmp_path),
                          "--literals", "--qualifiers", "--chunk-mb", "0.5", "--dask", cluster],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    layout = ArtifactLayout(tmp_path, "wd")
    entry = json.loads(layout.manifest.read_text())["stages"]["ingest"]
    assert entry["counts"]["workers"] == 2
    assert _digest_and_counts(layout, entry) == reference


def test_wikidata_dask_flow_on_a_dask_task_runner(dump, reference, cluster, tmp_path):
    pytest.importorskip("prefect_dask")
    from flows.build import ingest_flow, task_runner
    from flows.config import resolve

    cfg = resolve(None, {"name": "wd", "root": str(tmp_path), "sources": [str(dump)],
                         "ingest": {"chunk_mb": 0.5, "literals": True, "qualifiers": True}})
    entry = ingest_flow.with_options(task_runner=task_runner({"address": cluster}))(cfg)
    assert entry["counts"]["workers"] == 2  # the chunks ran on the cluster's two workers
    assert _digest_and_counts(ArtifactLayout(tmp_path, "wd"), entry) == reference
