"""Training of the linker's models on the knowledge base's own synonyms (nothing else is seen).

- :func:`train_name_encoder`: the fastText-style name encoder of :mod:`linking.encoder`, fit
  contrastively on pairs of names that share an entity.
- :func:`train_reranker`: the candidate reranker of :mod:`linking.reranker`, fit on
  leave-one-alias-out pairs (:func:`training_pairs`).
- :func:`train_models`: both, as the linker's build runs them, with the fallbacks a small table needs.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from linking.aliases import AliasTable, unique_norms
from linking.config import LinkerConfig, RerankerConfig
from linking.encoder import SPARSE_ABOVE, EncoderConfig, NameEncoder, name_features
from linking.features import FEATURES
from linking.names import NameIndex, PoolSize
from linking.reranker import Reranker, score_pairs
from pipelines.errors import ArtifactError
from pipelines.normalize import normalize_alias

log = logging.getLogger(__name__)

MLP_MIN_QUERIES = 1000        # below this a hidden layer overfits (separable data, saturated logits)


# -- name encoder ---------------------------------------------------------------------------------
def synonym_groups(table: AliasTable) -> list[list[str]]:
    """The distinct normalised names of every entity that has two or more."""
    names_of: dict[int, set[str]] = {}
    for norm, ent in zip(table.alias_norm, table.entity_index.tolist()):
        names_of.setdefault(ent, set()).add(norm)
    return [sorted(names) for _, names in sorted(names_of.items()) if len(names) >= 2]


@dataclass
class _Pairs:
    """Every training name's feature ids, the names of one entity adjacent: entity g owns names
    start[g] ... start[g] + size[g] - 1."""

    features: list[str]
    name_ids: list[np.ndarray]
    size: np.ndarray
    start: np.ndarray


def _encoder_vocabulary(groups: list[list[str]], config: EncoderConfig) -> _Pairs:
    # the vocabulary: features of the training names only (a feature no training name has would
    # keep its random start and add noise); the most frequent max_features of them
    counts: Counter = Counter()
    group_feats: list[list[list[str]]] = []
    for names in groups:
        feats = [name_features(n, config.ngrams) for n in names]
        group_feats.append(feats)
        for f in feats:
            counts.update(f)
    features = [f for f, _ in counts.most_common(config.max_features)]
    vocab = {f: i for i, f in enumerate(features)}
    name_ids = [np.array([vocab[f] for f in fs if f in vocab] or [0], np.int64) for feats in group_feats for fs in feats]
    size = np.array([len(feats) for feats in group_feats], np.int64)
    return _Pairs(features, name_ids, size, np.concatenate([[0], np.cumsum(size)[:-1]]))


def _bag(arrays: list[np.ndarray]):
    import torch

    lengths = np.array([len(a) for a in arrays])
    return (torch.from_numpy(np.concatenate(arrays)),
            torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)))


def _contrastive_steps(pairs: _Pairs, config: EncoderConfig, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Symmetric InfoNCE over one random pair of names per entity, in-batch negatives; returns
    (feature weights, steps run)."""
    import torch

    gen = torch.Generator().manual_seed(config.seed)
    # dense gradients and Adam are 2-3x faster while the table is small; sparse ones (lazy Adam)
    # keep a step's cost independent of the vocabulary on big KBs
    sparse = len(pairs.features) > SPARSE_ABOVE
    emb = torch.nn.EmbeddingBag(len(pairs.features), config.dim, mode="mean", sparse=sparse)
    with torch.no_grad():
        emb.weight.normal_(0.0, 0.1, generator=gen)
    opt = (torch.optim.SparseAdam if sparse else torch.optim.Adam)(emb.parameters(), lr=config.lr)
    n_groups = len(pairs.size)
    batch = min(config.batch_size, n_groups)
    per_epoch = math.ceil(n_groups / batch)
    steps = min(config.epochs * per_epoch, config.max_steps)
    log.info("training the name encoder: %d entities with 2+ names, %d features, %d steps",
             n_groups, len(pairs.features), steps)
    order, loss_sum, labels = np.empty(0, np.int64), 0.0, torch.arange(batch)
    for step in range(1, steps + 1):
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(n_groups)])
        chosen, order = order[:batch], order[batch:]
        # one random pair of distinct names per entity (no entity twice in a batch)
        size = pairs.size[chosen]
        a = rng.integers(size)
        b = (a + 1 + rng.integers(size - 1)) % size
        za = torch.nn.functional.normalize(emb(*_bag([pairs.name_ids[i] for i in pairs.start[chosen] + a])), dim=-1)
        zb = torch.nn.functional.normalize(emb(*_bag([pairs.name_ids[i] for i in pairs.start[chosen] + b])), dim=-1)
        logits = za @ zb.T / config.temperature
        target = labels[:len(chosen)]
        loss = (torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach())
        if step % per_epoch == 0 or step == steps:
            if step // per_epoch % 10 == 0 or step == steps:
                log.info("name encoder step %d/%d: loss %.3f", step, steps, loss_sum / per_epoch)
            loss_sum = 0.0
    return emb.weight.detach().numpy().copy(), steps


