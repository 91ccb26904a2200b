import bz2
import gzip
import json

import pyarrow.parquet as pq
import pytest

from pipelines.artifacts import ArtifactLayout, read_manifest
from pipelines.errors import DumpParseError, InputError
from pipelines.ingest import IngestOptions, ingest
from pipelines.normalize import normalize_alias
from pipelines.obo import iter_terms


def _tables(layout):
    ents = pq.read_table(layout.entities).to_pylist()
    aliases = pq.read_table(layout.aliases).to_pylist()
    triples = pq.read_table(layout.triples).to_pylist()
    return {e["entity_id"]: e for e in ents}, aliases, {(t["head"], t["relation"], t["tail"]) for t in triples}


def test_normalize_alias_folds_case_accents_and_punctuation():
    assert normalize_alias("Café-au-lait  SPOTS!") == "cafe au lait spots"
    assert normalize_alias("--") == ""


def test_obo_terms_synonyms_and_definitions(data_dir):
    terms = {t.id: t for t in iter_terms(data_dir / "tiny.obo")}
    lens = terms["HP:9000003"]
    assert lens.definition == 'Clouding of the "crystalline" lens of the eye.'
    assert ("LOP", "EXACT", "abbreviation") in lens.synonyms
    assert lens.alt_ids == ["HP:9000099"]
    assert terms["HP:9000008"].obsolete and terms["HP:9000008"].replaced_by == ["HP:9000003"]


def test_ingest_hpo_like_sources(tmp_path, tiny_sources):
    layout = ArtifactLayout(tmp_path, "t")
    entry = ingest(tiny_sources, None, layout)
    ents, aliases, triples = _tables(layout)
    # obsolete term excluded, but its name redirects to the replacement
    assert "HP:9000008" not in ents
    assert ("Old eye term", "HP:9000003", "replaced_by") in {(a["alias"], a["entity_id"], a["kind"]) for a in aliases}
    # indices are contiguous from 1, sorted by id
    assert sorted(e["index"] for e in ents.values()) == list(range(1, len(ents) + 1))
    assert ("HP:9000003", "is_a", "HP:9000002") in triples
    assert ("HP:9000006", "part_of", "HP:9000005") in triples
    # an annotation on an alt_id resolves to the live term; NOT becomes lacks_phenotype
    assert ("OMIM:900002", "has_phenotype", "HP:9000003") in triples
    assert ("OMIM:900001", "lacks_phenotype", "HP:9000006") in triples
    assert ("NCBIGene:9002", "gene_associated_with_phenotype", "HP:9000006") in triples
    assert ("NCBIGene:9002", "gene_associated_with_disease", "OMIM:900002") in triples
    assert ents["OMIM:900001"]["types"] == ["disease"] and ents["NCBIGene:9001"]["types"] == ["gene"]
    kinds = {(a["alias"], a["kind"]) for a in aliases}
    assert ("LOP", "abbreviation") in kinds and ("Color blindness", "uk_spelling") in kinds
    # the annotation on an unknown term is dropped and counted, per file and in the stage counts
    per_file = entry["counts"]["per_file"]
    assert per_file[str(tiny_sources[1])]["dropped_annotation_term_not_in_ontology"] == 1
    assert entry["counts"]["dropped_annotation_term_not_in_ontology"] == 1
    manifest = read_manifest(layout)
    assert manifest["stages"]["ingest"]["inputs"][str(tiny_sources[0])]


def test_ingest_root_term_slice(tmp_path, tiny_sources):
    layout = ArtifactLayout(tmp_path, "t")
    ingest(tiny_sources, None, layout, IngestOptions(root_term="HP:9000005"))
    ents, _, _ = _tables(layout)
    hp = {e for e in ents if e.startswith("HP:")}
    assert hp == {"HP:9000005", "HP:9000006"}
    assert "OMIM:900002" in ents and "OMIM:900003" not in ents


def test_obo_malformed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.obo"
    bad.write_text("format-version: 1.2\n\n[Term]\nid: X:1\nname: ok\nsynonym: missing quotes EXACT []\n")
    with pytest.raises(DumpParseError, match=r"bad\.obo:6: expected synonym"):
        ingest([bad], None, ArtifactLayout(tmp_path, "t"))


