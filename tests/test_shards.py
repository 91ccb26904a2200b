import json

import pyarrow.parquet as pq
import pytest

from model.data import read_shard_manifest
from pipelines.errors import ArtifactError, ConfigError, DumpParseError
from pipelines.shards import ShardConfig, build_shards, load_templates, read_preferences, render


def test_render_reports_spans():
    text, hs, ts = render("Question: {head} has phenotype what? Answer: {tail}.", "Tiny syndrome", "Seizure")
    assert text[hs[0]:hs[1]] == "Tiny syndrome" and text[ts[0]:ts[1]] == "Seizure"


def test_templates_override_and_validation(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("is_a:\n  statement: '{head} is a kind of {tail}.'\n")
    assert load_templates(path, {"is_a": "is a"})["is_a"]["statement"] == "{head} is a kind of {tail}."
    path.write_text("nope:\n  statement: '{head} {tail}'\n")
    with pytest.raises(ConfigError, match="unknown relation 'nope'"):
        load_templates(path, {"is_a": "is a"})
    path.write_text("is_a:\n  statement: 'no placeholders'\n")
    with pytest.raises(ConfigError, match=r"\[is_a -> statement\] must contain"):
        load_templates(path, {"is_a": "is a"})


def test_knowledge_shards_spans_point_at_entity_labels(tiny_build):
    labels = dict(zip(*[pq.read_table(tiny_build.entities).column(c).to_pylist() for c in ("index", "label")]))
    rows = pq.read_table(tiny_build.shards / "knowledge").to_pylist()
    assert rows and {r["template"] for r in rows} == {"statement", "question"}
    for row in rows:
        for span in row["spans"]:
            assert row["text"][span["start"]:span["end"]] == labels[span["entity_index"]]
    test = pq.read_table(tiny_build.splits / "test.parquet").to_pylist()
    held = {(t["head_index"], t["relation_index"], t["tail_index"]) for t in test}
    assert not held & {(r["head_index"], r["relation_index"], r["tail_index"]) for r in rows}, "test facts leak"


def test_joint_and_alignment_shards(tiny_build):
    joint = pq.read_table(tiny_build.shards / "joint").to_pylist()
    seizure = next(r for r in joint if r["doc_id"] == "HP:9000006")
    linked = {seizure["text"][s["start"]:s["end"]].lower() for s in seizure["spans"]}
    assert "lens opacity" in linked and all(0 < s["score"] <= 1 for s in seizure["spans"])
    manifest = json.loads((tiny_build.shards / "manifest.json").read_text())
    assert manifest["counts"]["joint_docs"] == len(joint)
    assert manifest["counts"]["joint_docs_unlinked"] == sum(not r["spans"] for r in joint)
    assert len(manifest["sets"]["knowledge"]["parts"]) > 1  # rows_per_part=7 splits the set


def test_alignment_rejected_is_never_a_true_fact(tiny_build):
    import numpy as np

    from kg.splits import read_splits

    splits = read_splits(tiny_build)
    known = set(map(tuple, np.concatenate(list(splits.values())).tolist()))
    rows = pq.read_table(tiny_build.shards / "alignment").to_pylist()
    for row in rows:
        h = row["prompt_spans"][0]["entity_index"]
        rejected = row["rejected_spans"][0]["entity_index"]
        chosen = row["chosen_spans"][0]["entity_index"]
        assert rejected != chosen
        assert not any((h, r, rejected) in known for r in {k[1] for k in known if k[0] == h and k[2] == chosen})


def test_preference_file_errors_name_the_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(DumpParseError, match=r"prefs\.jsonl:2: field 'rejected'"):
        read_preferences(path)
    path.write_text('not json\n')
    with pytest.raises(DumpParseError, match=r"prefs\.jsonl:1: not valid JSON"):
        read_preferences(path)


def test_user_preferences_are_merged(tiny_build, tmp_path):
    import shutil

    from pipelines.artifacts import ArtifactLayout

    layout = ArtifactLayout(tmp_path, "tiny")
    shutil.copytree(tiny_build.base, layout.base, dirs_exist_ok=True)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "Is the sky green?", "chosen": " No.", "rejected": " Yes."}\n')
    from flows.stages import shard_inputs

    entry = build_shards(layout, shard_inputs(layout, "transe"), preferences=[prefs], config=ShardConfig())
    assert entry["counts"]["alignment_user_pairs"] == 1
    rows = pq.read_table(layout.shards / "alignment").to_pylist()
    assert [r["source"] for r in rows].count("user") == 1


def test_reader_refuses_tampered_unknown_or_mismatched_shards(tiny_build, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(tiny_build.shards, shards)
    manifest = read_shard_manifest(shards)
    with pytest.raises(ArtifactError, match="shards refer to embedding"):
        read_shard_manifest(shards, expected_embedding_version="transe-other")
    part = shards / "joint" / manifest["sets"]["joint"]["parts"][0]["file"]
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        read_shard_manifest(shards)
    manifest["schema_version"] = 99
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="schema version 99"):
        read_shard_manifest(shards, verify_checksums=False)


def test_held_out_facts_never_reach_training_rows(tiny_build):
    """Knowledge rows come from the KG train/valid split; alignment prompts from the test split,
    divided into train/valid by fact, so alignment-valid facts are trained on by no stage."""
    import numpy as np

    from kg.splits import read_splits

    splits = read_splits(tiny_build)
    test_facts = set(map(tuple, splits["test"].tolist()))
    know = pq.read_table(tiny_build.shards / "knowledge").to_pylist()
    assert not test_facts & {(r["head_index"], r["relation_index"], r["tail_index"]) for r in know}
    align = pq.read_table(tiny_build.shards / "alignment").to_pylist()
    by_split = {}
    for r in align:
        by_split.setdefault(r["split"], set()).add((r["prompt_spans"][0]["entity_index"], r["chosen_spans"][0]["entity_index"]))
    assert not by_split.get("train", set()) & by_split.get("valid", set())
    assert np.isin([h for h, _ in set().union(*by_split.values())], splits["test"][:, 0]).all()