def train_name_encoder(table: AliasTable, config: EncoderConfig = EncoderConfig()) -> NameEncoder:
    """Fit the encoder on pairs of names that share an entity (see :mod:`linking.encoder`). Raises
    :class:`ArtifactError` when the table has fewer than ``config.min_entities`` such entities."""
    groups = synonym_groups(table)
    if len(groups) < config.min_entities:
        raise ArtifactError(f"only {len(groups)} entities have two or more names: too few to train a name encoder")
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    if len(groups) > config.max_entities:
        # training draws at most max_steps x batch_size pairs anyway; a sample keeps the feature
        # lists of a Wikidata-sized table out of memory
        log.info("name encoder: training on a sample of %d of %d multi-name entities", config.max_entities, len(groups))
        groups = [groups[i] for i in np.sort(rng.choice(len(groups), config.max_entities, replace=False))]
    pairs = _encoder_vocabulary(groups, config)
    weight, steps = _contrastive_steps(pairs, config, rng)
    meta = {"entities": len(groups), "features": len(pairs.features), "steps": steps,
            "train_s": round(time.perf_counter() - start, 1)}
    log.info("name encoder trained in %.1f s", meta["train_s"])
    return NameEncoder(pairs.features, weight, config, meta)


# -- reranker -------------------------------------------------------------------------------------
def _held_out_rows(table: AliasTable, rng: np.random.Generator) -> list[int]:
    """One non-label alias of every entity with two or more distinct names (seeded choice)."""
    by_entity: dict[int, list[int]] = {}
    for row, ent in enumerate(table.entity_index.tolist()):
        by_entity.setdefault(ent, []).append(row)
    held = []
    for rows in by_entity.values():
        names = {table.alias_norm[r] for r in rows}
        labels = {table.alias_norm[r] for r in rows if table.kind[r] == "label"}
        options = [r for r in rows if table.kind[r] != "label" and table.alias_norm[r] not in labels]
        if len(names) >= 2 and options:
            held.append(options[int(rng.integers(len(options)))])
    return held


def training_pairs(table: AliasTable, prior: np.ndarray, *, seed: int = 0, max_queries: int = 20_000,
                   name_vectors_fn=None, pool: PoolSize = PoolSize(), encoder_config: EncoderConfig | None = None):
    """Leave-one-alias-out pairs from the table itself: one non-label alias of every entity with two
    or more names is held out, the rest indexed, and the held-out names linked. With
    ``encoder_config`` a name encoder is trained on the rest only (so the held-out names are as
    new to it as real mentions will be to the one trained on the whole table). Returns (query
    position, entity, features, is-gold, number of queries)."""
    rng = np.random.default_rng(seed)
    held = _held_out_rows(table, rng)
    if len(held) < 20:
        raise ArtifactError(f"only {len(held)} entities have two or more names: too few to train the reranker "
                            "(build the linker with rerank: false)")
    held = sorted(rng.permutation(held)[:max_queries].tolist())
    # drop the held-out rows, and any other row giving the same entity the same normalised name
    held_pairs = {(table.alias_norm[r], int(table.entity_index[r])) for r in held}
    keep = np.array([r for r, (norm, ent) in enumerate(zip(table.alias_norm, table.entity_index.tolist()))
                     if (norm, ent) not in held_pairs], dtype=np.int64)
    variants = table.variants()
    sub = AliasTable([table.alias[r] for r in keep], [table.alias_norm[r] for r in keep],
                     table.entity_index[keep], [table.kind[r] for r in keep], [variants[r] for r in keep])
    encoder = train_name_encoder(sub, encoder_config) if encoder_config is not None else None
    index = NameIndex(sub, name_vectors=name_vectors_fn(unique_norms(sub)[0].tolist()) if name_vectors_fn else None,
                      encoder=encoder)
    mentions = [table.alias[r] for r in held]
    qvec = name_vectors_fn([normalize_alias(m) for m in mentions]) if name_vectors_fn else None
    q, ents, _, _, f, _ = score_pairs(index, None, mentions, prior, qvec, pool)
    target = np.array([int(table.entity_index[held[i]]) for i in q]) == ents
    return q, ents, f, target, len(held)


