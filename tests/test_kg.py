import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kg.config import EmbeddingConfig
from kg.evaluate import filtered_rank_metrics
from kg.splits import SplitConfig, split_triples
from kg.stats import graph_stats
from pipelines.errors import ConfigError


def test_splits_keep_every_entity_and_relation_in_train():
    rng = np.random.default_rng(0)
    triples = np.stack([rng.integers(1, 60, 500), rng.integers(1, 6, 500), rng.integers(1, 60, 500)], 1).astype(np.int32)
    triples = np.unique(triples, axis=0)
    s = split_triples(triples, SplitConfig(valid_fraction=0.2, test_fraction=0.2, seed=1))
    assert sum(len(v) for v in s.values()) == len(triples)
    train_ents = set(s["train"][:, [0, 2]].ravel())
    for name in ("valid", "test"):
        assert len(s[name]) > 0
        assert set(s[name][:, [0, 2]].ravel()) <= train_ents
        assert set(s[name][:, 1]) <= set(s["train"][:, 1])
    again = split_triples(triples, SplitConfig(valid_fraction=0.2, test_fraction=0.2, seed=1))
    assert all(np.array_equal(s[k], again[k]) for k in s)


def test_split_config_rejects_bad_fraction():
    with pytest.raises(ConfigError, match=r"\[splits -> test_fraction\]"):
        SplitConfig(test_fraction=0.7)


def test_embedding_config_rejects_unknown_keys_and_models():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epochs'\]"):
        EmbeddingConfig.from_dict({"epochs": 3})
    with pytest.raises(ConfigError, match=r"\[embed -> model\] unknown model: expected one of transe, complex, distmult, got 'rotate'"):
        EmbeddingConfig(model="rotate")


def test_graph_stats_counts_components():
    triples = np.array([[1, 1, 2], [2, 1, 3], [4, 2, 5]])
    stats = graph_stats(triples, {1: "a", 2: "b"})
    assert stats["components"]["count"] == 2 and stats["components"]["largest"] == 3
    assert stats["relation_counts"] == {"a": 2, "b": 1}


def test_filtered_metrics_match_pykeen_on_nations():
    """Our fast evaluator must agree with PyKEEN's RankBasedEvaluator (filtered, realistic ranks)."""
    from pykeen.datasets import Nations
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.models import TransE
    from pykeen.training import SLCWATrainingLoop

    ds = Nations()
    model = TransE(triples_factory=ds.training, embedding_dim=16, random_seed=3)
    SLCWATrainingLoop(model=model, triples_factory=ds.training).train(ds.training, num_epochs=2, batch_size=256,
                                                                       use_tqdm=False, pin_memory=False)
    test = ds.testing.mapped_triples
    ref = RankBasedEvaluator(filtered=True).evaluate(
        model, test, batch_size=64, use_tqdm=False,
        additional_filter_triples=[ds.training.mapped_triples, ds.validation.mapped_triples])
    known = torch.cat([ds.training.mapped_triples, ds.validation.mapped_triples, test]).numpy()
    ours = filtered_rank_metrics(model, test.numpy(), known, ds.num_relations, batch_size=17)
    assert ours["mrr"] == pytest.approx(ref.get_metric("both.realistic.inverse_harmonic_mean_rank"), rel=1e-5)
    assert ours["hits_at_10"] == pytest.approx(ref.get_metric("both.realistic.hits_at_10"), rel=1e-5)


