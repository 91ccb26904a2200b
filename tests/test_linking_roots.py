"""``allowed_roots``: linking restricted to branches of the ontology."""

import numpy as np
import pytest

from pipelines.errors import ConfigError


def _load(tiny_build, **overrides):
    import spacy

    return spacy.load(tiny_build.linker, config={"components": {"kg_linker": overrides}} if overrides else {})


def test_hierarchy_is_saved_with_the_linker_and_checksummed(tiny_build):
    import json

    import pyarrow.parquet as pq

    edges = np.load(tiny_build.linker / "kg_linker" / "hierarchy.npy", allow_pickle=False)
    ents = pq.read_table(tiny_build.entities, columns=["entity_id", "index"]).to_pylist()
    by_index = {r["index"]: r["entity_id"] for r in ents}
    pairs = {(by_index[c], by_index[p]) for c, p in edges.tolist()}
    assert ("HP:9000003", "HP:9000002") in pairs and ("HP:9000006", "HP:9000005") in pairs  # lens opacity, seizure
    assert "hierarchy.npy" in json.loads((tiny_build.linker / "kg_linker" / "checksums.json").read_text())["sha256"]


def test_allowed_roots_keep_one_branch(tiny_build):
    text = "The child had a seizure and lens opacity."
    everything = {e.kb_id_ for e in _load(tiny_build)(text).ents}
    assert {"HP:9000006", "HP:9000003"} <= everything
    eye = _load(tiny_build, allowed_roots=["HP:9000002"])
    doc = eye(text)
    assert {e.kb_id_ for e in doc.ents} == {"HP:9000003"}
    assert {s.kb_id_ for s in doc.spans["kg_concepts"]} == {"HP:9000003"}
    linker = eye.get_pipe("kg_linker")
    seizure, lens = linker.candidates(["seizure", "lens opacity"], 5)
    assert seizure == [] and lens and linker.entity_ids[lens[0].entity_index - 1] == "HP:9000003"
    # the root itself and several roots
    both = _load(tiny_build, allowed_roots=["HP:9000002", "HP:9000006"])
    assert {e.kb_id_ for e in both(text).ents} == {"HP:9000003", "HP:9000006"}


def test_unknown_root_is_one_clear_error(tiny_build):
    with pytest.raises(ConfigError, match=r"\[linker -> allowed_roots\] unknown entity id\(s\) \['HP:0000118'\]"):
        _load(tiny_build, allowed_roots=["HP:0000118"])
    from linking.config import LinkerConfig

    with pytest.raises(ConfigError, match=r"\[linker -> allowed_roots\] expected a list"):
        LinkerConfig.from_dict({"allowed_roots": "HP:9000002"})


def test_unknown_root_through_the_cli_is_one_line(tiny_build, tmp_path):
    from tests.conftest import run_cli

    cfg = tmp_path / "linker.yaml"
    cfg.write_text("linker:\n  allowed_roots: [HP:0000118]\n")
    out = run_cli("linker", "--root", str(tiny_build.root), "--name", tiny_build.name, "--config", str(cfg))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "[linker -> allowed_roots] unknown entity id(s) ['HP:0000118']" in out.stderr
