"""The KB-trained name encoder (linking/encoder.py) on fabricated knowledge bases.

The part words are generated nonsense, so nothing depends on HPO. The pattern the encoder has to
pick up is the one clinical vocabularies are full of: a lay word and a Greek/Latin word that share
no characters ("small" / "hypoplasia", "large" / "hyperplasia") name the same thing, across many
entities, so a name it has never seen is placed next to its entity's other names.
"""

import numpy as np
import pytest

from linking.aliases import AliasTable
from linking.encoder import VOCAB_FILE, WEIGHTS_FILE, EncoderConfig, NameEncoder, name_features
from linking.train import train_name_encoder
from pipelines.errors import ArtifactError, InputError
from pipelines.normalize import normalize_alias


def _parts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    consonants, vowels = "bcdfgklmnprstvz", "aeiou"
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(list(consonants if i % 2 == 0 else vowels)) for i in range(7)))
    return sorted(words)


def _table(rows: list[tuple[str, int, str]]) -> AliasTable:
    alias, ents, kinds = zip(*rows)
    return AliasTable(list(alias), [normalize_alias(a) for a in alias], np.array(ents, np.int32), list(kinds))


def _kb(parts: list[str]) -> AliasTable:
    rows, ent = [], 0
    for p in parts:
        ent += 1
        rows += [(f"Hypoplasia of the {p}", ent, "label"), (f"Small {p}", ent, "layperson")]
        ent += 1
        rows += [(f"Hyperplasia of the {p}", ent, "label"), (f"Large {p}", ent, "layperson")]
    return _table(rows)


@pytest.fixture(scope="module")
def encoder():
    return train_name_encoder(_kb(_parts(60)), EncoderConfig(dim=32, epochs=60))


def test_encoder_features_are_words_and_marked_ngrams():
    feats = name_features("hypoplasia of the kidneys")
    assert "w:hypoplasia" in feats and "w:kidney" in feats  # content words, singular form
    assert "w:of" not in feats and "<of>" in feats  # stop words only as character n-grams
    assert {"<hy", "hyp", "<hyp", "<hypo", "ia>", "sia>"} <= set(feats)


def test_encoder_links_an_unseen_name_through_learned_word_correspondence(encoder):
    # two entities over a part word the encoder never saw, each with only its Greek/Latin name
    new = ["Hypoplasia of the quorvex", "Hyperplasia of the quorvex"]
    names = encoder.encode([normalize_alias(n) for n in new])
    small, large = encoder.encode(["small quorvex", "large quorvex"])
    assert names[0] @ small > names[1] @ small + 0.1  # "small" was learned to mean hypo-
    assert names[1] @ large > names[0] @ large + 0.1
    # and a plain string similarity cannot tell them apart: the lay words share nothing with either
    assert encoder.meta["entities"] == 120 and encoder.meta["steps"] > 0


def test_encoder_round_trips_through_safetensors_and_json(encoder, tmp_path):
    encoder.save(tmp_path)
    loaded = NameEncoder.load(tmp_path)
    names = ["small zzz", "hyperplasia of the kidney", "", "qqqq"]
    np.testing.assert_array_equal(loaded.encode(names), encoder.encode(names))
    assert loaded.config == encoder.config
    vectors = encoder.encode(names)
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1.0)
    assert not vectors[2].any()  # nothing known about an empty name: the zero vector, no NaN
    assert encoder.encode([]).shape == (0, encoder.dim)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="unreadable name encoder"):
        NameEncoder.load(tmp_path)
    (tmp_path / VOCAB_FILE).unlink()
    with pytest.raises(ArtifactError, match="unreadable name encoder"):
        NameEncoder.load(tmp_path)


def test_encoder_bounds_its_training_sample_and_encodes_in_chunks():
    small = train_name_encoder(_kb(_parts(60)), EncoderConfig(dim=16, epochs=2, max_entities=25))
    assert small.meta["entities"] == 25
    names = [f"small {p}" for p in _parts(30, seed=5)]
    np.testing.assert_allclose(small.encode(names, chunk=7), small.encode(names), rtol=1e-6)


