import json

import pytest
import torch
from torch.utils.data import DataLoader

from model.config import ModelConfig, StageConfig
from model.data import ShardDataset, spans_to_token_entities
from model.kalora import KALoRAModel, build_base_model
from model.tokenizer import train_bpe_tokenizer
from pipelines.errors import ArtifactError, ConfigError

TEXTS = ["Lens opacity is a abnormality of the eye.", "Seizure is a abnormality of the nervous system."] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def _model(tokenizer, version="v1"):
    base = build_base_model(ModelConfig(n_layer=1, n_head=2, n_embd=32), len(tokenizer), tokenizer.pad_token_id)
    return KALoRAModel(base, torch.randn(6, 8), version, num_heads=2)


def test_spans_map_to_overlapping_tokens():
    offsets = [(0, 4), (4, 11), (11, 12), (12, 20), (0, 0)]
    spans = [{"start": 0, "end": 11, "entity_index": 7}, {"start": 12, "end": 20, "entity_index": 9}]
    assert spans_to_token_entities(offsets, spans) == [7, 7, 0, 9, 0]


def test_knowledge_injection_is_identity_at_initialisation(tokenizer):
    model = _model(tokenizer).eval()
    enc = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    entity_ids = torch.zeros_like(enc["input_ids"])
    entity_ids[0, :3] = 2
    entity_ids[1, 1:4] = 5
    with torch.no_grad():
        out, k_loss, gate = model(enc["input_ids"], enc["attention_mask"], entity_ids)
        base = model.base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    assert torch.equal(out.logits, base.logits)
    assert gate.shape == (*enc["input_ids"].shape, 1) and 0 <= gate.min() and gate.max() <= 1
    assert model.injection.last_gate is not None and torch.isfinite(k_loss)


def test_injection_changes_states_once_trained(tokenizer):
    model = _model(tokenizer)
    torch.nn.init.normal_(model.injection.out_proj.weight)
    hidden = torch.randn(1, 4, 32)
    ents = torch.tensor([[0, 3, 3, 0]])
    out, _ = model.injection(hidden, ents)
    assert not torch.allclose(out, hidden)
    no_ents, _ = model.injection(hidden, torch.zeros_like(ents))
    assert torch.allclose(no_ents, hidden), "a sequence without linked entities gets no knowledge context"


def test_knowledge_weights_refuse_other_embedding_version(tokenizer, tmp_path):
    model = _model(tokenizer, "transe-aaaa")
    model.save_knowledge(tmp_path)
    _model(tokenizer, "transe-aaaa").load_knowledge(tmp_path)
    with pytest.raises(ArtifactError, match="trained with embedding 'transe-aaaa'"):
        _model(tokenizer, "transe-bbbb").load_knowledge(tmp_path)


def test_shard_dataset_splits_rows_across_workers_without_duplicates(tiny_build, tokenizer):
    manifest = json.loads((tiny_build.shards / "manifest.json").read_text())
    ds = ShardDataset(tiny_build.shards, "knowledge", tokenizer, split=None)
    assert len(ds.units) > 2
    single = [tuple(x["input_ids"]) for x in ds]
    # spawn, not fork: earlier tests in this process ran Prefect flows, whose threads make forked
    # workers exit with status 1 at shutdown (reproduced with a bare flow + DataLoader; see docs/training.md)
    multi = [tuple(x["input_ids"]) for x in DataLoader(ds, batch_size=None, num_workers=2,
                                                       multiprocessing_context="spawn")]
    assert len(single) == manifest["sets"]["knowledge"]["rows"]
    assert sorted(multi) == sorted(single)
    ranks = [[tuple(x["input_ids"]) for x in ShardDataset(tiny_build.shards, "knowledge", tokenizer, split=None,
                                                           rank=r, world_size=2)] for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(single)


def test_stage_config_validation():
    with pytest.raises(ConfigError, match=r"\[train -> stage -> max_steps\]"):
        StageConfig(max_steps=0)
    with pytest.raises(ConfigError, match="unknown key"):
        StageConfig.from_dict({"steps": 3})


def test_stage1_trains_only_knowledge_modules_and_saves(tiny_build):
    from model.trainer import prepare, train_stage1

    entry = train_stage1(tiny_build, ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=300, max_length=48),
                         StageConfig(max_steps=30, batch_size=8, learning_rate=5e-3, warmup_steps=2))
    m = entry["metrics"]
    assert m["last"]["knowledge_loss"] < m["first"]["knowledge_loss"]
    assert 0 <= m["gate_mean_linked_tokens"] <= 1
    stage1 = tiny_build.adapters / "stage1"
    assert (stage1 / "knowledge.safetensors").exists() and (stage1 / "loss.png").exists()
    # the saved base model is untouched by stage 1 (equal to a fresh build from the same config)
    # and reloads with the knowledge weights
    tok, model, _ = prepare(tiny_build, ModelConfig(n_layer=1, n_head=2, n_embd=32))
    fresh = build_base_model(ModelConfig(n_layer=1, n_head=2, n_embd=32), len(tok), tok.pad_token_id)
    for (name, a), (_, b) in zip(model.base.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    model.load_knowledge(stage1)
    assert json.loads((tiny_build.adapters / "kalora.json").read_text())["embedding_version"] == model.embedding_version
    # a rerun that finds the saved base model and tokenizer trains the same knowledge weights as
    # the first run, which built them (a kill after stage 1's publish must not change the result)
    from safetensors.torch import load_file

    first = load_file(str(stage1 / "knowledge.safetensors"))
    again = train_stage1(tiny_build, ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=300, max_length=48),
                         StageConfig(max_steps=30, batch_size=8, learning_rate=5e-3, warmup_steps=2))
    assert again["metrics"]["last"] == m["last"]
    second = load_file(str(stage1 / "knowledge.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
