"""The dump-scale Wikidata path: chunked, parallel, resumable, bounded, and identical whatever the chunking."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import wikidata_stream
from pipelines.artifacts import ArtifactLayout
from pipelines.errors import DumpParseError, InputError
from pipelines.ingest import IngestOptions, ingest
from pipelines.synthetic import load_templates, write_dump

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "wikidata_sample_100_items.json.bz2"


@pytest.fixture(scope="module")
def dump(tmp_path_factory, data_dir) -> Path:
    """A generated 400-entity dump (~4.5 MB): many chunks at chunk_mb=0.25."""
    path = tmp_path_factory.mktemp("wd") / "gen.json"
    write_dump(path, 400, load_templates(data_dir / SAMPLE), seed=1)
    return path


def _tables(layout: ArtifactLayout) -> dict[str, object]:
    out = {name: pq.read_table(getattr(layout, name)) for name in ("entities", "aliases", "relations")}
    out["triples"] = pq.read_table(layout.triples)
    return out


def _same(a: dict, b: dict) -> None:
    for name in a:
        assert a[name].equals(b[name]), name


@pytest.fixture(scope="module")
def reference(dump, tmp_path_factory):
    layout = ArtifactLayout(tmp_path_factory.mktemp("ref"), "wd")
    entry = ingest([dump], "wikidata", layout, IngestOptions(workers=1, chunk_mb=64))
    return entry, _tables(layout)


def test_counts_and_nothing_lost_silently(reference):
    entry, tables = reference
    counts = entry["counts"]
    assert counts["entities"] == 400 == tables["entities"].num_rows
    assert tables["entities"]["index"].to_pylist() == list(range(1, 401))  # contiguous, dump order
    assert counts["triples"] == tables["triples"].num_rows > 1000
    per_file = next(iter(counts["per_file"].values()))
    # every entity-valued claim is either a triple or counted as dropped (generated tails lie ~10% outside)
    assert per_file["claims"] == counts["triples"] + counts["dropped_triple_unknown_entity"]
    assert counts["dropped_triple_unknown_entity"] > 0
    props = {r for r in tables["entities"]["entity_id"].to_pylist() if r.startswith("P")}
    assert props <= set(tables["relations"]["relation_id"].to_pylist())
    assert not (Path(entry["outputs"]["kg"]).parent / ".work").exists()  # checkpoints removed after publish


@pytest.mark.parametrize("workers,chunk_mb", [(1, 0.25), (2, 0.25), (2, 1.0)])
def test_tables_do_not_depend_on_workers_or_chunking(dump, reference, tmp_path, workers, chunk_mb):
    layout = ArtifactLayout(tmp_path, "wd")
    entry = ingest([dump], "wikidata", layout, IngestOptions(workers=workers, chunk_mb=chunk_mb))
    assert entry["counts"]["workers"] == workers
    _same(reference[1], _tables(layout))


def _crash_at_chunk(monkeypatch, n: int):
    """Make the n-th chunk raise as a crash would; return the real run_chunk to restore."""
    real = wikidata_stream.run_chunk
    calls = {"n": 0}

    def crashing(job):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt  # a crash in the middle of the dump
        return real(job)

    monkeypatch.setattr(wikidata_stream, "run_chunk", crashing)
    return real


def test_resume_after_a_crash_reuses_finished_chunks(dump, reference, tmp_path, monkeypatch, caplog):
    layout = ArtifactLayout(tmp_path, "wd")
    real = _crash_at_chunk(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        ingest([dump], "wikidata", layout, IngestOptions(workers=1, chunk_mb=0.25))
    assert not layout.kg.exists()
    done = [p for p in (layout.base / ".work" / "ingest" / "chunks").iterdir() if not p.name.startswith(".")]
    assert len(done) == 5
    monkeypatch.setattr(wikidata_stream, "run_chunk", real)
    caplog.set_level("INFO")
    ingest([dump], "wikidata", layout, IngestOptions(workers=1, chunk_mb=0.25))
    assert "5 chunks already done" in caplog.text
    _same(reference[1], _tables(layout))


def test_sigkill_then_restart_gives_the_same_tables(dump, reference, tmp_path):
    """A real SIGKILL in the middle of the parse phase; the restarted run finishes from the checkpoints."""
    code = ("import sys; from pathlib import Path; from pipelines.artifacts import ArtifactLayout; "
            "from pipelines.ingest import IngestOptions, ingest; "
            "ingest([sys.argv[1]], 'wikidata', ArtifactLayout(Path(sys.argv[2]), 'wd'), "
            "IngestOptions(workers=1, chunk_mb=0.05))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(dump), str(tmp_path)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    chunks = tmp_path / "wd" / ".work" / "ingest" / "chunks"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if chunks.exists() and sum(1 for p in chunks.iterdir() if not p.name.startswith(".")) >= 10:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    layout = ArtifactLayout(tmp_path, "wd")
    assert not layout.entities.exists()  # nothing half-written published
    ingest([dump], "wikidata", layout, IngestOptions(workers=1, chunk_mb=0.05))
    _same(reference[1], _tables(layout))


def test_changed_options_discard_old_checkpoints(dump, tmp_path, monkeypatch):
    layout = ArtifactLayout(tmp_path, "wd")
    real = _crash_at_chunk(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        ingest([dump], "wikidata", layout, IngestOptions(workers=1, chunk_mb=0.25))
    monkeypatch.setattr(wikidata_stream, "run_chunk", real)
    entry = ingest([dump], "wikidata", layout, IngestOptions(workers=1, chunk_mb=0.25, languages=("en", "de")))
    langs = set(pq.read_table(layout.aliases)["lang"].to_pylist())
    assert langs == {"en", "de"} and entry["counts"]["entities"] == 400


def test_unchanged_input_is_not_reingested(dump, tmp_path):
    layout = ArtifactLayout(tmp_path, "wd")
    first = ingest([dump], "wikidata", layout, IngestOptions(workers=1))
    mtime = layout.entities.stat().st_mtime_ns
    again = ingest([dump], "wikidata", layout, IngestOptions(workers=2, chunk_mb=1))  # same output options
    assert again["skipped"] and again["completed_at"] == first["completed_at"]
    assert layout.entities.stat().st_mtime_ns == mtime
    forced = ingest([dump], "wikidata", layout, IngestOptions(workers=1, force=True))
    assert not forced.get("skipped") and layout.entities.stat().st_mtime_ns != mtime


def test_filters_by_class_and_property_and_optional_tables(tmp_path, data_dir):
    src = data_dir / SAMPLE
    layout = ArtifactLayout(tmp_path, "wd")
    entry = ingest([src], "wikidata", layout, IngestOptions(classes=("Q6256",), properties=("P31", "P47", "P36"),
                                                            literals=True, qualifiers=True))
    ents = pq.read_table(layout.entities).to_pylist()
    assert ents and all("Q6256" in e["types"] for e in ents if e["entity_id"].startswith("Q"))
    assert {"Q31", "Q183"} <= {e["entity_id"] for e in ents}  # Belgium and Germany are countries
    assert set(pq.read_table(layout.triples)["relation"].to_pylist()) <= {"P31", "P47", "P36"}
    assert ("Q31", "P47", "Q183") in {tuple(r.values())[:3] for r in pq.read_table(layout.triples).to_pylist()}
    per_file = entry["counts"]["per_file"][str(src)]
    assert per_file["filtered_class"] > 0 and per_file["claims_filtered_property"] > 0
    literals = pq.read_table(layout.kg / "literals").to_pylist() if (layout.kg / "literals").exists() else []
    assert literals == []  # the allow-list has no literal-valued property: none kept, and said so
    assert "literals" not in entry["counts"]
    qualifiers = pq.read_table(layout.kg / "qualifiers").to_pylist()
    assert qualifiers and all(q["head"] in {e["entity_id"] for e in ents} for q in qualifiers)


def test_literal_values_keep_their_type(tmp_path, data_dir):
    layout = ArtifactLayout(tmp_path, "wd")
    ingest([data_dir / SAMPLE], "wikidata", layout, IngestOptions(literals=True, properties=("P1082", "P1448", "P31")))
    rows = pq.read_table(layout.kg / "literals").to_pylist()
    population = [r for r in rows if r["entity_id"] == "Q31" and r["property"] == "P1082"]
    assert population and population[0]["datatype"] == "quantity" and '"amount"' in population[0]["value"]
    names = [r for r in rows if r["property"] == "P1448"]  # official name: monolingual text with its language
    assert names and all(r["lang"] for r in names)
    assert not (layout.kg / "qualifiers").exists()


def _with_lines(tmp_path: Path, data_dir: Path, inserts: dict[int, str], name: str) -> Path:
    lines = bz2.open(data_dir / SAMPLE, "rt").read().splitlines()
    for at in sorted(inserts, reverse=True):
        lines.insert(at, inserts[at])
    path = tmp_path / name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", ["dump.json", "dump.json.gz"])
def test_malformed_lines_are_numbered_across_chunks(tmp_path, data_dir, name):
    bad = {5: '{"id": "Q1", "labels": {broken,', 80: '{"id": "Q2", "claims": [1, 2]},', 95: "[1, 2],"}
    path = _with_lines(tmp_path, data_dir, bad, name)
    layout = ArtifactLayout(tmp_path, "wd")
    entry = ingest([path], "wikidata", layout, IngestOptions(workers=1, chunk_mb=0.5))
    per_file = entry["counts"]["per_file"][str(path)]
    assert per_file["malformed"] == 3 and entry["counts"]["entities"] == 100
    quarantine = (layout.base / "quarantine" / f"{name}.tsv").read_text().splitlines()
    # inserted (in reverse order) at 0-based 95, 80, 5: they end up on lines 6, 82 and 98
    assert [int(q.split("\t")[0]) for q in quarantine] == [6, 82, 98]
    with pytest.raises(DumpParseError, match=rf"{name.replace('.', chr(92) + '.')}:81: malformed entity line "
                                             r"\(unexpected structure"):
        ingest([_with_lines(tmp_path, data_dir, {80: bad[80]}, "strict-" + name)], "wikidata",
               ArtifactLayout(tmp_path, "strict"), IngestOptions(workers=1, chunk_mb=0.5, strict=True))


def test_duplicate_entity_lines_are_dropped_and_counted(tmp_path, data_dir):
    lines = bz2.open(data_dir / SAMPLE, "rt").read().splitlines()
    path = tmp_path / "dup.json"
    path.write_text("\n".join(lines[:-1] + lines[1:3] + ["]"]) + "\n")  # two entities repeated at the end
    layout = ArtifactLayout(tmp_path, "wd")
    entry = ingest([path], "wikidata", layout, IngestOptions(workers=1, chunk_mb=0.3))
    assert entry["counts"]["entities"] == 100 and entry["counts"]["dropped_entity_duplicate"] == 2
    ids = pq.read_table(layout.entities)["entity_id"].to_pylist()
    assert len(set(ids)) == 100


def test_truncated_gzip_names_the_file_and_how_far_it_got(tmp_path, data_dir):
    full = _with_lines(tmp_path, data_dir, {}, "full.json.gz").read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(full[: len(full) * 2 // 3])
    layout = ArtifactLayout(tmp_path, "wd")
    with pytest.raises(DumpParseError, match=r"cut\.json\.gz:\d+: compressed stream ended early or is corrupt after line"):
        ingest([cut], "wikidata", layout, IngestOptions(workers=1, chunk_mb=0.25))
    assert not layout.kg.exists()


def test_bad_options_are_user_errors():
    with pytest.raises(InputError, match="workers"):
        IngestOptions(workers=0)
    with pytest.raises(InputError, match="chunk_mb"):
        IngestOptions(chunk_mb=0)
    assert IngestOptions(classes="Q5, Q6256").classes == ("Q5", "Q6256")  # YAML/CLI strings are split


def test_cli_flags_reach_the_wikidata_path(tmp_path, data_dir):
    out = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(data_dir / SAMPLE), "--name", "wd",
                          "--root", str(tmp_path), "--classes", "Q6256", "--literals", "--workers", "1"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "wd" / "manifest.json").read_text())
    assert manifest["stages"]["ingest"]["parameters"]["classes"] == ["Q6256"]
    assert (tmp_path / "wd" / "kg" / "literals").is_dir()


def test_strict_with_two_workers_reports_the_earliest_malformed_line(tmp_path, data_dir):
    path = _with_lines(tmp_path, data_dir, {20: "{not json,", 90: "[],"}, "two.json")
    with pytest.raises(DumpParseError, match=r"two\.json:21: malformed entity line"):
        ingest([path], "wikidata", ArtifactLayout(tmp_path, "wd"), IngestOptions(workers=2, chunk_mb=0.3, strict=True))


def test_literals_with_mixed_formats_is_refused_not_silently_dropped(tmp_path, data_dir):
    with pytest.raises(InputError, match="literals/qualifiers are written only when Wikidata"):
        ingest([data_dir / SAMPLE, data_dir / "tiny.obo"], None, ArtifactLayout(tmp_path, "mix"),
               IngestOptions(literals=True))
