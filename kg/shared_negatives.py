"""Training with negatives shared across a batch, scored with one matrix product.

PyKEEN's sLCWA loop draws negatives per triple and its LCWA loop scores every entity for every
(head, relation); neither fits an HPO-sized graph in a two-minute budget. This loop follows
PyTorch-BigGraph's batched negatives: every training query (head, relation) — with reciprocal
relations, so tails are the only side predicted — is scored against one set of K candidate
entities shared by the whole batch, through a single (B × D) · (D × K) product. The candidate set
mixes K·(1 − type_fraction) entities drawn uniformly with K·type_fraction entities drawn from the
*observed range* of the batch's relations (the entities seen as that relation's tails in train):
uniform negatives teach the type of the answer, range negatives teach the order within the type.
The loss is a sampled softmax (cross-entropy of each true tail against the candidates, true tails
of the query masked, logits corrected by the log of each candidate's expected sample count).

With ``type_constraints`` the range is *typed*: every entity that has a type (``kg/entities.parquet``
``types``) seen among the slot's train fillers — learned from train, so a slot filled only by genes
accepts every gene, including genes never seen in it. Candidates are then drawn from that range
only, and out-of-range entities get a fixed score offset of ``-OUT_OF_RANGE`` in training and in
evaluation alike: the vectors only have to order entities of the right type (the popularity
baseline, which scores unseen fillers 0, gets the same typing for free from its counts).

The model is DistMult or ComplEx (ComplEx stored as real and imaginary halves concatenated, the
layout ``kg.embeddings`` exports) with the N3 regulariser of Lacroix et al. (2018).

Cost per step. A step reads and updates only the entity rows the batch touches (its heads, its
candidates, its true tails) when ``sparse_updates`` is on: the rows are gathered with sparse
gradients and PyTorch's ``SparseAdam`` (or ``Adagrad``, which takes sparse gradients itself)
updates those rows alone, so an epoch costs O(triples × (candidates + dim)) whatever the entity
count. A dense update (Adam over the whole table every step) costs O(entities × dim) per step,
i.e. entities × triples per epoch: cheap at HPO's 37k entities, the dominant cost at millions
(benchmarks/embeddings_scale.py). No per-batch work is proportional to the entity count either.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kg.config import EmbeddingConfig
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

OUT_OF_RANGE = 1e4  # score offset of entities outside a slot's typed range: below every in-range score


class BilinearModel(torch.nn.Module):
    """DistMult or ComplEx over reciprocal relations; score(h, r, t) = query(h, r) · t."""

    def __init__(self, num_entities: int, num_relations: int, rank: int, model: str, init_scale: float,
                 seed: int) -> None:
        super().__init__()
        width = 2 * rank if model == "complex" else rank
        gen = torch.Generator().manual_seed(seed)
        self.model = model
        self.num_entities = num_entities
        self.num_relations = num_relations  # original relations; 2× are stored (reciprocals)
        self.entity = torch.nn.Parameter(torch.randn(num_entities, width, generator=gen) * init_scale)
        self.relation = torch.nn.Parameter(torch.randn(2 * num_relations, width, generator=gen) * init_scale)
        self.bias: torch.nn.Parameter | None = None  # (N, 2R) slot bias, see use_slot_bias
        self.register_buffer("outside", None, persistent=False)  # (2R, N) 0 / -OUT_OF_RANGE: restrict_to_ranges
        self.sparse_updates = False  # gradients of the entity rows and slot bias a batch touches only

    def use_slot_bias(self, index: "QueryIndex") -> None:
        """Add a learned bias per (relation, tail entity), started at log(1 + how often the entity
        fills that slot in train): the model starts from the popularity baseline and its vectors
        only have to learn what counting cannot."""
        counts = np.zeros((2 * self.num_relations, self.num_entities), dtype=np.float32)
        for k, (entities, fills) in enumerate(zip(index.ranges, index.range_counts)):
            counts[k, entities] = fills
        # stored entity-major (N × 2R) so a batch gathers the rows of its candidates with a sparse gradient
        self.bias = torch.nn.Parameter(torch.as_tensor(np.ascontiguousarray(np.log1p(counts).T)))

    def restrict_to_ranges(self, ranges: list[np.ndarray]) -> None:
        """Offset every entity outside slot k's range by ``-OUT_OF_RANGE`` in slot k's scores (a
        buffer, not saved: it is rebuilt from the training data and the entity types)."""
        outside = torch.full((2 * self.num_relations, self.num_entities), -OUT_OF_RANGE)
        for k, allowed in enumerate(ranges):
            outside[k, torch.as_tensor(allowed, dtype=torch.long)] = 0.0
        self.outside = outside

    def slot_offset(self, relations: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor | float:
        """Slot bias plus range offset of (relation row, candidate) pairs; every entity without
        ``candidates``."""
        offset: torch.Tensor | float = 0.0
        if self.bias is not None:
            offset = offset + (self.bias if candidates is None else self.bias.index_select(0, candidates)).T[relations]
        if self.outside is not None:
            offset = offset + (self.outside if candidates is None else self.outside.index_select(1, candidates))[relations]
        return offset

    def query(self, heads: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        return self.combine(F.embedding(heads, self.entity), F.embedding(relations, self.relation))

    def combine(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The query vector of head vectors ``h`` and relation vectors ``r``."""
        if self.model != "complex":
            return h * r
        rank = h.shape[1] // 2
        hr, hi, rr, ri = h[:, :rank], h[:, rank:], r[:, :rank], r[:, rank:]
        return torch.cat([hr * rr - hi * ri, hr * ri + hi * rr], dim=1)  # Re/Im of h·r; score = Re(h r conj t)

    def modulus(self, x: torch.Tensor) -> torch.Tensor:
        if self.model != "complex":
            return x.abs()
        rank = x.shape[1] // 2
        return torch.sqrt(x[:, :rank] ** 2 + x[:, rank:] ** 2 + 1e-12)

    def predict_t(self, hr: torch.Tensor) -> torch.Tensor:
        """Scores of every entity as the tail of (head, relation) rows (0-based original relations)."""
        return self.query(hr[:, 0], hr[:, 1]) @ self.entity.T + self.slot_offset(hr[:, 1])

    def predict_h(self, rt: torch.Tensor) -> torch.Tensor:
        """Scores of every entity as the head of (relation, tail) rows, through the reciprocal relation."""
        rels = rt[:, 0] + self.num_relations
        return self.query(rt[:, 1], rels) @ self.entity.T + self.slot_offset(rels)