def _fit_network(x: np.ndarray, target: np.ndarray, hidden: tuple[int, ...], seed: int):
    from sklearn.neural_network import MLPClassifier

    if hidden:
        model = MLPClassifier(hidden_layer_sizes=hidden, early_stopping=True, random_state=seed, batch_size=1024,
                              max_iter=60).fit(x, target)
        return model.coefs_, model.intercepts_
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000).fit(x, target)
    return [model.coef_.T], [model.intercept_]


def train_reranker(table: AliasTable, prior: np.ndarray, *, seed: int = 0, max_queries: int = 20_000,
                   name_vectors_fn=None, pool: PoolSize = PoolSize(), hidden: tuple[int, ...] = (32,),
                   encoder_config: EncoderConfig | None = None) -> Reranker:
    """A ReLU network (``hidden`` units; ``()`` = logistic regression) fit on :func:`training_pairs`;
    positives are the pooled aliases of the right entity. ``name_vectors_fn(list[str]) ->
    np.ndarray`` adds the dense feature; ``encoder_config`` the KB-trained name encoder's (the
    linker that uses this reranker must then have an encoder too)."""
    q, ents, f, target, n_held = training_pairs(table, prior, seed=seed, max_queries=max_queries,
                                                name_vectors_fn=name_vectors_fn, pool=pool,
                                                encoder_config=encoder_config)
    mean, scale = f.mean(0), f.std(0)
    scale[scale < 1e-6] = 1.0
    if hidden and n_held < MLP_MIN_QUERIES:
        log.info("%d training queries: too few for a hidden layer, fitting logistic regression", n_held)
        hidden = ()
    weights, biases = _fit_network((f - mean) / scale, target, tuple(hidden), seed)
    found = len(set(q[target].tolist()))
    log.info("reranker trained on %d held-out aliases (%d pairs; gold in pool for %d)", n_held, len(q), found)
    return Reranker(FEATURES, mean.astype(np.float32), scale.astype(np.float32),
                    tuple(np.asarray(w, np.float32) for w in weights), tuple(np.asarray(b, np.float32) for b in biases),
                    {"queries": n_held, "pairs": int(len(q)), "gold_in_pool": found, "seed": seed,
                     "hidden": list(hidden), "name_encoder": encoder_config is not None, "pool": pool.to_dict()})


# -- both, as the linker's build runs them ------------------------------------------------------------
@dataclass
class TrainedModels:
    encoder: NameEncoder | None = None
    reranker: Reranker | None = None


def _reranker_or_none(table: AliasTable, prior: np.ndarray, config: RerankerConfig, **kwargs) -> Reranker | None:
    try:
        return train_reranker(table, prior, seed=config.seed, max_queries=config.max_queries,
                              hidden=config.hidden, **kwargs)
    except ArtifactError as exc:
        log.info("no candidate reranker: %s", exc)
        return None


def train_models(table: AliasTable, prior: np.ndarray, config: LinkerConfig, name_vectors_fn=None) -> TrainedModels:
    """The name encoder (with ``config.name_encoder``) and the reranker (with ``config.rerank``);
    ``prior`` is indexed by KG entity index. A table with too few multi-name entities gets no
    encoder (the reranker then trains without one) or no reranker (the linker keeps the untrained
    exact + TF-IDF ranking)."""
    if not config.rerank:
        return TrainedModels()
    encoder = None
    if config.name_encoder:
        try:
            encoder = train_name_encoder(table, config.encoder)
        except ArtifactError as exc:
            log.info("no name encoder: %s", exc)
    if encoder is not None:
        try:
            return TrainedModels(encoder, train_reranker(
                table, prior, seed=config.reranker.seed, max_queries=config.reranker.max_queries,
                hidden=config.reranker.hidden, name_vectors_fn=name_vectors_fn, encoder_config=config.encoder,
                pool=PoolSize.from_config(dict(config.candidate_pool), True)))
        except ArtifactError as exc:
            # the held-out round left too few multi-name entities to train an encoder on: rerank without one
            log.info("reranker without the name encoder: %s", exc)
    pool = PoolSize.from_config(dict(config.candidate_pool), False)
    return TrainedModels(None, _reranker_or_none(table, prior, config.reranker, name_vectors_fn=name_vectors_fn,
                                                 pool=pool))
