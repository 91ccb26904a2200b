import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from linking.aliases import AliasTable, is_case_sensitive
from linking.build import doc_links, load_linker
from linking.candidates import ExactAliasGenerator, TfidfCharGenerator
from linking.index import build_faiss, load_entity_index
from pipelines.errors import ArtifactError, InputError


def _table(rows):
    alias, kind, ent = zip(*rows)
    from pipelines.normalize import normalize_alias

    return AliasTable(list(alias), [normalize_alias(a) for a in alias], np.array(ent, dtype=np.int32), list(kind))


def test_case_sensitivity_rule():
    assert is_case_sensitive("CAT", "symbol") and is_case_sensitive("ASD", "synonym")
    assert not is_case_sensitive("Seizure", "label") and not is_case_sensitive("Myopia", "synonym")


def test_exact_generator_is_case_and_punctuation_insensitive():
    gen = ExactAliasGenerator(_table([("Café-au-lait spot", "label", 1), ("Seizure", "label", 2), ("Seizure", "synonym", 3)]))
    assert [c.entity_index for c in gen(["cafe au LAIT spot"], 5)[0]] == [1]
    assert [c.entity_index for c in gen(["seizure!"], 5)[0]] == [2, 3]  # label ranks above synonym
    with pytest.raises(InputError, match="mentions must be a list of strings"):
        gen("seizure", 5)
    with pytest.raises(InputError, match="mention 1 must be a string"):
        gen(["ok", 3], 5)


def test_tfidf_generator_finds_misspellings_and_survives_save_load(tmp_path):
    table = _table([("Short stature", "label", 1), ("Tall stature", "label", 2), ("Seizure", "label", 3)])
    gen = TfidfCharGenerator(table)
    assert gen(["short statre"], 2)[0][0].entity_index == 1
    gen.save(tmp_path)
    again = TfidfCharGenerator.load(tmp_path, table)
    assert [c.entity_index for c in again(["tall statue"], 3)[0]] == [c.entity_index for c in gen(["tall statue"], 3)[0]]


def test_tfidf_generator_beyond_exact_max_is_served_by_faiss_and_rescored_exactly(tmp_path):
    rng = np.random.default_rng(0)
    words = sorted({"".join(rng.choice(list("bcdfgklmnprstvz")) + rng.choice(list("aeiou")) for _ in range(4))
                    for _ in range(200)})
    rows = [(f"{p} {w} syndrome", "label", i) for i, (w, p) in
            enumerate(((w, p) for w in words for p in ("Hypoplastic", "Enlarged")), 1)]
    table = _table(rows)
    exact = TfidfCharGenerator(table)
    approx = TfidfCharGenerator(table, exact_max=50, svd_dim=64)
    assert exact.ann is None and approx.ann is not None and approx.ann_params["type"] == "IndexFlatIP"
    queries = [f"{p} {w[:-1]}{w[-1]}{w[-1]} syndrom" for w in words[::7] for p in ("hypoplastc", "enlargd")]
    got, want = approx(queries, 5), exact(queries, 5)
    # the approximate neighbours are re-scored exactly: same best entity and same cosine
    assert [r[0].entity_index for r in got] == [r[0].entity_index for r in want]
    np.testing.assert_allclose([r[0].score for r in got], [r[0].score for r in want], rtol=1e-5)
    approx.save(tmp_path)
    assert (tmp_path / "tfidf_ann.faiss").exists() and (tmp_path / "tfidf_svd.npy").exists()
    again = TfidfCharGenerator.load(tmp_path, table, exact_max=50)
    assert again.ann_params.get("loaded") and [[c.entity_index for c in r] for r in again(queries, 5)] == \
        [[c.entity_index for c in r] for r in got]
    (tmp_path / "tfidf_ann.faiss").write_bytes(b"not an index")
    with pytest.raises(ArtifactError, match="unreadable TF-IDF index"):
        TfidfCharGenerator.load(tmp_path, table, exact_max=50)


