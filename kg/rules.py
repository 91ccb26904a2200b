"""Two-hop rules mined from the training triples, whose implied triples are added to training.

A rule ``r3(x, y) ⇐ r1(x, z) ∧ r2(z, y)`` (r1, r2 may be reciprocal relations) is kept when, on the
training triples alone, at least ``min_confidence`` of the (x, y) pairs its body connects are
``r3`` triples and at least ``min_support`` are. Its other body pairs are then added to the
training triples of the embedding (rule-injected training, as in KALE / RUGE, Guo et al. 2016,
2018): the vectors are fitted to what the rule implies as well as to what is stated. On HPO the
miner finds, e.g., ``gene_associated_with_phenotype ⇐ gene_associated_with_disease ∘ has_phenotype``
— HPO derives genes_to_phenotype that way — which plain vectors cannot compose exactly.

Cost. Only rule bodies whose path count (Σ over middle entities of in-degree × out-degree) stays
under ``max_paths`` are evaluated, so hub-to-hub products (phenotype → gene → phenotype) are
skipped rather than materialised. A body with more than ``screen_paths`` paths is first screened
on a seeded sample of its start entities holding about ``screen_paths`` paths: its confidence for
every head relation is estimated there, and only a body whose estimate comes within
``SCREEN_SLACK`` of ``min_confidence`` is computed in full (the thresholds are applied to the full
counts, so a screen never admits a rule, it only skips bodies that cannot reach the threshold).
The support of a body for all head relations at once is one sorted-key lookup of its pairs among
the training pairs. With 4R² bodies the cost is then about 4R² × ``screen_paths`` plus the
bodies that look like rules, not 4R² × ``max_paths`` × R (which made rule mining the whole cost
of training on a generated 1M-triple graph).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PathRule:
    """``head(x, y) ⇐ body[0](x, z) ∧ body[1](z, y)``; relation ids ≥ R are reciprocals."""

    body: tuple[int, int]
    head: int
    support: int  # body pairs that are head triples in train
    confidence: float  # support / body pairs
    implied: int  # body pairs that are not head triples in train: the triples the rule adds


def _adjacency(train: np.ndarray, num_entities: int, num_relations: int) -> list[csr_matrix]:
    """One binary (entities × entities) matrix per relation, then one per reciprocal relation."""
    out = []
    for r in range(num_relations):
        sel = train[:, 1] == r
        ones = np.ones(int(sel.sum()), dtype=np.float32)
        out.append(csr_matrix((ones, (train[sel, 0], train[sel, 2])), shape=(num_entities, num_entities)))
        out[-1].sum_duplicates()
        out[-1].data[:] = 1.0
    return out + [a.T.tocsr() for a in out]


SCREEN_SLACK = 0.1  # a body is computed in full when its sampled confidence ≥ min_confidence − this


def _body_pairs(first: csr_matrix, second: csr_matrix) -> csr_matrix:
    return (first @ second).tocsr()


class _StatedPairs:
    """The (head entity, tail entity) pairs of train as sorted int64 keys, with their relation, to
    find which relations hold between the pairs of a body in one lookup."""

    def __init__(self, train: np.ndarray, num_entities: int) -> None:
        keys = train[:, 0].astype(np.int64) * num_entities + train[:, 2]
        order = np.lexsort((train[:, 1], keys))
        self.keys, self.relations = keys[order], train[order, 1].astype(np.int64)
        self.n = num_entities

    def support(self, pair_keys: np.ndarray, num_relations: int) -> np.ndarray:
        """Per relation r: how many of the (unique) ``pair_keys`` are r triples in train."""
        left = np.searchsorted(self.keys, pair_keys, "left")
        right = np.searchsorted(self.keys, pair_keys, "right")
        count = right - left
        hits = np.repeat(left, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
        return np.bincount(self.relations[hits], minlength=num_relations)

    def lacking(self, pair_keys: np.ndarray, relation: int) -> np.ndarray:
        """The ``pair_keys`` that are not ``relation`` triples in train."""
        mine = self.keys[self.relations == relation]
        at = np.minimum(np.searchsorted(mine, pair_keys), max(len(mine) - 1, 0))
        return pair_keys[mine[at] != pair_keys] if len(mine) else pair_keys


def _keys(pairs: csr_matrix, rows: np.ndarray | None, n: int) -> np.ndarray:
    """The (x, y) pairs of a body product as keys x·n + y, x ≠ y (unique: a sparse product holds each
    pair once); ``rows`` maps the product's rows back to entities when it was computed on a sample
    of them."""
    coo = pairs.tocoo()
    x = coo.row.astype(np.int64) if rows is None else rows[coo.row].astype(np.int64)
    y = coo.col.astype(np.int64)
    keep = (x != y) & (coo.data != 0)
    return x[keep] * n + y[keep]


def _sample_rows(row_paths: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Start entities in seeded random order until their paths (``row_paths``: per start entity,
    the body's paths from it) reach ``budget`` (sorted)."""
    nz = np.flatnonzero(row_paths)
    order = rng.permutation(nz)
    take = int(np.searchsorted(np.cumsum(row_paths[order]), budget)) + 1
    return np.sort(order[:take])


