"""Every row a reader leaves out is counted by reason (stage counts, manifest, summary table);
``strict`` makes a drop a one-line error naming the file and line. Fabricated inputs only."""

import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.artifacts import ArtifactLayout, read_manifest
from pipelines.errors import DumpParseError
from pipelines.ingest import IngestOptions, ingest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli  # noqa: E402

DANGLING_OBO = """format-version: 1.2

[Term]
id: X:1
name: Root

[Term]
id: X:2
name: Child
is_a: X:1
is_a: X:404 ! not in this file
relationship: part_of X:3

[Term]
id: X:3
name: Gone
is_obsolete: true
"""


def test_obo_dangling_and_obsolete_edges_are_counted(tmp_path):
    path = tmp_path / "d.obo"
    path.write_text(DANGLING_OBO)
    layout = ArtifactLayout(tmp_path, "d")
    entry = ingest([path], None, layout)
    counts = entry["counts"]
    assert counts["triples"] == 1
    assert counts["dropped_edge_to_unknown_term"] == 1 and counts["dropped_edge_to_obsolete_term"] == 1
    assert counts["per_file"][str(path)]["dropped_edge_to_unknown_term"] == 1
    recorded = read_manifest(layout)["stages"]["ingest"]["counts"]
    assert recorded["dropped_edge_to_obsolete_term"] == 1


def test_obo_only_edge_dangling_is_not_silent_and_strict_names_the_line(tmp_path):
    path = tmp_path / "one.obo"
    path.write_text("[Term]\nid: X:2\nname: Child\nis_a: X:1\n")
    entry = ingest([path], None, ArtifactLayout(tmp_path, "o"))
    assert entry["counts"]["triples"] == 0 and entry["counts"]["dropped_edge_to_unknown_term"] == 1
    with pytest.raises(DumpParseError, match=r"one\.obo:4: X:2 is_a X:1: no such term in this file \(--strict"):
        ingest([path], None, ArtifactLayout(tmp_path, "s"), IngestOptions(strict=True))
    obsolete = tmp_path / "obs.obo"
    obsolete.write_text(DANGLING_OBO.replace("is_a: X:404 ! not in this file\n", ""))
    with pytest.raises(DumpParseError, match=r"obs\.obo:11: X:2 relationship part_of X:3: the target is obsolete"):
        ingest([obsolete], None, ArtifactLayout(tmp_path, "s"), IngestOptions(strict=True))


def test_obo_edges_outside_root_term_are_skipped_not_errors(tmp_path, tiny_sources):
    sliced = IngestOptions(root_term="HP:9000005", strict=True)
    entry = ingest(tiny_sources[:1], None, ArtifactLayout(tmp_path, "o"), sliced)
    assert entry["counts"]["skipped_edge_outside_root_term"] >= 1
    entry = ingest(tiny_sources, None, ArtifactLayout(tmp_path, "t"), IngestOptions(root_term="HP:9000005"))
    counts = entry["counts"]
    # annotations to terms (or their alt ids) outside the slice are skipped; to an unknown term, dropped
    assert counts["skipped_term_outside_root_term"] >= 2
    assert counts["dropped_annotation_term_not_in_ontology"] == 1


def test_obo_empty_file_names_the_file(tmp_path):
    empty = tmp_path / "empty.obo"
    empty.write_text("")
    with pytest.raises(DumpParseError, match=r"empty\.obo: no \[Term\] stanza"):
        ingest([empty], "obo", ArtifactLayout(tmp_path, "e"))


def test_hpoa_annotation_to_unknown_term_strict(tmp_path, tiny_sources):
    with pytest.raises(DumpParseError, match=r"tiny\.hpoa:\d+: HP:\d+ is not a live term .*--strict"):
        ingest(tiny_sources, None, ArtifactLayout(tmp_path, "t"), IngestOptions(strict=True))


def test_umls_relation_to_unlisted_concept(tmp_path, data_dir):
    for name in ("MRCONSO.RRF", "MRSTY.RRF"):
        shutil.copy(data_dir / name, tmp_path / name)
    rel = (data_dir / "MRREL.RRF").read_text()
    (tmp_path / "MRREL.RRF").write_text(rel + rel.replace("C9000002", "C9999999")
                                        + rel.replace("C9000002", "C9000001"))
    files = [tmp_path / n for n in ("MRCONSO.RRF", "MRSTY.RRF", "MRREL.RRF")]
    entry = ingest(files, None, ArtifactLayout(tmp_path, "u"))
    counts = entry["counts"]
    assert counts["dropped_relation_to_unlisted_concept"] == 1
    assert counts["skipped_self_relation"] == 1
    assert counts["skipped_suppressed_or_other_language"] >= 1  # the Spanish names
    assert counts["triples"] == 1
    with pytest.raises(DumpParseError, match=r"MRREL\.RRF:2: C9999999 is not in MRCONSO"):
        ingest(files, None, ArtifactLayout(tmp_path, "s"), IngestOptions(strict=True))


def test_cli_summary_table_shows_drops_and_strict_is_one_line(tmp_path):
    path = tmp_path / "d.obo"
    path.write_text(DANGLING_OBO)
    res = run_cli("ingest", str(path), "--name", "d", "--root", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "dropped_edge_to_obsolete_term=1" in res.stderr and "dropped_edge_to_unknown_term=1" in res.stderr
    printed = json.loads(res.stdout[res.stdout.index("{\n"):])  # the log lines come first
    assert printed["counts"]["dropped_edge_to_unknown_term"] == 1
    res = run_cli("ingest", str(path), "--strict", "--force", "--name", "d", "--root", str(tmp_path))
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("kalora: error:") and "d.obo:11:" in lines[-1] and "Traceback" not in res.stderr
    # the failed strict run left the earlier tables in place
    assert pq.read_table(ArtifactLayout(tmp_path, "d").entities).num_rows == 2
