"""Triples files as users have them: PyKEEN's headerless format, headers, columns by position,
directed by default, ``undirected`` on request; the builder's bounded-memory path."""

import csv
import sys

import pyarrow.parquet as pq
import pytest

from pipelines import hpoa, obo, triples
from pipelines.artifacts import ArtifactLayout
from pipelines.errors import DumpParseError, InputError
from pipelines.ingest import IngestOptions, detect_format, ingest
from pipelines.tables import KGBuilder

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from conftest import run_cli  # noqa: E402


def _umls_files():
    from pykeen.datasets import umls

    return [umls.UMLS_TRAIN_PATH, umls.UMLS_VALIDATE_PATH, umls.UMLS_TEST_PATH]


def _rows(paths):
    out = []
    for p in paths:
        with open(p) as fh:
            out += [tuple(r) for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return out


def _triples(layout):
    return [(t["head"], t["relation"], t["tail"]) for t in pq.read_table(layout.triples).to_pylist()]


def test_triples_pykeen_umls_headerless_keeps_every_directed_triple(tmp_path):
    files = _umls_files()
    assert detect_format(files[0]) == "triples"  # train.txt: headerless, tab-separated
    layout = ArtifactLayout(tmp_path, "umls")
    entry = ingest(files, None, layout)
    written = _triples(layout)
    expected = set(_rows(files))
    assert len(expected) == 6529
    assert len(written) == len(set(written)) == 6529 and set(written) == expected
    assert written == sorted(written)
    ents = pq.read_table(layout.entities).to_pylist()
    assert {e["entity_id"] for e in ents} == {h for h, _, _ in expected} | {t for _, _, t in expected}
    assert [e["index"] for e in ents] == list(range(1, len(ents) + 1))
    assert not [k for k in entry["counts"] if k.startswith(("dropped_", "skipped_"))]
    # both directions of a pair are separate facts (the undirected reader used to drop 550 of them)
    assert sum((t, r, h) in expected for h, r, t in expected if h != t) > 0


def test_triples_undirected_skips_reverse_pairs_and_counts_them(tmp_path):
    files = _umls_files()
    layout = ArtifactLayout(tmp_path, "umls")
    entry = ingest(files, None, layout, IngestOptions(undirected=True))
    skipped = entry["counts"]["skipped_reverse_duplicate"]
    assert skipped == 550 and len(_triples(layout)) == 6529 - skipped


def test_triples_header_by_name_position_and_forced_no_header(tmp_path):
    with_header = tmp_path / "kg.tsv"
    with_header.write_text("head\trelation\ttail\nA\tr\tB\nB\tr\tA\n")
    layout = ArtifactLayout(tmp_path, "h")
    ingest([with_header], None, layout)
    assert _triples(layout) == [("A", "r", "B"), ("B", "r", "A")]
    # the same rows with relation first, mapped by 1-based position, no header
    moved = tmp_path / "moved.tsv"
    moved.write_text("r\tA\tB\nq\tB\tC\n")
    ingest([moved], None, layout, IngestOptions(triple_columns={"head": 2, "relation": "1", "tail": 3}))
    assert _triples(layout) == [("A", "r", "B"), ("B", "q", "C")]
    # --no-header: a first row that happens to read head/relation/tail is a triple
    ingest([with_header], None, layout, IngestOptions(header=False, force=True))
    assert ("head", "relation", "tail") in _triples(layout)


def test_triples_column_errors_name_file_and_line(tmp_path):
    spo = tmp_path / "spo.tsv"
    spo.write_text("subject\tpredicate\tobject\nA\tr\tB\n")
    with pytest.raises(DumpParseError, match=r"spo\.tsv:1: the first row .* looks like a header"):
        ingest([spo], None, ArtifactLayout(tmp_path, "x"))
    ingest([spo], None, ArtifactLayout(tmp_path, "x"),
           IngestOptions(triple_columns={"head": "subject", "relation": "predicate", "tail": "object"}))
    with pytest.raises(InputError, match=r"is a name, but the file has no header"):
        ingest([spo], None, ArtifactLayout(tmp_path, "y"), IngestOptions(header=False, triple_columns={"head": "subject"}))
    short = tmp_path / "short.tsv"
    short.write_text("A\tr\tB\nC\tr\n")
    with pytest.raises(DumpParseError, match=r"short\.tsv:2: expected at least 3 tab-separated fields, got 2"):
        ingest([short], None, ArtifactLayout(tmp_path, "z"))
    with pytest.raises(InputError, match="positions start at 1"):
        ingest([short], None, ArtifactLayout(tmp_path, "z"), IngestOptions(triple_columns={"head": 0}))


def test_triples_large_field_and_stray_quote(tmp_path):
    big = "x" * 300_000  # over the csv module's default 128 KiB field limit
    path = tmp_path / "big.tsv"
    path.write_text(f'A\tr\t{big}\n"B\tr\tC\nD\tr\tE\n')
    layout = ArtifactLayout(tmp_path, "b")
    ingest([path], None, layout)
    assert len(_triples(layout)) == 3  # the stray quote does not swallow the next line


def test_triples_repeated_rows_are_merged_and_counted(tmp_path):
    path = tmp_path / "dup.tsv"
    path.write_text("A\tr\tB\nA\tr\tB\nB\tr\tA\n")
    layout = ArtifactLayout(tmp_path, "d")
    entry = ingest([path], None, layout)
    assert len(_triples(layout)) == 2 and entry["counts"]["merged_duplicate_triples"] == 1


def _build(tmp_path, run_rows, tiny_sources, name):
    builder = KGBuilder(run_rows=run_rows, work_dir=tmp_path / "work" / name)
    obo.read_obo(tiny_sources[0], builder)
    for path in _umls_files():
        triples.read_triples(path, builder)
    for path in tiny_sources[1:]:
        hpoa.read_annotations(path, builder)
    counts = builder.write(tmp_path / name)
    assert not list((tmp_path / "work" / name).iterdir())  # runs removed
    return counts, {p.name: pq.read_table(p).to_pylist() for p in sorted((tmp_path / name).rglob("*.parquet"))}


def test_tables_small_runs_give_identical_tables(tmp_path, tiny_sources):
    """Many tiny sorted runs merged (and re-sorted after alt-id redirects) equal one in-memory run."""
    one_run = _build(tmp_path, 10**9, tiny_sources, "one")
    many_runs = _build(tmp_path, 5, tiny_sources, "many")
    assert one_run == many_runs
    assert one_run[0]["triples"] > 6529


def test_tables_triples_part_files(tmp_path, monkeypatch):
    from pipelines import table_writers

    monkeypatch.setattr(table_writers, "TRIPLES_PER_PART", 3)
    path = tmp_path / "t.tsv"
    path.write_text("".join(f"e{i}\tr\te{i + 1}\n" for i in range(6)))
    layout = ArtifactLayout(tmp_path, "p")
    ingest([path], None, layout)
    assert sorted(p.name for p in layout.triples.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert len(_triples(layout)) == 6


def test_cli_ingest_headerless_flags_and_summary_table(tmp_path, data_dir):
    root = str(tmp_path)
    res = run_cli("ingest", str(data_dir / "primekg_like.tsv"), "--column", "head=x_id", "--column", "tail=5",
                  "--undirected", "--name", "pk", "--root", root)
    assert res.returncode == 0, res.stderr
    assert "skipped_reverse_duplicate=1" in res.stderr and '"triples": 2' in res.stdout
    headerless = tmp_path / "h.tsv"
    headerless.write_text("head\trelation\ttail\nA\tr\tB\n")
    res = run_cli("ingest", str(headerless), "--no-header", "--name", "h", "--root", root)
    assert res.returncode == 0 and '"triples": 2' in res.stdout


def test_spill_sorted_runs_merge_in_passes(tmp_path, monkeypatch):
    import random

    import pyarrow as pa

    from pipelines import spill

    monkeypatch.setattr(spill, "FAN_IN", 3)
    runs = spill.SortedRuns(tmp_path, pa.schema([("key", pa.string()), ("seq", pa.int64())]), 2, run_rows=7)
    rows = [(str(random.Random(i).randint(0, 50)), i) for i in range(200)]
    runs.extend(rows)
    assert list(runs.sorted()) == sorted(rows) and len(runs.paths) <= 3
    runs.close()
    assert not runs.directory.exists()


def test_ingest_options_triples_fields_are_typed():
    with pytest.raises(InputError, match=r"\[ingest -> undirected\] expected true or false, got 'yes'"):
        IngestOptions(undirected="yes")
    with pytest.raises(InputError, match=r"\[ingest -> triple_columns -> head\] expected a column name"):
        IngestOptions(triple_columns={"head": 1.5})


def test_tables_small_runs_identical_for_umls_and_named_triples(tmp_path, data_dir):
    """UMLS names, types and codes, and the names/types of a PrimeKG-like file, all spilled in runs
    of 3 rows (aliases, xrefs and rich entities on disk), give the tables of one in-memory run."""
    from pipelines import umls

    def build(run_rows, name):
        builder = KGBuilder(run_rows=run_rows, work_dir=tmp_path / "work" / name)
        umls.read_umls([data_dir / "MRCONSO.RRF", data_dir / "MRSTY.RRF", data_dir / "MRREL.RRF"], builder,
                       languages=("ENG", "SPA"))
        columns = {"head": "x_id", "relation": "relation", "tail": "y_id", "head_name": "x_name",
                   "tail_name": "y_name", "head_type": "x_type", "tail_type": "y_type"}
        triples.read_triples(data_dir / "primekg_like.tsv", builder, triples.TriplesOptions.from_mapping(columns))
        assert len(builder._runs["aliases"].paths) > 1 or run_rows > 100  # the small build did spill
        counts = builder.write(tmp_path / name)
        return counts, {p.name: pq.read_table(p).to_pylist() for p in sorted((tmp_path / name).rglob("*.parquet"))}

    one, many = build(10**9, "one"), build(3, "many")
    assert one == many
    tables = one[1]
    assert {"C9000001", "C9000002"} <= {e["entity_id"] for e in tables["entities.parquet"]}
    assert ("Fiebre fabricada", "es") in {(a["alias"], a["lang"]) for a in tables["aliases.parquet"]}
    assert tables["xrefs.parquet"] and one[0]["xrefs"] == len(tables["xrefs.parquet"])
