"""The learned candidate reranker and context similarity, on a fabricated knowledge base.

Body-part words are invented, so nothing here depends on HPO; the name patterns are the ones
clinical vocabularies use ("Abnormality of the X" / "Abnormal X", "Hypoplasia of the X" /
"Small X"), which is what the reranker and the stem translation have to learn from the table.
"""

import json

import numpy as np
import pytest

from linking.aliases import AliasTable
from linking.context import ContextModel, context_words
from linking.features import FEATURES
from linking.keys import initials
from linking.names import NameIndex, stem_translation
from linking.reranker import RerankedGenerator, Reranker
from linking.train import train_reranker, training_pairs
from pipelines.errors import ArtifactError, ConfigError, InputError
from pipelines.normalize import normalize_alias

PARTS = ["quillet", "zorbax", "flenmic", "trivane", "morlock", "spindrel", "caldera", "vexilon", "plumbar",
         "gantrix", "sorbeline", "tarquin", "welkomar", "dunmire", "ostrava", "pellucid", "rhombard", "scintar",
         "ulverin", "yarrowin", "brastine", "corvatic", "delphane", "emberline"]


def _kb():
    """Per invented part: an 'abnormality' entity and a 'hypoplasia' entity, several names each."""
    rows = []
    ent = 0
    for part in PARTS:
        ent += 1
        rows += [(f"Abnormality of the {part}", "label", ent), (f"Abnormal {part}", "synonym_exact", ent),
                 (f"{part.capitalize()} anomaly", "synonym_exact", ent)]
        ent += 1
        rows += [(f"Hypoplasia of the {part}", "label", ent), (f"Small {part}", "layperson", ent),
                 (f"Underdeveloped {part}", "layperson", ent)]
    alias, kind, ents = zip(*rows)
    return AliasTable(list(alias), [normalize_alias(a) for a in alias], np.array(ents, dtype=np.int32), list(kind))


@pytest.fixture(scope="module")
def kb():
    return _kb()


@pytest.fixture(scope="module")
def reranker(kb):
    # 48 training queries: below MLP_MIN_QUERIES, so this is the logistic-regression fallback
    return train_reranker(kb, np.zeros(int(kb.entity_index.max()) + 1, np.float32))


def test_rerank_initials_skip_stop_words():
    assert initials("total lung capacity") == "tlc" and initials("abnormality of the eye") == "ae"
    assert initials("seizure") == ""


def test_rerank_stem_translation_learns_from_same_entity_names(kb):
    index = NameIndex(kb)
    vocab = index.vectorizers["stem"].vocabulary_
    matrix = stem_translation(kb, vocab)
    assert matrix[vocab["small"], vocab["hypop"]] > 0.5  # "Small X" and "Hypoplasia of the X" share entities
    assert matrix[vocab["small"], vocab["small"]] == 0  # identity is added on the query side, not here


def test_rerank_training_holds_out_one_alias_per_entity(kb):
    q, ents, f, target, n_held = training_pairs(kb, np.zeros(len(PARTS) * 2 + 1, np.float32))
    assert n_held == len(PARTS) * 2  # every entity has a non-label alias to hold out
    assert f.shape == (len(q), len(FEATURES)) and target.any() and not target.all()
    assert len(set(q[target].tolist())) >= 0.9 * n_held  # the right entity is in nearly every pool


def test_rerank_links_unseen_names_and_round_trips_as_json(kb, reranker):
    gen = RerankedGenerator(NameIndex(kb), reranker, np.zeros(len(PARTS) * 2 + 1, np.float32))
    found = gen(["Zorbax abnormality", "trivane small", "Hypoplastic gantrix"], 3)
    label = {int(e): a for a, e, k in zip(kb.alias, kb.entity_index, kb.kind) if k == "label"}
    assert [label[c[0].entity_index] for c in found] == ["Abnormality of the zorbax", "Hypoplasia of the trivane",
                                                         "Hypoplasia of the gantrix"]
    assert all(0 < c.score <= 1 for row in found for c in row) and reranker.meta["hidden"] == []
    again = Reranker.from_json(json.loads(json.dumps(reranker.to_json())))
    x = np.random.default_rng(0).normal(size=(5, len(FEATURES))).astype(np.float32)
    np.testing.assert_allclose(again.score(x), reranker.score(x), rtol=1e-6)
    assert gen([], 3) == []
    with pytest.raises(InputError, match="mention 0 must be a string"):
        gen([None], 3)