def test_linker_links_longest_match_and_respects_case(tiny_build):
    nlp = load_linker(tiny_build)
    doc = nlp("Both lens opacities and Near sightedness; LOP was seen, but lop is a verb. CAT carriers had a seizure.")
    links = {d["text"]: d for d in doc_links(doc)}
    assert links["lens opacities"]["kb_id"] == "HP:9000003"
    assert links["Near sightedness"]["kb_id"] == "HP:9000004"
    assert links["LOP"]["kb_id"] == "HP:9000003"
    assert "lop" not in links  # abbreviations match with their case only
    assert links["CAT"]["kb_id"] == "NCBIGene:9002" and links["CAT"]["label"] == "GENE"
    assert links["seizure"]["kb_id"] == "HP:9000006"
    assert 0 < links["seizure"]["score"] <= 1 and links["seizure"]["candidates"][0]["entity_id"] == "HP:9000006"
    # "Abnormality of the eye" must win over any shorter alias inside it
    doc = nlp("An abnormality of the eye.")
    assert [(e.text, e.kb_id_) for e in doc.ents] == [("abnormality of the eye", "HP:9000002")]


def test_spacy_load_finds_the_factory_through_the_entry_point(tiny_build):
    """A fresh interpreter that never imports our package can spacy.load() the linker."""
    code = ("import sys, spacy; assert 'linking' not in sys.modules; nlp = spacy.load(sys.argv[1]); "
            "d = nlp('a seizure'); print([(e.text, e.kb_id_) for e in d.ents])")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_build.linker)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "('seizure', 'HP:9000006')" in out.stdout


def test_linker_rejects_empty_kb_and_non_text():
    import spacy

    import linking.component  # noqa: F401

    nlp = spacy.blank("en")
    linker = nlp.add_pipe("kg_linker")
    with pytest.raises(ArtifactError, match="has no knowledge base"):
        nlp("text")
    with pytest.raises(InputError, match="empty knowledge base"):
        linker.initialize_kb(_table([("x", "label", 1)]).filter_short(3), ["E1"], ["T"], np.zeros(1))
    from linking.build import link_texts

    with pytest.raises(InputError, match="text 1: expected a string"):
        list(link_texts(nlp, ["ok", 5]))


def test_candidates_after_reload(tiny_build):
    linker = load_linker(tiny_build).get_pipe("kg_linker")
    ranked = linker.candidates(["colour blindnes", "Myopia"], 3)
    assert linker.entity_ids[ranked[0][0].entity_index - 1] == "HP:9000007"
    assert linker.entity_ids[ranked[1][0].entity_index - 1] == "HP:9000004"


def test_faiss_index_rows_map_to_entity_ids(tiny_build):
    idx = load_entity_index(tiny_build)
    vectors = np.load(tiny_build.embeddings("transe") / "entities.npy")
    scores, found = idx.search(vectors[[3, 5]], 1)
    assert found[:, 0].tolist() == [3, 5]
    assert idx.meta["type"] == "IndexFlatIP" and idx.meta["ntotal"] == len(idx.entity_ids)


def test_faiss_index_id_mismatch_is_detected(tiny_build, tmp_path):
    import shutil

    from pipelines.artifacts import ArtifactLayout

    layout = ArtifactLayout(tmp_path, "tiny")
    shutil.copytree(tiny_build.index, layout.index)
    ids = pq.read_table(layout.index / "entity_ids.parquet")
    pq.write_table(ids.slice(0, ids.num_rows - 1), layout.index / "entity_ids.parquet")
    with pytest.raises(ArtifactError, match="index has .* rows but entity_ids.parquet has"):
        load_entity_index(layout)
    pq.write_table(ids.take(list(reversed(range(ids.num_rows)))), layout.index / "entity_ids.parquet")
    with pytest.raises(ArtifactError, match="does not match the ids"):
        load_entity_index(layout)


def test_faiss_rejects_empty_vectors():
    with pytest.raises(InputError, match="empty knowledge base"):
        build_faiss(np.zeros((0, 8), dtype=np.float32))


def test_linker_links_spans_of_an_earlier_ner_component(tiny_build):
    import spacy

    nlp = spacy.load(tiny_build.linker)
    nlp.get_pipe("kg_linker").use_ner_spans = True
    ruler = nlp.add_pipe("entity_ruler", before="kg_linker")
    ruler.add_patterns([{"label": "FINDING", "pattern": "clouded lenz"}])
    doc = nlp("The exam showed a clouded lenz today.")
    assert [(e.text, e.kb_id_) for e in doc.ents] == [("clouded lenz", "HP:9000003")]
    assert doc.ents[0]._.kg_candidates[0][0] == "HP:9000003"