def test_missing_and_unknown_inputs_are_clear(tmp_path):
    with pytest.raises(InputError, match="nope.obo: no such file"):
        ingest([tmp_path / "nope.obo"], None, ArtifactLayout(tmp_path, "t"))
    odd = tmp_path / "data.xyz"
    odd.write_text("x")
    with pytest.raises(InputError, match="cannot tell the format"):
        ingest([odd], None, ArtifactLayout(tmp_path, "t"))
    with pytest.raises(InputError, match="unknown format 'foo'"):
        ingest([odd], "foo", ArtifactLayout(tmp_path, "t"))


def test_failed_ingest_leaves_previous_tables_intact(tmp_path, tiny_sources, data_dir):
    layout = ArtifactLayout(tmp_path, "t")
    ingest(tiny_sources, None, layout)
    before = pq.read_table(layout.entities).num_rows
    bad = tmp_path / "bad.obo"
    bad.write_text("[Term]\nid: X:1\nname ok\n")
    with pytest.raises(DumpParseError):
        ingest([bad], None, layout)
    assert pq.read_table(layout.entities).num_rows == before
    assert not [p for p in layout.base.rglob("*.tmp")]


def test_wikidata_sample(tmp_path, data_dir):
    layout = ArtifactLayout(tmp_path, "wd")
    entry = ingest([data_dir / "wikidata_sample_100_items.json.bz2"], "wikidata", layout)
    ents, aliases, triples = _tables(layout)
    assert len(ents) == 100
    assert ents["Q31"]["label"] == "Belgium" and ents["Q31"]["prior"] > 100
    assert "Q6256" in ents["Q31"]["types"] or ents["Q31"]["types"]
    assert {a["lang"] for a in aliases} == {"en"}
    # claims to entities outside the sample are counted as dropped, not silently lost
    assert entry["counts"]["dropped_triple_unknown_entity"] > 0