def test_rerank_refuses_mismatched_or_unreadable_weights(reranker, tmp_path):
    data = reranker.to_json()
    with pytest.raises(ArtifactError, match="do not match this version"):
        Reranker.from_json({**data, "features": data["features"][:-1]})
    with pytest.raises(ArtifactError, match="layer shapes"):
        Reranker.from_json({**data, "weights": [w[:-1] for w in data["weights"]]})
    (tmp_path / "reranker.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable reranker"):
        Reranker.load(tmp_path / "reranker.json")


def test_rerank_refuses_a_table_without_synonyms():
    table = AliasTable(["Alpha thing", "Beta thing"], ["alpha thing", "beta thing"], np.array([1, 2], np.int32),
                       ["label", "label"])
    with pytest.raises(ArtifactError, match="too few to train"):
        train_reranker(table, np.zeros(3, np.float32))


def _nlp(kb, **config):
    import spacy

    import linking.component  # noqa: F401

    nlp = spacy.blank("en")
    linker = nlp.add_pipe("kg_linker", config=config)
    n = int(kb.entity_index.max())
    descriptions = [f"A structural anomaly of the {PARTS[i // 2]} seen on imaging" if i % 2 == 0 else
                    f"Underdevelopment of the {PARTS[i // 2]} with reduced size" for i in range(n)]
    linker.initialize_kb(kb, [f"X:{i}" for i in range(1, n + 1)], ["PHENOTYPE"] * n, np.zeros(n), None, descriptions)
    return nlp, linker


def test_linker_with_reranker_survives_to_disk_and_spacy_load(kb, tmp_path):
    import spacy

    nlp, linker = _nlp(kb)
    assert linker.reranker is not None
    before = [[(r.entity_index, round(r.score, 5)) for r in row] for row in linker.candidates(["Quillet anomalous"], 4)]
    nlp.to_disk(tmp_path / "linker")
    assert (tmp_path / "linker" / "kg_linker" / "reranker.json").exists()
    loaded = spacy.load(tmp_path / "linker").get_pipe("kg_linker")
    after = [[(r.entity_index, round(r.score, 5)) for r in row] for row in loaded.candidates(["Quillet anomalous"], 4)]
    assert before == after and loaded.descriptions == linker.descriptions


def test_context_similarity_decides_between_entities_sharing_an_alias():
    import spacy

    import linking.component  # noqa: F401

    table = AliasTable(["Morlock spot", "Morlock spot"], ["morlock spot", "morlock spot"], np.array([1, 2], np.int32),
                       ["label", "label"])
    descriptions = ["A pale patch of the retina seen on fundoscopy", "A brown macule of the skin of the trunk"]
    for weights, expected in (({"context": 0.5}, ["X:2", "X:1"]), ({"context": 0.0}, ["X:1", "X:1"])):
        nlp = spacy.blank("en")
        linker = nlp.add_pipe("kg_linker", config={"rerank": False, "weights": weights})
        linker.initialize_kb(table, ["X:1", "X:2"], ["PHENOTYPE"] * 2, np.zeros(2), None, descriptions)
        docs = [nlp("On the skin of the trunk a Morlock spot was found."),
                nlp("Fundoscopy showed a Morlock spot in the retina.")]
        assert [d.ents[0].kb_id_ for d in docs] == expected


def test_context_model_ignores_stop_words_and_handles_empty_context():
    model = ContextModel(["", "retina fundus"])
    assert context_words("The Retinal fundus of it") == ["retina", "fundus"]
    assert model.similarity(["of the and"], [[1, 2]]) == [{}]
    sims = model.similarity(["retinal"], [[1, 2]])[0]
    assert sims[2] > 0 and sims[1] == 0
    # the per-mention fast path computes what sklearn's transform would
    model = ContextModel(["", "retina fundus pale patch", "skin brown macule trunk", "retinal skin skin"])
    contexts = ["fundoscopy showed a pale retinal patch", "the trunk skin had a skin macule"]
    expected = (model.profiles[[1, 2, 3]] @ model.vectors(contexts).T).toarray().T
    got = [[row[e] for e in (1, 2, 3)] for row in model.similarity(contexts, [[1, 2, 3]] * 2)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_linker_refuses_unknown_weight_keys():
    import spacy

    import linking.component  # noqa: F401

    with pytest.raises(ConfigError, match=r"weights\] unknown key\(s\) \['stringg'\]"):
        spacy.blank("en").add_pipe("kg_linker", config={"weights": {"stringg": 1.0}})