def mine_path_rules(train: np.ndarray, num_entities: int, num_relations: int, min_confidence: float,
                    min_support: int = 20, max_paths: int = 20_000_000,
                    screen_paths: int = 20_000) -> tuple[list[PathRule], np.ndarray]:
    """(rules kept, the 0-based (head, relation, tail) triples they imply that train lacks)."""
    n = num_entities
    adj = _adjacency(train, n, num_relations)
    indeg = np.stack([np.asarray(a.sum(0)).ravel() for a in adj])  # (2R × entities)
    outdeg = np.stack([np.asarray(a.sum(1)).ravel() for a in adj])
    paths = indeg @ outdeg.T  # paths[k1, k2]: (x, z, y) paths of body k1 ∘ k2
    stated = _StatedPairs(train, n)
    rng = np.random.default_rng(0)
    rules, implied = [], []
    screened = 0
    row_paths, row_paths_of = None, -1
    for k1, k2 in zip(*np.nonzero((paths > 0) & (paths <= max_paths))):
        if k2 == (k1 + num_relations) % len(adj):
            continue  # r ∘ r⁻¹ only says "shares a neighbour"
        if paths[k1, k2] > screen_paths:
            if row_paths_of != k1:  # per start entity, its paths through k1 then each relation: one product per k1
                row_paths, row_paths_of = adj[k1] @ outdeg.T, k1
            rows = _sample_rows(row_paths[:, k2], screen_paths, rng)
            sample = _keys(_body_pairs(adj[k1][rows], adj[k2]), rows, n)
            if not len(sample) or stated.support(sample, num_relations).max() < (min_confidence - SCREEN_SLACK) * len(sample):
                screened += 1
                continue
        keys = _keys(_body_pairs(adj[k1], adj[k2]), None, n)
        if not len(keys):
            continue
        support = stated.support(keys, num_relations)
        for head in np.flatnonzero((support >= min_support) & (support >= min_confidence * len(keys))):
            new = stated.lacking(keys, int(head))
            if len(new):  # a confident rule that implies nothing train lacks adds nothing
                rules.append(PathRule((int(k1), int(k2)), int(head), int(support[head]),
                                      float(support[head] / len(keys)), int(len(new))))
                implied.append(np.stack([new // n, np.full(len(new), head), new % n], axis=1))
    if screened:
        log.info("rule mining: %d rule bodies skipped after a sampled screen of %d paths each", screened, screen_paths)
    triples = np.unique(np.concatenate(implied), axis=0) if implied else np.empty((0, 3), np.int64)
    return rules, triples.astype(np.int64)


def with_rule_triples(train: np.ndarray, num_entities: int, num_relations: int, min_confidence: float,
                      labels: list[str] | None = None) -> tuple[np.ndarray, list[PathRule]]:
    """``train`` plus the triples implied by the rules mined from it; logs every rule kept."""
    rules, implied = mine_path_rules(train, num_entities, num_relations, min_confidence)
    name = (lambda k: (labels[k] if k < num_relations else labels[k - num_relations] + "⁻¹")) if labels else str
    for rule in rules:
        log.info("rule %s ⇐ %s ∘ %s: confidence %.3f, support %d, adds %d triples", name(rule.head),
                 name(rule.body[0]), name(rule.body[1]), rule.confidence, rule.support, rule.implied)
    return np.concatenate([train.astype(np.int64), implied]), rules