def test_embedding_export(tiny_build):
    layout = tiny_build
    out = layout.embeddings("transe")
    meta = json.loads((out / "metrics.json").read_text())
    ents = pq.read_table(out / "entities.parquet")
    npy = np.load(out / "entities.npy", allow_pickle=False)
    n = pq.read_table(layout.entities).num_rows
    assert ents.num_rows == n and npy.shape == (n + 1, 8)
    assert not npy[0].any(), "row 0 is the padding row"
    vec = np.array(ents.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(vec, npy[1:])
    vtype = ents.schema.field("vector").type
    assert pa.types.is_fixed_size_list(vtype) and vtype.list_size == 8 and vtype.value_type == pa.float32()
    assert 0 < meta["metrics"]["mrr"] <= 1 and meta["metrics"]["evaluated_triples"] > 0
    assert (out / "training.png").stat().st_size > 0
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    assert any(v.shape[0] == n for v in state.values())


def test_complex_export_concatenates_real_and_imaginary(tiny_build, tmp_path):
    import shutil

    from kg.embeddings import train_embeddings
    from pipelines.artifacts import ArtifactLayout

    layout = ArtifactLayout(tmp_path, "tiny")
    shutil.copytree(tiny_build.kg, layout.kg)
    train_embeddings(layout, EmbeddingConfig(model="complex", training_loop="slcwa", embedding_dim=4, num_epochs=1,
                                                     batch_size=8), progress=False)
    meta = json.loads((layout.embeddings("complex") / "metrics.json").read_text())
    assert meta["dim"] == 8 and meta["complex_layout"] == "real_imag_concat"


def _copy_kg(src, tmp_path):
    import shutil

    from pipelines.artifacts import ArtifactLayout

    layout = ArtifactLayout(tmp_path, "tiny")
    shutil.copytree(src.kg, layout.kg)
    return layout


def test_per_model_configs_carry_tuned_defaults():
    from kg.config import ComplExConfig, TransEConfig

    assert isinstance(EmbeddingConfig.from_dict({"model": "complex"}), ComplExConfig)
    cfg = EmbeddingConfig.from_dict({"model": "transe", "num_epochs": 7})
    assert isinstance(cfg, TransEConfig) and cfg.num_epochs == 7 and cfg.training_loop == "lcwa"
    with pytest.raises(ConfigError, match=r"\[embed -> engine\]"):
        EmbeddingConfig(engine="spark")


def test_interrupted_training_resumes_to_the_same_state(tiny_build, tmp_path):
    from kg.config import ComplExConfig
    from kg.embeddings import TrainingInterrupted, train_embeddings

    cfg = ComplExConfig(embedding_dim=8, num_epochs=6, batch_size=4, eval_every=2, patience=10, eval_max_triples=None)
    whole = _copy_kg(tiny_build, tmp_path / "a")
    train_embeddings(whole, cfg, progress=False)
    resumed = _copy_kg(tiny_build, tmp_path / "b")
    with pytest.raises(TrainingInterrupted, match="stopped after epoch 3 of 6"):
        train_embeddings(resumed, cfg, progress=False, stop_after_epochs=3)
    assert (resumed.base / "checkpoints" / "embed-complex" / "state.safetensors").exists()
    assert not resumed.embeddings("complex").exists(), "nothing is published before training completes"
    train_embeddings(resumed, cfg, progress=False)
    a = np.load(whole.embeddings("complex") / "entities.npy")
    b = np.load(resumed.embeddings("complex") / "entities.npy")
    np.testing.assert_allclose(a, b, atol=1e-5)
    meta = json.loads((resumed.embeddings("complex") / "metrics.json").read_text())["metrics"]
    assert [v["epoch"] for v in meta["validation"]] == [2, 4, 6]
    assert not (resumed.base / "checkpoints" / "embed-complex").exists()
    assert (resumed.embeddings("complex") / "training.png").stat().st_size > 0


def test_early_stopping_restores_the_best_epoch(tiny_build, tmp_path):
    from kg.config import TransEConfig
    from kg.embeddings import train_embeddings

    layout = _copy_kg(tiny_build, tmp_path)
    cfg = TransEConfig(embedding_dim=8, num_epochs=200, batch_size=4, eval_every=1, patience=2, learning_rate=1.0)
    metrics = train_embeddings(layout, cfg, progress=False)["metrics"]
    assert metrics["stopped_early"] and metrics["epochs"] < 200
    assert metrics["best_epoch"] == metrics["epochs"] - 2


def test_memory_estimate_refuses_unless_forced():
    from kg.config import ComplExConfig
    from kg.training import check_memory, choose_batch_size, estimate_memory_bytes

    cfg = ComplExConfig(memory_fraction=1e-9)
    with pytest.raises(ConfigError, match=r"needs about .* GiB but .* GiB is available"):
        check_memory(cfg, 10_000, 10, 256)
    assert check_memory(ComplExConfig(memory_fraction=1e-9, force=True), 10_000, 10, 256)["estimated_bytes"] > 0
    auto = ComplExConfig(batch_size=None)
    budget = estimate_memory_bytes(auto, 50_000, 10, 64) + 1
    size = choose_batch_size(auto, 50_000, 10, budget)
    assert size == 64


def test_k_core_drops_weakly_connected_entities():
    from kg.splits import k_core_triples

    triples = np.array([[1, 1, 2], [2, 1, 3], [3, 1, 1], [3, 1, 4], [4, 2, 5]])
    core = k_core_triples(triples, 2)
    assert sorted(map(tuple, core.tolist())) == [(1, 1, 2), (2, 1, 3), (3, 1, 1)]


def test_lightning_engine_on_cpu(tiny_build, tmp_path):
    pytest.importorskip("pytorch_lightning")
    from kg.embeddings import train_embeddings

    layout = _copy_kg(tiny_build, tmp_path)
    cfg = EmbeddingConfig(model="transe", training_loop="slcwa", inverse_triples=False, engine="lightning",
                          accelerator="cpu", embedding_dim=8, num_epochs=2, batch_size=8, eval_max_triples=None)
    entry = train_embeddings(layout, cfg, progress=False)
    assert entry["metrics"]["engine"] == "lightning" and 0 < entry["metrics"]["mrr"] <= 1
    assert entry["metrics"]["optimizer_steps"] >= 2  # two epochs of at least one batch each
    assert np.load(layout.embeddings("transe") / "entities.npy").shape[1] == 8
