"""A saved linker loads ready: every model and index the candidate generator uses is saved with the
spaCy pipeline and checksummed, and the first calls after ``spacy.load`` train and index nothing."""

import json

import numpy as np
import pytest

from linking.aliases import AliasTable
from linking.config import LinkerConfig
from pipelines.errors import ArtifactError, ConfigError
from pipelines.normalize import normalize_alias

PARTS = ["quillet", "zorbax", "flenmic", "trivane", "morlock", "spindrel", "caldera", "vexilon", "plumbar",
         "gantrix", "sorbeline", "tarquin", "welkomar", "dunmire", "ostrava", "pellucid", "rhombard", "scintar",
         "ulverin", "yarrowin", "brastine", "corvatic", "delphane", "emberline", "fandorel", "glimmerat"]
MENTIONS = ["Small quillet", "hyperplastic zorbax", "underdeveloped caldera", "Large scintar", "no such thing"]
TEXT = "The scan showed hypoplasia of the quillet and a large zorbax next to the caldera."
TRAINING = LinkerConfig.from_dict({"encoder": {"dim": 16, "epochs": 20}})


def _kb() -> AliasTable:
    rows, ent = [], 0
    for p in PARTS:
        ent += 1
        rows += [(f"Hypoplasia of the {p}", "label", ent), (f"Small {p}", "layperson", ent),
                 (f"Underdeveloped {p}", "layperson", ent)]
        ent += 1
        rows += [(f"Hyperplasia of the {p}", "label", ent), (f"Large {p}", "layperson", ent),
                 (f"Overgrown {p}", "layperson", ent)]
    alias, kind, ents = zip(*rows)
    return AliasTable(list(alias), [normalize_alias(a) for a in alias], np.array(ents, np.int32), list(kind))


def _saved(tmp_path, **config):
    import spacy

    import linking.component  # noqa: F401

    table = _kb()
    n = int(table.entity_index.max())
    nlp = spacy.blank("en")
    linker = nlp.add_pipe("kg_linker", config=config)
    linker.initialize_kb(table, [f"X:{i}" for i in range(1, n + 1)], ["PHENOTYPE"] * n,
                         np.arange(n, dtype=np.float64), np.random.default_rng(0).normal(size=(n + 1, 8)),
                         [f"a finding of the {PARTS[i // 2]}" for i in range(n)], training=TRAINING)
    expected = (_links(nlp(TEXT)), _ranked(linker.candidates(MENTIONS, 4)))
    nlp.to_disk(tmp_path / "linker")
    return tmp_path / "linker", expected, linker


def _links(doc):
    return [(e.text, e.kb_id_, e._.kg_candidates) for e in doc.ents]


def _ranked(rows):
    return [[(r.entity_index, round(r.score, 5), r.alias) for r in row] for row in rows]


def _forbid_building(monkeypatch):
    """Make every training, fitting and index-building entry point raise."""
    import faiss
    from sklearn.feature_extraction.text import TfidfVectorizer

    import linking.index
    import linking.keys
    import linking.names
    import linking.train

    def refuse(*args, **kwargs):
        raise AssertionError("a loaded linker trained, fitted or built an index")

    transform = TfidfVectorizer.transform

    def queries_only(self, docs):  # transforming the mentions is querying; the whole name list is not
        if len(docs) > len(MENTIONS):
            refuse()
        return transform(self, docs)

    for owner, name in ((linking.train, "train_models"), (linking.train, "train_name_encoder"),
                        (linking.train, "train_reranker"), (linking.index, "build_faiss"),
                        (linking.names, "stem_translation"), (linking.names.NameIndex, "_fit"),
                        (TfidfVectorizer, "fit"), (TfidfVectorizer, "fit_transform"),
                        (faiss.IndexFlatIP, "add"), (faiss.IndexHNSWFlat, "add")):
        monkeypatch.setattr(owner, name, refuse)
    monkeypatch.setattr(TfidfVectorizer, "transform", queries_only)
    parse = linking.keys.ParsedNames.__init__

    def parse_queries_only(self, norms, variants=None):  # the saved names' keys are read, not re-parsed
        if len(norms) > len(MENTIONS):
            refuse()
        parse(self, norms, variants)

    monkeypatch.setattr(linking.keys.ParsedNames, "__init__", parse_queries_only)


@pytest.mark.parametrize("config", [{}, {"rerank": False}, {"name_encoder": False, "candidate_pool": {"char": 20}}],
                         ids=["encoder+reranker", "untrained", "sparse-pool reranker"])