class QueryIndex:
    """Training queries (head, relation) of the reciprocal graph with their true tails (CSR), and
    each relation's observed range (the tails it has in train) with how often each fills it."""

    def __init__(self, train: np.ndarray, num_entities: int, num_relations: int) -> None:
        h, r, t = (train[:, i].astype(np.int64) for i in range(3))
        heads = np.concatenate([h, t])
        rels = np.concatenate([r, r + num_relations])
        tails = np.concatenate([t, h])
        keys = heads * (2 * num_relations) + rels
        order = np.lexsort((tails, keys))
        keys, tails = keys[order], tails[order]
        uniq, starts = np.unique(keys, return_index=True)
        self.heads = uniq // (2 * num_relations)
        self.relations = uniq % (2 * num_relations)
        self.offsets = np.append(starts, len(keys))
        self.tails = tails
        self.num_entities = num_entities
        slots, counts = np.unique(rels[order] * num_entities + tails, return_counts=True)
        bounds = np.searchsorted(slots // num_entities, np.arange(2 * num_relations + 1))
        self.ranges = [slots[a:b] % num_entities for a, b in zip(bounds[:-1], bounds[1:])]
        self.range_counts = [counts[a:b] for a, b in zip(bounds[:-1], bounds[1:])]  # train fills per range entry

    def __len__(self) -> int:
        return len(self.heads)

    def typed_ranges(self, entity_types) -> list[np.ndarray]:
        """Per slot, every entity sharing a type with one of the slot's train fillers.
        ``entity_types`` is an (entities × types) sparse matrix; entities without a type count as
        one type of their own, so an untyped graph gets no constraint from this."""
        from scipy.sparse import csr_matrix, hstack

        types = csr_matrix(entity_types, dtype=np.float32)
        untyped = (np.diff(types.indptr) == 0).astype(np.float32)[:, None]
        types = hstack([types, csr_matrix(untyped)], format="csr")
        out = []
        for observed in self.ranges:
            slot_types = np.asarray(types[observed].sum(0)).ravel() > 0
            out.append(np.flatnonzero(types @ slot_types.astype(np.float32) > 0))
        return out

    def widen_ranges(self, ranges: list[np.ndarray]) -> None:
        """Replace the observed ranges by supersets (``typed_ranges``); entries never seen filling
        the slot get a count of 0."""
        counts = []
        for old, old_counts, new in zip(self.ranges, self.range_counts, ranges):
            widened = np.zeros(len(new), dtype=np.int64)
            widened[np.searchsorted(new, old)] = old_counts
            counts.append(widened)
        self.ranges, self.range_counts = ranges, counts

    def pairs(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``queries``, true tail) for every true tail of every query."""
        starts, ends = self.offsets[queries], self.offsets[queries + 1]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(queries)), lengths)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self.tails[np.repeat(starts, lengths) + within]

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Query batches of (mostly) one relation each, in random order: each batch's range negatives
        then come from the range its queries share."""
        perm = rng.permutation(len(self))
        perm = perm[np.argsort(self.relations[perm], kind="stable")]
        batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]


