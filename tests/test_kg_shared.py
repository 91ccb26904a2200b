"""The popularity baseline, per-relation metrics and the shared-negative training loop."""

import json

import numpy as np
import pytest
import torch

from kg.config import EmbeddingConfig
from kg.evaluate import PopularityBaseline, filtered_rank_metrics, with_baseline
from pipelines.errors import ConfigError


def _graph(seed=0, n=60):
    """Three clusters of 20 entities: relation 0 links random pairs inside a cluster, relation 1
    links cluster c to cluster c + 1. Held-out triples are predictable from cluster membership,
    which a model can learn and counting cannot."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n) % 3
    triples = [(h, r, t) for h in range(n) for t in range(n) for r in (0, 1) if h != t
               and cluster[t] == (cluster[h] + r) % 3 and rng.random() < 0.3]
    arr = np.array(triples)
    perm = rng.permutation(len(arr))
    return arr[perm[40:]], arr[perm[:40]]


def test_popularity_baseline_ranks_by_slot_counts():
    train = np.array([[0, 0, 2], [1, 0, 2], [1, 0, 3], [3, 0, 4]])
    base = PopularityBaseline(train, 5, 1)
    scores = base.predict_t(torch.tensor([[0, 0]]))
    assert scores.tolist() == [[0, 0, 2, 1, 1]]
    assert base.predict_h(torch.tensor([[0, 2]])).tolist() == [[1, 2, 0, 1, 0]]
    test = np.array([[0, 0, 3]])  # tail 3: 2 scores higher, 4 ties -> rank 2.5; head 0 (filter: 1 known? no)
    known = np.concatenate([train, test])
    m = filtered_rank_metrics(base, test, known, 1, relation_labels=["r"])
    # tail side: entity 2 is a known answer of (0, r) -> filtered; 3 ties with 4 -> rank 1.5
    # head side: (r, 3) answers {1, 0}: 1 filtered; 0 (count 1) ties 3 (count 1) -> rank 1.5
    assert m["mrr_tail"] == pytest.approx(1 / 1.5) and m["mrr_head"] == pytest.approx(1 / 1.5)
    assert m["per_relation"]["r"]["count"] == 1 and m["per_relation"]["r"]["mrr"] == pytest.approx(1 / 1.5)


def test_with_baseline_adds_ratio_and_per_relation():
    from kg.shared_negatives import train_shared

    train, test = _graph()
    known = np.concatenate([train, test])
    cfg = EmbeddingConfig(model="distmult", embedding_dim=16, num_epochs=30, batch_size=16, num_negatives=32,
                          learning_rate=0.05, init_scale=0.1)
    model, state, run = train_shared(cfg, train, 60, 2, None, progress=False)
    assert run["finished"] and state.epoch == 30 and state.losses[-1] < state.losses[0]
    m = with_baseline(filtered_rank_metrics(model, test, known, 2, relation_labels=["a", "b"]), train, test, known, 2,
                      ["a", "b"])
    assert set(m["per_relation"]) == {"a", "b"} and sum(v["count"] for v in m["per_relation"].values()) == 40
    assert m["baseline_ratio"] == pytest.approx(m["mrr"] / m["baseline"]["mrr"])
    assert m["mrr"] > 2 * m["baseline"]["mrr"], "the trained model must beat counting on a structured graph"
    random = filtered_rank_metrics(type(model)(60, 2, 16, "distmult", 0.1, 1), test, known, 2)
    assert m["mrr"] > 1.5 * random["mrr"]


def test_shared_loop_is_deterministic_and_resumes(tmp_path):
    from kg.shared_negatives import train_shared

    train, _ = _graph(1)
    cfg = EmbeddingConfig(model="complex", embedding_dim=4, num_epochs=4, batch_size=8, num_negatives=16)
    a, _, _ = train_shared(cfg, train, 60, 2, None, progress=False)
    b, _, _ = train_shared(cfg, train, 60, 2, None, progress=False)
    assert torch.equal(a.entity, b.entity)
    ckpt = tmp_path / "ckpt"
    _, state, run = train_shared(cfg, train, 60, 2, ckpt, progress=False, stop_after_epochs=2)
    assert not run["finished"] and state.epoch == 2 and (ckpt / "state.safetensors").exists()
    c, state, run = train_shared(cfg, train, 60, 2, ckpt, progress=False)
    assert run["finished"] and state.epoch == 4
    torch.testing.assert_close(a.entity, c.entity)


def test_shared_memory_estimate_grows_with_candidates_not_triples():
    from kg.shared_negatives import estimate_memory_bytes

    small = estimate_memory_bytes(EmbeddingConfig(num_negatives=1024), 100_000, 10, 1024)
    large = estimate_memory_bytes(EmbeddingConfig(num_negatives=4096), 100_000, 10, 1024)
    params = (100_000 + 20) * 128 * 4 * 4
    assert params < small < large


def test_shared_config_rejects_unsupported_combinations():
    with pytest.raises(ConfigError, match=r"\[embed -> model\] the shared-negative loop"):
        EmbeddingConfig(model="transe")
    with pytest.raises(ConfigError, match=r"\[embed -> type_negative_fraction\] must be in \[0, 1\]"):
        EmbeddingConfig(type_negative_fraction=1.5)
    with pytest.raises(ConfigError, match=r"\[embed -> eval_every\]"):
        EmbeddingConfig(eval_every=2)


def test_embed_stage_writes_baseline_and_per_relation(tiny_build, tmp_path):
    import shutil

    from kg.embeddings import train_embeddings
    from pipelines.artifacts import ArtifactLayout

    layout = ArtifactLayout(tmp_path, "tiny")
    shutil.copytree(tiny_build.kg, layout.kg)
    entry = train_embeddings(layout, EmbeddingConfig(embedding_dim=4, num_epochs=2, batch_size=8, num_negatives=8,
                                                     eval_max_triples=None), progress=False)
    saved = json.loads((layout.embeddings("complex") / "metrics.json").read_text())
    meta = saved["metrics"]
    assert meta["baseline"]["mrr"] > 0 and meta["baseline_ratio"] == pytest.approx(meta["mrr"] / meta["baseline"]["mrr"])
    assert sum(v["count"] for v in meta["per_relation"].values()) == meta["evaluated_triples"]
    assert entry["metrics"]["baseline"]["per_relation"].keys() == meta["per_relation"].keys()
    assert saved["dim"] == 8 and saved["complex_layout"] == "real_imag_concat"


def test_summary_shows_baseline_ratio_and_warns_under_two():
    from flows.report import summary_rows

    metrics = {"mrr": 0.05, "hits_at_10": 0.1, "baseline": {"mrr": 0.04}, "baseline_ratio": 1.25,
               "per_relation": {"is_a": {"mrr": 0.2, "count": 3}, "has_phenotype": {"mrr": 0.01, "count": 7}}}
    (_, _, shown, _), = summary_rows({"embed": {"metrics": metrics, "wall_time_s": 1.0}})
    assert "baseline_mrr=0.040, ratio=1.25" in shown and "WARNING: under 2x" in shown
    assert "is_a=0.200 (n=3)" in shown and "has_phenotype=0.010 (n=7)" in shown
    (_, _, shown, _), = summary_rows({"embed": {"metrics": {**metrics, "baseline_ratio": 4.0}, "wall_time_s": 1.0}})
    assert "ratio=4.00" in shown and "WARNING" not in shown


def test_slot_bias_starts_from_the_popularity_baseline():
    """With zero vectors the model's scores are log(1 + slot count): exactly the baseline's ranking."""
    from kg.shared_negatives import BilinearModel, QueryIndex

    train, test = _graph(2)
    known = np.concatenate([train, test])
    model = BilinearModel(60, 2, 4, "complex", 0.1, 0)
    model.use_slot_bias(QueryIndex(train, 60, 2))
    with torch.no_grad():
        model.entity.zero_()
    ours = filtered_rank_metrics(model, test, known, 2)
    base = filtered_rank_metrics(PopularityBaseline(train, 60, 2), test, known, 2)
    assert ours["mrr"] == pytest.approx(base["mrr"]) and ours["mrr_head"] == pytest.approx(base["mrr_head"])


def test_slot_bias_trains_and_resumes(tmp_path):
    from kg.shared_negatives import train_shared

    train, _ = _graph(3)
    cfg = EmbeddingConfig(embedding_dim=4, num_epochs=3, batch_size=8, num_negatives=16, slot_bias=True)
    a, state, _ = train_shared(cfg, train, 60, 2, None, progress=False)
    assert a.bias is not None and state.losses[-1] < state.losses[0]
    train_shared(cfg, train, 60, 2, tmp_path / "c", progress=False, stop_after_epochs=1)
    b, _, _ = train_shared(cfg, train, 60, 2, tmp_path / "c", progress=False)
    torch.testing.assert_close(a.bias, b.bias)


def _typed_graph():
    """Genes 0-5, diseases 6-11, entity 12 untyped. Relation 0: gene -> disease, seen in train only
    with genes 0-2 and diseases 6-8; relation 1: untyped 12 -> disease."""
    from scipy.sparse import csr_matrix

    train = np.array([[0, 0, 6], [1, 0, 7], [2, 0, 8], [12, 1, 9]])
    rows = np.arange(12)
    types = csr_matrix((np.ones(12), (rows, (rows >= 6).astype(int))), shape=(13, 2))  # 0: gene, 1: disease
    return train, types


def test_typed_ranges_widen_observed_fillers_to_their_types():
    from kg.shared_negatives import QueryIndex

    train, types = _typed_graph()
    index = QueryIndex(train, 13, 2)
    assert index.ranges[0].tolist() == [6, 7, 8]  # observed tails of relation 0
    ranges = index.typed_ranges(types)
    assert ranges[0].tolist() == list(range(6, 12))  # every disease
    assert ranges[2].tolist() == list(range(6))  # reciprocal of relation 0: every gene
    assert ranges[3].tolist() == [12]  # reciprocal of relation 1: the untyped entity's own type


def test_type_constraints_rank_out_of_range_entities_last_and_sample_inside_the_range():
    from kg.shared_negatives import build, sample_candidates

    train, types = _typed_graph()
    cfg = EmbeddingConfig(embedding_dim=4, batch_size=4, num_negatives=4, type_constraints=True,
                          type_negative_fraction=1.0, init_scale=1.0, popularity_power=0.0)
    index, model, _ = build(cfg, train, 13, 2, types)
    scores = model.predict_t(torch.tensor([[3, 0]]))[0]  # an unseen gene: its tails must be diseases
    assert scores[6:12].min() > scores[list(range(6)) + [12]].max()
    heads = model.predict_h(torch.tensor([[0, 10]]))[0]
    assert heads[:6].min() > heads[6:].max()
    for seed in range(5):
        candidates, log_q = sample_candidates(index, np.array([0, 0]), cfg, np.random.default_rng(seed))
        assert set(candidates) <= set(range(6, 12)) and len(candidates) == 4
        assert np.allclose(log_q, np.log(4 / 6))
    _, untyped, _ = build(EmbeddingConfig(embedding_dim=4, type_constraints=False), train, 13, 2, types)
    assert untyped.outside is None


def test_type_constraints_train_through_the_embed_stage(tiny_build, tmp_path):
    import shutil

    from kg.embeddings import load_entity_types, train_embeddings
    from pipelines.artifacts import ArtifactLayout

    layout = ArtifactLayout(tmp_path, "tiny")
    shutil.copytree(tiny_build.kg, layout.kg)
    types = load_entity_types(layout, 10_000)
    assert types.shape[0] == 10_000 and types.nnz > 0
    cfg = EmbeddingConfig(embedding_dim=4, num_epochs=2, batch_size=8, num_negatives=8, eval_max_triples=None,
                          type_constraints=True, type_negative_fraction=1.0)
    meta = train_embeddings(layout, cfg, progress=False)["metrics"]
    assert meta["mrr"] > 0 and meta["epochs"] == 2


def test_popularity_power_draws_hubs_more_often_with_a_matching_correction():
    from kg.shared_negatives import QueryIndex, sample_candidates

    # relation 0: tail 10 filled by 20 heads, tails 11..19 once each
    train = np.array([[h, 0, 10] for h in range(20)] + [[h, 0, 11 + h] for h in range(9)])
    index = QueryIndex(train, 30, 1)
    assert index.range_counts[0].tolist() == [20] + [1] * 9
    cfg = EmbeddingConfig(num_negatives=3, type_negative_fraction=1.0, popularity_power=1.0)
    drawn, predicted = np.zeros(30), np.zeros(30)
    for seed in range(400):
        candidates, log_q = sample_candidates(index, np.array([0]), cfg, np.random.default_rng(seed))
        assert set(candidates) <= set(range(10, 20))
        drawn[candidates] += 1
        predicted[candidates] = np.exp(log_q)
    hub = 1 - (1 - 21 / 39) ** 3  # P(drawn at least once in 3 draws), weight (1 + 20) of 21 + 9 * 2
    assert predicted[10] == pytest.approx(hub) and predicted[11] == pytest.approx(1 - (1 - 2 / 39) ** 3)
    assert drawn[10] / 400 == pytest.approx(hub, abs=0.06) and drawn[11] / 400 == pytest.approx(predicted[11], abs=0.06)
    uniform = EmbeddingConfig(num_negatives=3, type_negative_fraction=1.0, popularity_power=0.0)
    assert np.exp(sample_candidates(index, np.array([0]), uniform, np.random.default_rng(0))[1]) == pytest.approx(0.3)


def _composed_graph():
    """Genes 0-19 -> diseases 20-29 (relation 0), diseases -> phenotypes 30-59 (relation 1), and
    gene -> phenotype (relation 2) = relation 0 ∘ relation 1, two of whose triples are held out."""
    rng = np.random.default_rng(0)
    gd = [(g, 0, 20 + g % 10) for g in range(20)]
    dp = [(d, 1, p) for d in range(20, 30) for p in rng.choice(np.arange(30, 60), 4, replace=False)]
    gp = sorted({(g, 2, p) for g, _, d in gd for d2, _, p in dp if d2 == d})
    held = [gp[0], gp[17]]
    train = np.array(gd + dp + [t for t in gp if t not in held])
    return train, np.array(held)


def test_path_rules_recover_the_composition_and_its_held_out_triples():
    from kg.rules import mine_path_rules

    train, held = _composed_graph()
    rules, implied = mine_path_rules(train, 60, 3, min_confidence=0.8, min_support=5)
    assert [(r.body, r.head) for r in rules] == [((0, 1), 2)]
    assert rules[0].implied == 2 and rules[0].confidence == pytest.approx(rules[0].support / (rules[0].support + 2))
    assert sorted(map(tuple, implied)) == sorted(map(tuple, held))
    assert mine_path_rules(train, 60, 3, min_confidence=0.99, min_support=5)[0] == []


def test_sampled_screen_keeps_the_rule_and_skips_bodies_that_cannot_reach_the_threshold(caplog):
    """With a screen of a few paths every body is screened on a sample: the composed rule still
    passes (and is then counted exactly), the other bodies are skipped without being computed."""
    import logging

    from kg.rules import mine_path_rules

    train, held = _composed_graph()
    exact = mine_path_rules(train, 60, 3, min_confidence=0.8, min_support=5)
    with caplog.at_level(logging.INFO, logger="kg.rules"):
        screened = mine_path_rules(train, 60, 3, min_confidence=0.8, min_support=5, screen_paths=8)
    assert screened[0] == exact[0] and np.array_equal(screened[1], exact[1])
    assert "rule bodies skipped after a sampled screen" in caplog.text


def test_rule_confidence_trains_on_the_implied_triples():
    from kg.shared_negatives import build, train_shared

    train, held = _composed_graph()
    cfg = EmbeddingConfig(embedding_dim=4, num_epochs=1, batch_size=8, num_negatives=8, rule_confidence=0.8)
    index, _, rules = build(cfg, train, 60, 3)
    assert len(rules) == 1 and len(index.tails) == 2 * (len(train) + 2)
    for h, r, t in held:  # the held-out triples are now training answers of their queries
        q = np.flatnonzero((index.heads == h) & (index.relations == r))[0]
        assert t in index.tails[index.offsets[q]:index.offsets[q + 1]]
    _, _, run = train_shared(cfg, train, 60, 3, None, progress=False)
    assert run["path_rules"][0]["head"] == 2 and run["path_rules"][0]["implied"] == 2


def _old_expected(index, relations, config, candidates, n):
    """The sampling probabilities computed the direct way, over an array of every entity."""
    rels = np.unique(relations)
    pool = np.unique(np.concatenate([index.ranges[r] for r in rels]))
    k_total = min(config.num_negatives, n)
    k_type = min(int(round(k_total * config.type_negative_fraction)), len(pool))
    expected = np.full(n, (k_total - k_type) / n)
    if k_type and config.popularity_power > 0:
        fills = np.zeros(n)
        for r in rels:
            fills[index.ranges[r]] += index.range_counts[r]
        p = (1.0 + fills[pool]) ** config.popularity_power
        p /= p.sum()
        expected[pool] += 1 - (1 - p) ** k_type
    elif k_type:
        expected[pool] += k_type / len(pool)
    return np.log(np.minimum(expected[candidates], 1.0))


@pytest.mark.parametrize("fraction,power", [(0.5, 0.0), (1.0, 0.0), (0.5, 1.0), (0.0, 0.0)])
def test_sampling_correction_matches_the_whole_entity_computation(fraction, power):
    from kg.shared_negatives import QueryIndex, sample_candidates

    train, _ = _graph(4)
    index = QueryIndex(train, 60, 2)
    cfg = EmbeddingConfig(num_negatives=24, type_negative_fraction=fraction, popularity_power=power)
    for relations in (np.array([0, 0]), np.array([1, 2, 3]), np.array([3])):
        candidates, log_q = sample_candidates(index, relations, cfg, np.random.default_rng(7))
        assert np.all(np.diff(candidates) > 0), "candidates come back sorted and unique"
        np.testing.assert_allclose(log_q, _old_expected(index, relations, cfg, candidates, 60), rtol=1e-9)


def test_sparse_updates_touch_only_the_batch_rows_and_resume(tmp_path):
    from kg.shared_negatives import batch_loss, build, make_optimizer, train_shared

    train, test = _graph(5)
    cfg = EmbeddingConfig(model="complex", embedding_dim=4, num_epochs=4, batch_size=8, num_negatives=8,
                          slot_bias=True, sparse_updates=True, type_constraints=False, rule_confidence=0)
    index, model, _ = build(cfg, train, 60, 2)
    assert model.sparse_updates
    optimizer = make_optimizer(cfg, model)
    rng = np.random.default_rng(0)
    for step in range(2):
        queries = index.batches(8, rng)[0]
        before_e, before_b = model.entity.detach().clone(), model.bias.detach().clone()
        optimizer.zero_grad()
        loss = batch_loss(model, index, queries, cfg, np.random.default_rng(step))
        loss.backward()
        assert model.entity.grad.is_sparse and model.bias.grad.is_sparse
        touched = np.unique(model.entity.grad.coalesce().indices().numpy())
        optimizer.step()
        moved = np.flatnonzero((model.entity.detach() != before_e).any(1).numpy())
        assert set(moved) <= set(touched) and len(moved) > 0
        untouched = np.setdiff1d(np.arange(60), touched)
        assert torch.equal(model.bias.detach()[untouched], before_b[untouched])
    # trains, and a resumed run (the two optimizers' state in one checkpoint) follows the same path
    a, state, _ = train_shared(cfg, train, 60, 2, None, progress=False)
    assert state.losses[-1] < state.losses[0]
    _, _, run = train_shared(cfg, train, 60, 2, tmp_path / "c", progress=False, stop_after_epochs=2)
    assert not run["finished"]
    b, _, run = train_shared(cfg, train, 60, 2, tmp_path / "c", progress=False)
    assert run["finished"]
    torch.testing.assert_close(a.entity, b.entity)
    torch.testing.assert_close(a.bias, b.bias)
    # and learns what the dense loop learns on the structured graph
    known = np.concatenate([train, test])
    long = dict(model="distmult", embedding_dim=16, num_epochs=30, batch_size=16, num_negatives=32,
                learning_rate=0.05, init_scale=0.1)
    sparse, _, _ = train_shared(EmbeddingConfig(**long, sparse_updates=True), train, 60, 2, None, progress=False)
    m = with_baseline(filtered_rank_metrics(sparse, test, known, 2), train, test, known, 2)
    assert m["mrr"] > 2 * m["baseline"]["mrr"]


def test_sparse_updates_default_by_graph_size_and_adagrad_takes_sparse_gradients():
    from kg.config import SPARSE_UPDATE_ENTITIES
    from kg.shared_negatives import train_shared

    assert not EmbeddingConfig().resolved_sparse_updates(SPARSE_UPDATE_ENTITIES - 1)
    assert EmbeddingConfig().resolved_sparse_updates(SPARSE_UPDATE_ENTITIES)
    assert not EmbeddingConfig(sparse_updates=False).resolved_sparse_updates(10**9)
    train, _ = _graph(6)
    cfg = EmbeddingConfig(embedding_dim=4, num_epochs=3, batch_size=8, num_negatives=16, optimizer="adagrad",
                          learning_rate=0.1, sparse_updates=True, rule_confidence=0)
    model, state, _ = train_shared(cfg, train, 60, 2, None, progress=False)
    assert model.sparse_updates and state.losses[-1] < state.losses[0]


def test_memory_estimate_drops_the_dense_entity_gradient_with_sparse_updates():
    from kg.shared_negatives import estimate_memory_bytes

    dense = estimate_memory_bytes(EmbeddingConfig(sparse_updates=False), 1_000_000, 10, 1024)
    sparse = estimate_memory_bytes(EmbeddingConfig(sparse_updates=True), 1_000_000, 10, 1024)
    table = 1_000_000 * 128 * 4
    assert dense - sparse == table + 20 * 1_000_000 * 4  # one entity table and one slot-bias table fewer