def test_linking_load_first_calls_train_and_index_nothing(tmp_path, monkeypatch, config):
    import spacy

    path, (links, ranked), built = _saved(tmp_path, **config)
    assert (built.reranker is None) == (config.get("rerank") is False)
    _forbid_building(monkeypatch)
    nlp = spacy.load(path)
    assert _links(nlp(TEXT)) == links and links
    assert _ranked(nlp.get_pipe("kg_linker").candidates(MENTIONS, 4)) == ranked


def test_linking_load_saves_no_pickle(tmp_path):
    path, _, _ = _saved(tmp_path)
    saved = path / "kg_linker"
    names = {p.name for p in saved.iterdir()}
    assert {"names_enc.faiss", "names_enc.npy", "names_char.npz", "reranker.json", "name_encoder.safetensors",
            "context_profiles.npz", "checksums.json"} <= names
    for p in saved.iterdir():
        if p.suffix in (".npy", ".npz"):
            np.load(p, allow_pickle=False)  # raises on a pickled object array
        assert not p.read_bytes().startswith(b"\x80"), p  # no pickle stream


def test_linking_load_refuses_a_changed_file_naming_both_digests(tmp_path):
    import spacy

    from pipelines.artifacts import file_sha256

    path, _, _ = _saved(tmp_path)
    saved = path / "kg_linker"
    recorded = json.loads((saved / "checksums.json").read_text())["sha256"]
    assert set(recorded) >= {"aliases.parquet", "names_enc.faiss", "reranker.json", "name_encoder.safetensors"}
    target = saved / "names_enc.npy"
    target.write_bytes(target.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    with pytest.raises(ArtifactError) as err:
        spacy.load(path)
    message = str(err.value)
    assert str(target) in message and recorded["names_enc.npy"] in message and file_sha256(target) in message
    assert "rebuild the linker" in message
    (saved / "names_enc.npy").unlink()
    with pytest.raises(ArtifactError, match=r"names_enc.npy: missing .*rebuild the linker"):
        spacy.load(path)
    (saved / "checksums.json").unlink()
    with pytest.raises(ArtifactError, match=r"no checksums.json .*rebuild the linker"):
        spacy.load(path)


def test_linking_config_from_dict_locations_and_round_trip():
    config = LinkerConfig.from_dict({"top_k": 3, "weights": {"context": 0.0}, "encoder": {"dim": 32, "ngrams": [3, 4]},
                                     "reranker": {"hidden": []}, "candidate_pool": {"enc": 50}})
    assert config.encoder.ngrams == (3, 4) and config.reranker.hidden == () and config.weights.context == 0.0
    assert LinkerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.component_config()["weights"]["context"] == 0.0 and "encoder" not in config.component_config()
    for data, message in (({"top_k": 0}, r"^\[linker -> top_k\] must be > 0, got 0$"),
                          ({"topk": 1}, r"^\[linker\] unknown key\(s\) \['topk'\]"),
                          ({"encoder": {"dim": -1}}, r"^\[linker -> encoder -> dim\] must be > 0, got -1$"),
                          ({"encoder": {"dims": 8}}, r"^\[linker -> encoder\] unknown key\(s\) \['dims'\]"),
                          ({"reranker": {"max_queries": 0}}, r"^\[linker -> reranker -> max_queries\] must be > 0"),
                          ({"context_window": -1}, r"^\[linker -> context_window\] must be >= 0, got -1$"),
                          ({"fuzzy_weights": {"bm25": 1.0}}, r"^\[linker -> fuzzy_weights\] unknown key"),
                          ({"weights": 3}, r"^\[linker -> weights\] must be a mapping, got 3$")):
        with pytest.raises(ConfigError, match=message):
            LinkerConfig.from_dict(data)


def test_linking_build_linker_passes_the_config_to_add_pipe_and_training(tiny_build, tmp_path):
    import shutil

    import spacy

    from linking.build import build_linker
    from pipelines.artifacts import ArtifactLayout

    shutil.copytree(tiny_build.root, tmp_path / "copy")
    tiny_build = ArtifactLayout(tmp_path / "copy", tiny_build.name)
    config = LinkerConfig.from_dict({"top_k": 2, "context_window": 7, "rerank": False})
    build_linker(tiny_build, "transe", config)
    linker = spacy.load(tiny_build.linker).get_pipe("kg_linker")
    assert linker.config.top_k == 2 and linker.config.context_window == 7 and linker.reranker is None
    manifest = json.loads(tiny_build.manifest.read_text())
    assert manifest["stages"]["linker"]["parameters"]["config"]["top_k"] == 2
