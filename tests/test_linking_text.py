"""Running text: abbreviations defined in the document, negation and uncertainty, concept lists."""

import numpy as np
import pytest
import spacy

import linking.component  # noqa: F401  (registers kg_linker)
from linking.abbreviations import best_long_form, find_abbreviations, is_short_form
from linking.aliases import AliasTable
from linking.concepts import CONCEPTS_KEY, doc_concepts
from linking.config import LinkerConfig
from linking.negation import NegationRules, ScopeFinder
from pipelines.errors import ConfigError
from pipelines.normalize import normalize_alias


@pytest.fixture(scope="module")
def nlp_sents():
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def _abbr(nlp, text):
    return [(a.long.text, a.short.text, [u.text for u in a.uses]) for a in find_abbreviations(nlp(text))]


def test_schwartz_hearst_long_form_then_short_form(nlp_sents):
    text = ("The proband had nevoid basal cell carcinoma syndrome (NBCCS). NBCCS was confirmed; "
            "NBCCS-related cysts were removed.")
    assert _abbr(nlp_sents, text) == [("nevoid basal cell carcinoma syndrome", "NBCCS", ["NBCCS", "NBCCS"])]
    # the long form is the shortest run of words that explains every letter, the first at a word start
    assert _abbr(nlp_sents, "We saw increased intracranial pressure (ICP) twice.")[0][0] == "intracranial pressure"


def test_schwartz_hearst_short_form_then_long_form_and_non_abbreviations(nlp_sents):
    assert _abbr(nlp_sents, "Both had ASD (atrial septal defect). The ASD was closed.") == \
        [("atrial septal defect", "ASD", ["ASD"])]
    assert _abbr(nlp_sents, "The difference (p < 0.05) was significant (see Table 1).") == []
    assert _abbr(nlp_sents, "He was tall (height 190 cm).") == []
    assert best_long_form("HSF", "we studied heat shock transcription factor") == "heat shock transcription factor"
    assert best_long_form("XYZ", "heat shock factor") is None
    assert is_short_form("NBCCS") and not is_short_form("1") and not is_short_form("a very long phrase")


def _marks(nlp, text, words, rules=NegationRules()):
    doc = nlp(text)
    spans = [doc.char_span(text.index(w), text.index(w) + len(w)) for w in words]
    return ScopeFinder(rules).mark(doc, spans)


def test_negation_and_uncertainty_scopes(nlp_sents):
    assert _marks(nlp_sents, "He had no seizures or hypotonia.", ["seizures", "hypotonia"]) == [(True, False)] * 2
    assert _marks(nlp_sents, "Hypotonia was not observed. Seizures were frequent.", ["Hypotonia", "Seizures"]) == \
        [(True, False), (False, False)]
    assert _marks(nlp_sents, "Possible ptosis, but clear microcephaly.", ["ptosis", "microcephaly"]) == \
        [(False, True), (False, False)]
    assert _marks(nlp_sents, "Scoliosis cannot be excluded.", ["Scoliosis"]) == [(False, True)]
    assert _marks(nlp_sents, "He didn't have ptosis.", ["ptosis"]) == [(True, False)]
    assert _marks(nlp_sents, "There was no increase in seizures.", ["seizures"]) == [(False, False)]  # pseudo-trigger
    assert _marks(nlp_sents, "She denies headache; fever was present.", ["headache", "fever"]) == \
        [(True, False), (False, False)]


def test_negation_scope_length_and_extra_triggers(nlp_sents):
    text = "No history of one two three four five six seven eight nine ptosis."
    assert _marks(nlp_sents, text, ["ptosis"]) == [(False, False)]  # beyond 8 tokens
    assert _marks(nlp_sents, text, ["ptosis"], NegationRules(scope=20)) == [(True, False)]
    extra = NegationRules(extra={"pre_negation": ("exclusion of",)})
    assert _marks(nlp_sents, "After exclusion of ptosis.", ["ptosis"], extra) == [(True, False)]
    assert _marks(nlp_sents, "After exclusion of ptosis.", ["ptosis"]) == [(False, False)]


def _linker(config=None):
    rows = [("Nevoid basal cell carcinoma syndrome", "label", 1), ("Seizure", "label", 2), ("Seizures", "synonym", 2),
            ("Ptosis", "label", 3), ("Atrial septal defect", "label", 4), ("ASD", "abbreviation", 5),
            ("Autism spectrum disorder", "label", 5)]
    alias, kind, ent = zip(*rows)
    table = AliasTable(list(alias), [normalize_alias(a) for a in alias], np.array(ent, np.int32), list(kind))
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    linker = nlp.add_pipe("kg_linker", config={"rerank": False, **(config or {})})
    linker.initialize_kb(table, ["HP:1", "HP:2", "HP:3", "HP:4", "HP:5"], ["PHENOTYPE"] * 5, np.zeros(5))
    return nlp


def test_linker_links_defined_short_forms_and_marks_negation():
    nlp = _linker()
    doc = nlp("She has nevoid basal cell carcinoma syndrome (NBCCS) and no seizures. Her NBCCS was mild. "
              "The child had an atrial septal defect (ASD). The ASD was closed. Possible ptosis.")
    by_text = {(s.text, s.start_char): s for s in doc.spans[CONCEPTS_KEY]}
    assert [s.kb_id_ for (t, _), s in sorted(by_text.items(), key=lambda kv: kv[0][1]) if t == "NBCCS"] == ["HP:1"] * 2
    # ASD is an alias of autism spectrum disorder, but this document defines it as atrial septal defect
    asd = [e for e in doc.ents if e.text == "ASD"]
    assert [e.kb_id_ for e in asd] == ["HP:4", "HP:4"] and asd[0]._.abbreviation_of == "atrial septal defect"
    seizures = [s for s in doc.spans[CONCEPTS_KEY] if s.kb_id_ == "HP:2"]
    assert seizures and all(s._.negated for s in seizures)
    assert [s._.uncertain for s in doc.spans[CONCEPTS_KEY] if s.kb_id_ == "HP:3"] == [True]
    assert doc_concepts(doc) == ["HP:1", "HP:4", "HP:3"]
    assert "HP:2" in doc_concepts(doc, include_negated=True)
    assert "HP:3" not in doc_concepts(doc, include_uncertain=False)