def test_encoder_refuses_a_table_without_synonyms():
    table = _table([(f"Thing {p}", i, "label") for i, p in enumerate(_parts(30), 1)])
    with pytest.raises(ArtifactError, match="too few to train a name encoder"):
        train_name_encoder(table)


def _linker(table: AliasTable, **config):
    import spacy

    import linking.component  # noqa: F401

    nlp = spacy.blank("en")
    linker = nlp.add_pipe("kg_linker", config=config)
    n = int(table.entity_index.max())
    linker.initialize_kb(table, [f"X:{i}" for i in range(1, n + 1)], ["PHENOTYPE"] * n, np.zeros(n))
    return nlp, linker


def test_linker_trains_saves_and_reloads_its_name_encoder(tmp_path):
    import spacy

    parts = _parts(40, seed=1)
    # three names per entity, so the reranker's held-out round still leaves pairs to train on
    rows, ent = [], 0
    for p in parts:
        ent += 1
        rows += [(f"Hypoplasia of the {p}", ent, "label"), (f"Small {p}", ent, "layperson"),
                 (f"Underdeveloped {p}", ent, "layperson")]
        ent += 1
        rows += [(f"Hyperplasia of the {p}", ent, "label"), (f"Large {p}", ent, "layperson"),
                 (f"Overgrown {p}", ent, "layperson")]
    nlp, linker = _linker(_table(rows))
    assert linker.encoder is not None and linker.reranker.meta["name_encoder"]
    assert linker.reranker.meta["pool"] == {"char": 0, "stem": 0, "dense": 30, "enc": 30}
    before = [[(c.entity_index, round(c.score, 5)) for c in row]
              for row in linker.candidates(["Small " + parts[3], "hyperplastic " + parts[7]], 3)]
    label = {int(e): a for a, e, k in zip(linker.table.alias, linker.table.entity_index, linker.table.kind)
             if k == "label"}
    assert [label[row[0][0]] for row in before] == [f"Hypoplasia of the {parts[3]}", f"Hyperplasia of the {parts[7]}"]
    # the array fast path of candidates() combines string score and prior exactly as rank() does
    from linking.disambiguation import rank

    mentions = ["Small " + parts[3], "overgrown " + parts[9], "hypoplasia " + parts[1], "nothing like it"]
    saved_prior = linker.prior
    linker.prior = np.random.default_rng(0).random(len(saved_prior)).astype(np.float32)
    slow = rank(linker._hybrid(linker.table)(mentions, 4), linker.prior, None, linker.weights)
    fast = linker.candidates(mentions, 4)
    assert [[(r.entity_index, r.alias) for r in row] for row in fast] == \
        [[(r.entity_index, r.alias) for r in row] for row in slow]
    np.testing.assert_allclose([r.score for row in fast for r in row], [r.score for row in slow for r in row],
                               rtol=1e-5)
    linker.prior = saved_prior
    nlp.to_disk(tmp_path / "linker")
    saved = tmp_path / "linker" / "kg_linker"
    assert (saved / WEIGHTS_FILE).exists() and (saved / VOCAB_FILE).exists()
    loaded = spacy.load(tmp_path / "linker").get_pipe("kg_linker")
    after = [[(c.entity_index, round(c.score, 5)) for c in row]
             for row in loaded.candidates(["Small " + parts[3], "hyperplastic " + parts[7]], 3)]
    assert after == before
    # a reranker that needs the encoder, without it: a clear error, not silently worse ranking
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match="name encoder that is missing"):
        spacy.load(tmp_path / "linker").get_pipe("kg_linker").candidates(["Small " + parts[3]], 3)


def test_linker_without_name_encoder_and_pool_config_errors():
    import spacy

    import linking.component  # noqa: F401

    _, linker = _linker(_kb(_parts(30, seed=2)), name_encoder=False)
    assert linker.encoder is None and not linker.reranker.meta["name_encoder"]
    assert linker.reranker.meta["pool"]["char"] == 30 and linker.reranker.meta["pool"]["enc"] == 0
    with pytest.raises(InputError, match="unknown key"):
        spacy.blank("en").add_pipe("kg_linker", config={"candidate_pool": {"chars": 10}})
    with pytest.raises(InputError, match="non-negative integer"):
        spacy.blank("en").add_pipe("kg_linker", config={"candidate_pool": {"enc": -1}})