def test_wikidata_malformed_line_quarantined_and_strict(tmp_path, data_dir):
    lines = bz2.open(data_dir / "wikidata_sample_100_items.json.bz2", "rt").read().splitlines()
    lines.insert(5, '{"id": "Q1", "labels": {broken,')
    dump = tmp_path / "dump.json.gz"
    with gzip.open(dump, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    layout = ArtifactLayout(tmp_path, "wd")
    entry = ingest([dump], None, layout)
    per_file = entry["counts"]["per_file"][str(dump)]
    assert per_file["malformed"] == 1
    quarantine = layout.base / "quarantine" / "dump.json.gz.tsv"
    assert quarantine.read_text().startswith("6\t")
    with pytest.raises(DumpParseError, match=r"dump\.json\.gz:6: malformed entity line"):
        ingest([dump], None, layout, IngestOptions(strict=True))


def test_truncated_bz2_fails_with_file_name(tmp_path, data_dir):
    raw = (data_dir / "wikidata_sample_100_items.json.bz2").read_bytes()
    cut = tmp_path / "cut.json.bz2"
    cut.write_bytes(raw[: len(raw) // 2])
    layout = ArtifactLayout(tmp_path, "wd")
    with pytest.raises(DumpParseError, match=r"cut\.json\.bz2.*(ended early|truncated|corrupt)"):
        ingest([cut], None, layout)
    assert not layout.entities.exists()


def test_umls_rrf(tmp_path, data_dir):
    layout = ArtifactLayout(tmp_path, "umls")
    ingest([data_dir / "MRCONSO.RRF", data_dir / "MRSTY.RRF", data_dir / "MRREL.RRF"], None, layout)
    ents, aliases, triples = _tables(layout)
    assert ents["C9000001"]["label"] == "Fabricated fever"
    assert ents["C9000002"]["types"] == ["Disease or Syndrome"]
    assert ("FINF", "abbreviation") in {(a["alias"], a["kind"]) for a in aliases}
    assert "Fiebre fabricada" not in {a["alias"] for a in aliases}  # only ENG by default
    assert ("C9000002", "manifestation_of", "C9000001") in triples


def test_triples_tsv_undirected_skips_reverse_edges_on_request(tmp_path, data_dir):
    layout = ArtifactLayout(tmp_path, "pk")
    columns = {"head": "x_id", "relation": "relation", "tail": "y_id", "head_name": "x_name", "tail_name": "y_name"}
    entry = ingest([data_dir / "primekg_like.tsv"], None, layout, IngestOptions(triple_columns=columns, undirected=True))
    ents, _, triples = _tables(layout)
    assert len(triples) == 2
    assert ents["1"]["label"] == "GeneA"
    assert entry["counts"]["per_file"][str(data_dir / "primekg_like.tsv")]["skipped_reverse_duplicate"] == 1
    assert entry["counts"]["skipped_reverse_duplicate"] == 1
    # directed by default: both directions are facts
    entry = ingest([data_dir / "primekg_like.tsv"], None, layout, IngestOptions(triple_columns=columns))
    assert len(_tables(layout)[2]) == 3 and "skipped_reverse_duplicate" not in entry["counts"]


def test_manifest_is_valid_json_after_ingest(tmp_path, tiny_sources):
    layout = ArtifactLayout(tmp_path, "t")
    ingest(tiny_sources, None, layout)
    data = json.loads(layout.manifest.read_text())
    counts = data["stages"]["ingest"]["counts"]
    # 7 live terms + 3 annotated diseases + 3 genes; the disease annotated only to an unknown term is skipped
    assert counts["entities"] == 13
    assert counts["relations"] == 6


def test_obo_synonym_scope_and_xrefs(tmp_path):
    obo = tmp_path / "x.obo"
    obo.write_text(
        "format-version: 1.2\nsynonymtypedef: layperson \"layperson term\"\n\n"
        "[Term]\nid: X:1\nname: Root\n\n"
        "[Term]\nid: X:2\nname: Fever\nsynonym: \"Pyrexia\" EXACT []\nsynonym: \"Hot\" BROAD layperson []\n"
        "xref: UMLS:C0015967 ! Fever\nxref: MSH:D005334\nis_a: X:1\n\n"
        "[Term]\nid: X:3\nname: Old fever\nis_obsolete: true\nreplaced_by: X:2\nxref: UMLS:C9999999\n"
    )
    layout = ArtifactLayout(tmp_path, "x")
    entry = ingest([obo], None, layout)
    aliases = {a["alias"]: a for a in pq.read_table(layout.aliases).to_pylist()}
    assert (aliases["Pyrexia"]["kind"], aliases["Pyrexia"]["scope"]) == ("synonym_exact", "EXACT")
    assert (aliases["Hot"]["kind"], aliases["Hot"]["scope"]) == ("layperson", "BROAD")
    assert aliases["Fever"]["scope"] is None and aliases["Old fever"]["kind"] == "replaced_by"
    xrefs = {(r["entity_id"], r["db"], r["xref"]) for r in pq.read_table(layout.kg / "xrefs.parquet").to_pylist()}
    # the obsolete term's xref is not attached to anything live (only its name redirects)
    assert xrefs == {("X:2", "UMLS", "UMLS:C0015967"), ("X:2", "MSH", "MSH:D005334")}
    assert entry["counts"]["xrefs"] == 2


def test_umls_languages_and_xrefs(tmp_path, data_dir):
    layout = ArtifactLayout(tmp_path, "umls")
    files = [data_dir / "MRCONSO.RRF", data_dir / "MRSTY.RRF", data_dir / "MRREL.RRF"]
    ingest(files, None, layout, IngestOptions(languages=("en", "es")))
    aliases = {(a["alias"], a["lang"]) for a in pq.read_table(layout.aliases).to_pylist()}
    assert ("Fiebre fabricada", "es") in aliases and ("Fabricated fever", "en") in aliases
    xrefs = {(r["entity_id"], r["xref"]) for r in pq.read_table(layout.kg / "xrefs.parquet").to_pylist()}
    assert ("C9000001", "MSH:D000001") in xrefs and ("C9000001", "MSHSPA:D000001") in xrefs


def test_unknown_triple_column_role_is_a_user_error(tmp_path, data_dir):
    with pytest.raises(InputError, match=r"unknown role\(s\) \['haed'\]"):
        ingest([data_dir / "primekg_like.tsv"], None, ArtifactLayout(tmp_path, "pk"),
               IngestOptions(triple_columns={"haed": "x_id"}))
