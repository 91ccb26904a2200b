"""Mention detection beyond exact aliases: word-bag windows and the "sensitive" scored windows."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import spacy

import linking.component  # noqa: F401  (registers kg_linker)
from linking.aliases import AliasTable
from linking.candidates import Candidate
from linking.concepts import CONCEPTS_KEY, doc_concepts
from linking.config import LinkerConfig
from linking.phrases import BagMatcher, bag_key, bag_keys, select_windows, window_spans, word_stem
from pipelines.errors import ConfigError
from pipelines.normalize import normalize_alias

ROWS = [("Low-set ears", "label", 1), ("Muscle weakness", "label", 2), ("Hypotonia", "label", 3),
        ("Tendonitis", "label", 4), ("Short stature", "label", 5), ("Nail dysplasia", "label", 6),
        ("Abnormality of the ear", "label", 7), ("SET", "symbol", 8), ("Scoliosis", "label", 9),
        ("Collecting", "synonym_exact", 10), ("Seizures without fever", "synonym_exact", 11), ("No eyelashes", "label", 12)]
IDS = [f"HP:{i}" for i in range(1, 13)]


def _table(rows=ROWS):
    alias, kind, ent = zip(*rows)
    return AliasTable(list(alias), [normalize_alias(a) for a in alias], np.array(ent, np.int32), list(kind))


@pytest.fixture(scope="module")
def nlp_sents():
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def test_word_stems_pair_medical_suffixes_and_keep_distinct_concepts_apart():
    for a, b in [("hypotonia", "hypotonic"), ("scoliosis", "scoliotic"), ("microcephaly", "microcephalic"),
                 ("hypoplasia", "hypoplastic"), ("dysplasia", "dysplastic"), ("weakness", "weak"),
                 ("asymmetry", "asymmetric"), ("atrophy", "atrophic"), ("delayed", "delay")]:
        assert word_stem(a) == word_stem(b), (a, b)
    for a, b in [("tendonitis", "tendon"), ("collecting", "collected"), ("alcoholism", "alcohol"), ("limbic", "limb")]:
        assert word_stem(a) != word_stem(b), (a, b)
    # order-free, function words out, singular/American forms
    assert bag_key("ears low set") == bag_key("low set ears") == bag_key("the ear is low set")
    assert bag_key("abnormality of the ear") == bag_key("ear abnormalities")
    assert bag_key("tendonitis") != bag_key("tendon")


def _found(nlp, matcher, text):
    doc = nlp(text)
    return [(doc[s:e].text, sorted({matcher.table.alias[r] for r in rows})) for s, e, rows in matcher.find(doc)]


def test_bag_windows_find_paraphrases_inside_one_clause(nlp_sents):
    m = BagMatcher(_table())
    assert _found(nlp_sents, m, "The ears were low-set. Her muscles were weak and she was hypotonic.") == \
        [("ears were low-set", ["Low-set ears"]), ("muscles were weak", ["Muscle weakness"]),
         ("hypotonic", ["Hypotonia"])]
    assert _found(nlp_sents, m, "He had dysplastic nails, ear abnormalities and a scoliotic spine.") == \
        [("dysplastic nails", ["Nail dysplasia"]), ("ear abnormalities", ["Abnormality of the ear"]),
         ("scoliotic", ["Scoliosis"])]


def test_bag_windows_stop_at_clauses_sentences_and_case_sensitive_aliases(nlp_sents):
    m = BagMatcher(_table())
    assert _found(nlp_sents, m, "The ears. Low set.") == []              # a sentence bound closes a window
    assert _found(nlp_sents, m, "ears, set low") == []                   # so does a comma
    assert _found(nlp_sents, m, "stature was not short") == []           # and a negation word
    assert _found(nlp_sents, m, "the set was collected from a tendon") == []  # symbols, -ing and -itis kept apart
    assert _found(nlp_sents, m, "see http://example.org/low-set-ears now") == []  # a URL is no phrase
    # a name with a negation or coordinator has no bag: keyed by its other words it meant the opposite
    assert _found(nlp_sents, m, "Seizures with fever; eyelashes were long.") == []
    assert bag_key("seizures without fever") == bag_key("no eyelashes") == ""
    # longest window first; excluded tokens are not tried
    doc = nlp_sents("muscles were weak")
    assert m.find(doc, exclude={0}) == []


def _linker(config=None, rows=ROWS):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    linker = nlp.add_pipe("kg_linker", config={"rerank": False, **(config or {})})
    table = _table(rows)
    n = int(table.entity_index.max())
    linker.initialize_kb(table, [f"HP:{i}" for i in range(1, n + 1)], ["PHENOTYPE"] * n, np.zeros(n))
    return nlp


TEXT = "The ears were low-set and her muscles were weak. Short stature was noted."


def test_linker_links_bag_windows_by_default_and_the_switch_turns_them_off():
    doc = _linker()(TEXT)
    assert [(e.text, e.kb_id_) for e in doc.ents] == [("ears were low-set", "HP:1"), ("muscles were weak", "HP:2"),
                                                      ("Short stature", "HP:5")]
    # a window's candidates score below an exact hit on the same alias
    assert doc.ents[0]._.kg_score < doc.ents[2]._.kg_score
    assert doc_concepts(_linker({"windows": False})(TEXT)) == ["HP:5"]


def test_bag_keys_are_saved_with_the_linker_and_recomputed_for_older_ones(tmp_path):
    nlp = _linker()
    nlp.to_disk(tmp_path / "linker")
    aliases = tmp_path / "linker" / "kg_linker" / "aliases.parquet"
    assert "alias_bag" in pq.read_table(aliases).column_names
    assert doc_concepts(spacy.load(tmp_path / "linker")(TEXT)) == ["HP:1", "HP:2", "HP:5"]
    # the running-text settings are component settings: a load-time override, no rebuild
    off = spacy.load(tmp_path / "linker", config={"components": {"kg_linker": {"windows": False}}})
    assert doc_concepts(off(TEXT)) == ["HP:5"]
    # a linker saved before the column existed: the keys are computed at first use, same result
    from linking.kb import KnowledgeBase

    kb = KnowledgeBase.from_disk(tmp_path / "linker" / "kg_linker")
    assert kb.table.alias_bag is not None and kb.table.bags() == bag_keys(kb.table)
    kb.table.alias_bag = None
    assert kb.table.bags() == bag_keys(kb.table)


def test_scored_windows_keep_the_best_non_overlapping_windows_above_the_threshold(nlp_sents):
    scores = {"muscel weaknes": 0.75, "weaknes was": 0.9, "her muscel": 0.2, "her muscel weaknes": 0.6}

    def generator(texts, k):
        return [[Candidate(2, scores[t.lower()], "Muscle weakness", "label")] if t.lower() in scores else []
                for t in texts]
    doc = nlp_sents("Her muscel weaknes was severe.")

    def scored_windows(doc, covered, generator, k, min_score):
        windows = window_spans(doc, covered)
        return select_windows(windows, generator([doc[i:j].text for i, j in windows], k), min_score)
    # "weaknes was" ends on a function word: never proposed, whatever it would score
    assert [(doc[s:e].text, round(c[0].score, 2)) for s, e, c in scored_windows(doc, set(), generator, 3, 0.7)] == \
        [("muscel weaknes", 0.75)]
    assert scored_windows(doc, set(), generator, 3, 0.8) == []
    assert scored_windows(doc, {2}, generator, 3, 0.5) == []  # windows touching covered tokens are skipped


def test_sensitive_detection_links_a_misspelling_the_precise_mode_leaves():
    text = "Her muscle weaknes was obvious."
    assert doc_concepts(_linker()(text)) == []
    nlp = _linker({"detection": "sensitive", "window_min_score": 0.3})
    doc = nlp(text)
    assert [(e.text, e.kb_id_) for e in doc.ents] == [("muscle weaknes", "HP:2")]
    # nlp.pipe ranks the windows of a whole batch in one call: the same links as one document at a time
    texts = [text, "Nothing here.", TEXT, "Short statur and hypotonic muscles.", ""]
    one = [[(e.start, e.end, e.kb_id_, e._.kg_score) for e in nlp(t).ents] for t in texts]
    assert [[(e.start, e.end, e.kb_id_, e._.kg_score) for e in d.ents] for d in nlp.pipe(texts, batch_size=3)] == one
    assert any(one[3]) and one[1] == [] and one[4] == []


def test_detection_config_errors():
    with pytest.raises(ConfigError, match=r"\[linker -> detection\] expected one of \['precise', 'sensitive'\]"):
        LinkerConfig.from_dict({"detection": "greedy"})
    with pytest.raises(ConfigError, match=r"\[linker -> window_min_score\] must be > 0"):
        LinkerConfig.from_dict({"window_min_score": 0})
    assert LinkerConfig().component_config()["detection"] == "precise"


def test_document_and_mention_scores_and_pubtator_reading(tmp_path):
    from linking.scoring import document_scores, mention_scores, read_pubtator
    from pipelines.errors import InputError

    path = tmp_path / "gold.txt"
    path.write_text("1|t|Short stature\n1|a|The ears were low-set.\n1\t0\t13\tShort stature\tPhenotype\tHP:5\n"
                    "1\t18\t36\tears were low-set\tPhenotype\tHP:OLD\n\n"
                    "2|t|\n2|a|No findings.\n", encoding="utf-8")
    docs = read_pubtator(path)
    assert [(d.doc_id, d.text, d.mentions) for d in docs] == [
        ("1", "Short stature The ears were low-set.", [(0, 13, "HP:5"), (18, 36, "HP:OLD")]), ("2", "No findings.", [])]
    alt = {"HP:OLD": "HP:1"}
    # one right (overlapping, same id after alt_id), one wrong id, one outside the kept branch
    pred = [[(6, 13, "HP:5"), (22, 36, "HP:2"), (0, 5, "HP:9")], []]
    keep = {"HP:1", "HP:2", "HP:5"}
    m = mention_scores(pred, [d.mentions for d in docs], alt, keep)
    assert (m["precision"], m["recall"], m["predicted"], m["gold"]) == (0.5, 0.5, 2, 2)
    d = document_scores([{i for *_, i in p} for p in pred], [{i for *_, i in d.mentions} for d in docs], alt, keep)
    assert (d["precision"], d["recall"], d["f1"]) == (0.5, 0.5, 0.5)
    bad = tmp_path / "bad.txt"
    bad.write_text("1|a|text\n1\t0\tx\tt\tPhenotype\tHP:1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.txt:2: expected 'id<TAB>start"):
        read_pubtator(bad)
    bad.write_text("1|a|text\n1\t0\t99\tt\tPhenotype\tHP:1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.txt:2: offsets 0-99 outside document '1'"):
        read_pubtator(bad)
    bad.write_bytes(b"1|a|caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_pubtator(bad)