def sample_candidates(index: QueryIndex, relations: np.ndarray, config: EmbeddingConfig,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shared candidates for a batch (sorted) and the log of each one's probability of being drawn
    (the sampled-softmax correction): K·(1 − type_negative_fraction) uniform over all entities
    without replacement, the rest from the batch relations' ranges — uniformly without replacement,
    or with ``popularity_power`` α > 0 with replacement in proportion to (1 + slot fills)^α, so
    the hubs the model is most tempted by are drawn more often (duplicates merged). The work is
    proportional to K and to the ranges of the batch's relations, never to the entity count."""
    n = index.num_entities
    k_total = min(config.num_negatives, n)
    rels = np.unique(relations)
    if len(rels) == 1:
        pool = index.ranges[rels[0]]  # already sorted and unique: a batch of one relation copies nothing
    else:
        pool = np.unique(np.concatenate([index.ranges[r] for r in rels])) if len(rels) else np.empty(0, np.int64)
    k_type = min(int(round(k_total * config.type_negative_fraction)), len(pool))
    k_uniform = k_total - k_type
    uniform = rng.choice(n, k_uniform, replace=False) if k_uniform else np.empty(0, np.int64)
    if k_type and config.popularity_power > 0:
        fills = np.zeros(len(pool))
        for r in rels:
            fills[np.searchsorted(pool, index.ranges[r])] += index.range_counts[r]
        p = (1.0 + fills) ** config.popularity_power
        p /= p.sum()
        typed = pool[np.unique(rng.choice(len(pool), k_type, p=p))]
        pool_q = -np.expm1(k_type * np.log1p(-np.minimum(p, 1 - 1e-12)))  # P(drawn at least once)
    elif k_type:
        typed = pool[rng.choice(len(pool), k_type, replace=False)]
        pool_q = None
    else:
        typed = np.empty(0, np.int64)
        pool_q = None
    candidates = np.unique(np.concatenate([uniform, typed]).astype(np.int64))
    expected = np.full(len(candidates), k_uniform / n)
    if k_type:
        at = np.minimum(np.searchsorted(pool, candidates), len(pool) - 1)
        in_pool = pool[at] == candidates
        expected[in_pool] += pool_q[at[in_pool]] if pool_q is not None else k_type / len(pool)
    return candidates, np.log(np.minimum(expected, 1.0))


def fixed_logits(model: BilinearModel, rels: torch.Tensor, candidates: np.ndarray, log_q: np.ndarray,
                 rows: np.ndarray, column_of_tail: np.ndarray) -> torch.Tensor:
    """The (queries × candidates) logit terms without a gradient: the sampling correction
    −log q, the range offsets, and −inf where a candidate is a true tail of the query."""
    fixed = torch.as_tensor(-log_q, dtype=torch.float32).expand(len(rels), len(candidates)).clone()
    if model.outside is not None:
        fixed += model.outside.index_select(1, torch.as_tensor(candidates))[rels]
    hit = column_of_tail >= 0  # true tails that were drawn as candidates are not negatives
    fixed[torch.as_tensor(rows[hit]), torch.as_tensor(column_of_tail[hit])] = float("-inf")
    return fixed


def batch_loss(model: BilinearModel, index: QueryIndex, queries: np.ndarray, config: EmbeddingConfig,
               rng: np.random.Generator) -> torch.Tensor:
    """Sampled-softmax cross-entropy of every true tail of ``queries`` against shared candidates."""
    rows, tails = index.pairs(queries)
    candidates, log_q = sample_candidates(index, index.relations[queries], config, rng)
    # the candidate column of each true tail (-1: not drawn); candidates are sorted
    at = np.minimum(np.searchsorted(candidates, tails), len(candidates) - 1)
    column_of_tail = np.where(candidates[at] == tails, at, -1)
    rels = torch.as_tensor(index.relations[queries])
    rows_t, tails_t, cand = torch.as_tensor(rows), torch.as_tensor(tails), torch.as_tensor(candidates)
    sparse = model.sparse_updates
    # one gather of every entity row the batch uses: one gradient (sparse: those rows only) instead of three
    vectors = F.embedding(torch.cat([torch.as_tensor(index.heads[queries]), cand, tails_t]), model.entity,
                          sparse=sparse)
    h, c, t = vectors.split([len(queries), len(cand), len(tails_t)])
    r = F.embedding(rels, model.relation)
    q = model.combine(h, r)
    pos = (q[rows_t] * t).sum(1)
    if model.bias is not None:
        bias_c, bias_t = F.embedding(torch.cat([cand, tails_t]), model.bias, sparse=sparse).split(
            [len(cand), len(tails_t)])
        pos = pos + bias_t.gather(1, rels[rows_t].unsqueeze(1)).squeeze(1)
        # the slot bias joins the product as one extra column per relation in the batch
        slots, slot_of_query = torch.unique(rels, return_inverse=True)
        q = torch.cat([q, F.one_hot(slot_of_query, len(slots)).to(q.dtype)], dim=1)
        c = torch.cat([c, bias_c[:, slots]], dim=1)
    neg = torch.addmm(fixed_logits(model, rels, candidates, log_q, rows, column_of_tail), q, c.T)
    # per query, the negatives' log-sum-exp once; per true tail, softmax over itself + negatives
    loss = (torch.logaddexp(pos, torch.logsumexp(neg, dim=1)[rows_t]) - pos).mean()
    if config.regularizer_weight > 0:
        loss = loss + config.regularizer_weight * sum((model.modulus(x) ** 3).sum() for x in (h, r, t)) / len(queries)
    return loss


class OptimizerGroup:
    """Several optimizers stepped together, with one ``state_dict`` in the standard layout (state
    keyed by the position of the parameter across all of them), so checkpoints flatten it to
    safetensors like any single optimizer (kg.training.flatten_optimizer)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            sd = opt.state_dict()
            state.update({offset + int(k): v for k, v in sd["state"].items()})
            for group in sd["param_groups"]:
                groups.append({**group, "params": [offset + p for p in group["params"]]})
            offset += sum(len(g["params"]) for g in opt.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups, offset = list(state_dict["param_groups"]), 0
        for opt in self.optimizers:
            mine = [groups.pop(0) for _ in opt.param_groups]
            count = sum(len(g["params"]) for g in mine)
            opt.load_state_dict({"state": {int(k) - offset: v for k, v in state_dict["state"].items()
                                           if offset <= int(k) < offset + count},
                                 "param_groups": [{**g, "params": [p - offset for p in g["params"]]} for g in mine]})
            offset += count


def make_optimizer(config: EmbeddingConfig, model: BilinearModel):
    """Adam (fused: one kernel per parameter; the default loop took ~8x longer per step on the HPO
    model) or Adagrad. With sparse updates the entity table and the slot bias get sparse gradients:
    Adagrad takes them as they are; Adam becomes PyTorch's ``SparseAdam`` (the lazy variant: a row's
    moments move only on the steps that touch it) for those, with fused Adam for the relations."""
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=config.learning_rate)
    if not model.sparse_updates:
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, fused=True)
    rows = [p for p in (model.entity, model.bias) if p is not None]
    return OptimizerGroup(torch.optim.SparseAdam(rows, lr=config.learning_rate),
                          torch.optim.Adam([model.relation], lr=config.learning_rate, fused=True))


def train_epoch(model: BilinearModel, optimizer: torch.optim.Optimizer, index: QueryIndex,
                config: EmbeddingConfig, rng: np.random.Generator) -> float:
    """One pass over every training query; returns the mean batch loss."""
    model.train()
    total, count = 0.0, 0
    for queries in index.batches(config.batch_size or 2048, rng):
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, index, queries, config, rng)
        loss.backward()
        optimizer.step()
        total, count = total + float(loss.detach()), count + 1
    return total / max(count, 1)


def estimate_memory_bytes(config: EmbeddingConfig, num_entities: int, num_relations: int,
                          batch_size: int, mean_tails: float = 8.0) -> int:
    """Parameters, gradients and optimizer state (the slot bias's too), the range offsets, plus one
    batch's candidate scores and vectors. With sparse updates a gradient covers the batch's rows
    only (counted with the batch), not the whole table."""
    width = config.embedding_dim * (2 if config.model == "complex" else 1)
    optimizer_copies = 2 if config.optimizer == "adam" else 1
    dense_grad = 0 if config.resolved_sparse_updates(num_entities) else 1
    entity_params = num_entities * width * 4
    relation_params = 2 * num_relations * width * 4
    k = min(config.num_negatives, num_entities)
    pairs = batch_size * mean_tails
    batch = (batch_size * k * 3 + pairs * k * 3 + (k + 3 * pairs + 2 * batch_size) * width * 3) * 4
    slots = 2 * num_relations * num_entities * 4  # one (2R, N) float table: the slot bias, the range offsets
    tables = slots * (1 + dense_grad + optimizer_copies) * config.slot_bias + slots * config.type_constraints
    return int(entity_params * (1 + dense_grad + optimizer_copies) + relation_params * (2 + optimizer_copies)
               + batch + tables)


def build(config: EmbeddingConfig, train: np.ndarray, num_entities: int, num_relations: int,
          entity_types=None, relation_labels: list[str] | None = None) -> tuple[QueryIndex, BilinearModel, list]:
    """The query index, the freshly initialised model of ``config`` for 0-based ``train`` and the
    path rules mined (``config.rule_confidence`` > 0: their implied triples join ``train``, see
    kg.rules); ``entity_types`` (entities × types, sparse) enables ``config.type_constraints``."""
    torch.manual_seed(config.seed)
    rules: list = []
    if config.rule_confidence > 0:
        from kg.rules import with_rule_triples

        train, rules = with_rule_triples(train, num_entities, num_relations, config.rule_confidence, relation_labels)
    index = QueryIndex(train, num_entities, num_relations)
    model = BilinearModel(num_entities, num_relations, config.embedding_dim, config.model, config.init_scale,
                          config.seed)
    model.sparse_updates = config.resolved_sparse_updates(num_entities)
    if config.slot_bias:
        model.use_slot_bias(index)  # counts the observed fillers: before the ranges are widened to types
    if config.type_constraints and entity_types is not None:
        index.widen_ranges(index.typed_ranges(entity_types))
        model.restrict_to_ranges(index.ranges)
    return index, model, rules


def train_shared(config: EmbeddingConfig, train: np.ndarray, num_entities: int, num_relations: int,
                 checkpoint_dir: Path | None, *, progress: bool = True, stop_after_epochs: int | None = None,
                 entity_types=None, relation_labels: list[str] | None = None):
    """Train ``config.num_epochs`` epochs on 0-based ``train`` triples, resumable from
    ``checkpoint_dir`` (safetensors + JSON, the RNG states included, so a resumed run follows the
    same trajectory); returns (model, state, run info) as ``kg.training.train_model`` does.
    ``entity_types``, ``relation_labels``: see ``build``."""
    from kg.training import TrainingState, available_memory_bytes, load_checkpoint, save_checkpoint

    import time

    setup_start = time.perf_counter()
    index, model, rules = build(config, train, num_entities, num_relations, entity_types, relation_labels)
    setup_seconds = time.perf_counter() - setup_start
    batch_size = config.batch_size or 2048
    need = estimate_memory_bytes(config, num_entities, num_relations, batch_size, len(index.tails) / len(index))
    free = available_memory_bytes()
    log.info("memory estimate %.2f GiB (batch %d, %d candidates, %s updates) of %.2f GiB available",
             need / 2**30, batch_size, config.num_negatives, "sparse" if model.sparse_updates else "dense",
             free / 2**30)
    if need > config.memory_fraction * free and not config.force:
        raise ConfigError(f"[embed] training needs about {need / 2**30:.1f} GiB but {free / 2**30:.1f} GiB is "
                          "available: lower batch_size, num_negatives or embedding_dim, or set force: true")
    optimizer = make_optimizer(config, model)
    state = TrainingState()
    epoch_seconds: list[float] = []
    restored = load_checkpoint(checkpoint_dir, model, optimizer, config) if checkpoint_dir is not None else None
    if restored is not None:
        state = restored[0]
        log.info("resuming from %s at epoch %d", checkpoint_dir, state.epoch)
    for _ in range(state.epoch, config.num_epochs if stop_after_epochs is None
                   else min(config.num_epochs, state.epoch + stop_after_epochs)):
        rng = np.random.default_rng([config.seed, state.epoch])  # per epoch: a resumed run draws the same
        epoch_start = time.perf_counter()
        state.losses.append(train_epoch(model, optimizer, index, config, rng))
        epoch_seconds.append(round(time.perf_counter() - epoch_start, 2))
        state.epoch += 1
        if progress:
            log.info("epoch %d/%d: loss %.4f (%.1f s)", state.epoch, config.num_epochs, state.losses[-1],
                     epoch_seconds[-1])
        if checkpoint_dir is not None and config.checkpoint_every and state.epoch % config.checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, model, optimizer, state, config, None)
    run = {"batch_size": batch_size, "estimated_bytes": need, "available_bytes": free,
           "finished": state.epoch >= config.num_epochs, "steps": None, "sparse_updates": model.sparse_updates,
           "setup_seconds": round(setup_seconds, 2), "epoch_seconds": epoch_seconds,
           "path_rules": [dataclasses.asdict(rule) for rule in rules]}
    return model, state, run
