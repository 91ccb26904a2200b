"""The command line: user errors exit 2 with one line naming the problem, no traceback."""

import pytest

from tests.conftest import run_cli


def _one_line_error(result, pattern):
    import re

    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_missing_dump_path(tmp_path):
    _one_line_error(run_cli("ingest", str(tmp_path / "missing.json.bz2"), "--name", "x", "--root", str(tmp_path)),
                    r"missing\.json\.bz2: no such file")


def test_unknown_format(tmp_path, data_dir):
    _one_line_error(run_cli("ingest", str(data_dir / "tiny.obo"), "--format", "rdf", "--name", "x", "--root", str(tmp_path)),
                    r"unknown format 'rdf': expected one of wikidata, obo, hpoa, umls, triples")


def test_unreadable_dump(tmp_path):
    d = tmp_path / "dir.obo"
    d.mkdir()
    _one_line_error(run_cli("ingest", str(d), "--name", "x", "--root", str(tmp_path)), r"dir\.obo: is a directory")


def test_stage_before_its_inputs(tmp_path):
    _one_line_error(run_cli("embed", "--name", "nothing", "--root", str(tmp_path)), r"entities\.parquet does not exist: run `kalora ingest")


def test_run_with_bad_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nembed: {epochs: 3}\n")
    _one_line_error(run_cli("run", str(cfg)), r"unknown key\(s\) \['epochs'\]")
    _one_line_error(run_cli("run", str(tmp_path / "none.yaml")), r"none\.yaml: no such config file")
    cfg.write_text("name: x\nsources: [/no/such.obo]\n")
    _one_line_error(run_cli("run", str(cfg)), r"/no/such\.obo: no such file")


def test_ingest_then_link_on_tiny(tmp_path, tiny_sources):
    root = str(tmp_path)
    assert run_cli("ingest", *map(str, tiny_sources), "--name", "t", "--root", root).returncode == 0
    r = run_cli("linker", "--name", "t", "--root", root)
    assert r.returncode == 0, r.stderr
    r = run_cli("link", "--name", "t", "--root", root, "Seizures and clouded lens.")
    assert r.returncode == 0, r.stderr
    import json

    spans = json.loads(r.stdout.strip().splitlines()[-1])["spans"]
    assert [(s["text"], s["kb_id"]) for s in spans] == [("Seizures", "HP:9000006"), ("clouded lens", "HP:9000003")]


def test_embed_without_a_config_trains_the_default_kalora_run_trains(tmp_path):
    """`kalora embed` with no --config: the measured default for the graph's size (the shared-negative
    loop above 5,000 entities, 1-N ComplEx below), not the slow per-model 1-N config."""
    import argparse

    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.cli import embedding_config
    from kg.config import ComplExConfig, EmbeddingConfig, TransEConfig
    from pipelines.artifacts import ArtifactLayout

    def config(n, **given):
        layout = ArtifactLayout(tmp_path / str(n), "g")
        layout.entities.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"entity_id": [f"E{i}" for i in range(n)]}), layout.entities)
        args = argparse.Namespace(**{"config": None, "model": None, "epochs": None, **given})
        return embedding_config(args, layout)

    assert config(6000) == EmbeddingConfig()
    assert config(6000, model="distmult") == EmbeddingConfig(model="distmult")
    assert config(6000, epochs=2).num_epochs == 2 and config(6000, epochs=2).training_loop == "shared"
    assert isinstance(config(6000, model="transe"), TransEConfig)  # the shared loop trains no TransE
    assert config(100) == ComplExConfig() and isinstance(config(100, model="transe"), TransEConfig)
    cfg = tmp_path / "embed.yaml"
    cfg.write_text("embed: {model: complex, num_epochs: 3}\n")
    layout = ArtifactLayout(tmp_path / "6000", "g")
    given = embedding_config(argparse.Namespace(config=str(cfg), model=None, epochs=None), layout)
    assert isinstance(given, ComplExConfig) and given.num_epochs == 3  # a file keeps its per-model defaults