def test_linker_switches_off_abbreviations_and_negation():
    doc = _linker({"abbreviations": False, "negation": False})(
        "She has nevoid basal cell carcinoma syndrome (NBCCS) and no seizures. Her NBCCS was mild.")
    assert "NBCCS" not in {s.text for s in doc.spans[CONCEPTS_KEY]}
    assert not any(s._.negated for s in doc.spans[CONCEPTS_KEY]) and "HP:2" in doc_concepts(doc)


def test_text_config_errors():
    with pytest.raises(ConfigError, match=r"\[linker -> negation_scope\] must be > 0"):
        LinkerConfig.from_dict({"negation_scope": 0})
    with pytest.raises(ConfigError, match=r"\[linker -> negation_triggers\] expected lists of phrases"):
        LinkerConfig.from_dict({"negation_triggers": {"pre": ["nope"]}})
    cfg = LinkerConfig.from_dict({"negation_triggers": {"pre_negation": ["exclusion of"]}})
    assert cfg.component_config()["negation_triggers"] == {"pre_negation": ["exclusion of"]}


def _coord_linker(config=None):
    rows = [("Aplastic nails", "label", 1), ("Hypoplastic nails", "label", 2), ("Short stature", "label", 3),
            ("Short limbs", "label", 4), ("Nail dystrophy", "label", 5)]
    alias, kind, ent = zip(*rows)
    table = AliasTable(list(alias), [normalize_alias(a) for a in alias], np.array(ent, np.int32), list(kind))
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("kg_linker", config={"rerank": False, **(config or {})}).initialize_kb(
        table, ["A", "H", "S", "L", "D"], ["PHENOTYPE"] * 5, np.zeros(5))
    return nlp


def test_coordinated_conjuncts_get_their_own_concept():
    nlp = _coord_linker()
    doc = nlp("He had aplastic, dystrophic or hypoplastic nails and short stature and limbs.")
    got = [(s.text, s.kb_id_, s._.kg_text) for s in doc.spans[CONCEPTS_KEY]]
    assert got == [("aplastic", "A", "aplastic nails"), ("hypoplastic nails", "H", None),
                   ("short stature", "S", None), ("limbs", "L", "short limbs")]
    assert [e.kb_id_ for e in doc.ents] == ["A", "H", "S", "L"]  # conjunct tokens do not overlap their match
    # a reading that is no alias adds nothing; the switch turns the expansion off
    assert doc_concepts(nlp("Dystrophic or hypoplastic nails.")) == ["H"]
    assert doc_concepts(_coord_linker({"coordination": False})("Aplastic or hypoplastic nails.")) == ["H"]


def test_document_intake_counts_what_it_skips(tmp_path):
    from linking.documents import Intake

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Seizures were seen.")
    (docs / "b.txt").write_text("   \n")
    (docs / "c.txt").write_bytes(b"bad \xff byte")
    (docs / "d.txt").write_text("x" * 50)
    intake = Intake(docs, max_chars=40)
    assert list(intake) == [("a", "Seizures were seen.")]
    assert intake.skipped == {"empty": 1, "not_utf8": 1, "too_long": 1}
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"id": "p1", "text": "Ptosis."}\n{"id": "p2", "text": 5}\n')
    intake = Intake(jsonl)
    assert list(intake) == [("p1", "Ptosis.")] and intake.skipped == {"not_text": 1}
    with pytest.raises(Exception, match="no such file or directory"):
        list(Intake(tmp_path / "missing"))
    jsonl.write_text('{"id": "p1"}\n')
    with pytest.raises(Exception, match=r"d.jsonl:1: expected an object with a \"text\" field"):
        list(Intake(jsonl))


def test_cli_link_streams_a_directory_as_jsonl_and_pubtator(tmp_path, tiny_build):
    import json

    from tests.conftest import run_cli

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "p1.txt").write_text("The boy had no seizures. He had a clouded lens.")
    (docs / "p2.txt").write_text("")
    (docs / "p3.txt").write_bytes(b"\xff\xfe")
    root, name = str(tiny_build.root), tiny_build.name
    r = run_cli("link", "--name", name, "--root", root, "--input", str(docs))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["id"] for row in rows] == ["p1"]
    spans = {s["text"]: s for s in rows[0]["spans"]}
    assert spans["seizures"]["negated"] is True and spans["clouded lens"]["negated"] is False
    assert rows[0]["concepts"] == ["HP:9000003"]
    assert "skipped 1 document(s): empty" in r.stderr and "skipped 1 document(s): not utf8" in r.stderr
    r = run_cli("link", "--name", name, "--root", root, "--input", str(docs), "--format", "pubtator")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["p1|t|", "p1|a|The boy had no seizures. He had a clouded lens."]
    assert [ln.split("\t")[1:4] + ln.split("\t")[5:] for ln in lines[2:] if ln.strip()] == [["34", "46", "clouded lens", "HP:9000003"]]
