"""Two-hop rules mined from the training triples, whose implied triples are added to training.

A rule ``r3(x, y) ⇐ r1(x, z) ∧ r2(z, y)`` (r1, r2 may be reciprocal relations) is kept when, on the
training triples alone, at least ``min_confidence`` of the (x, y) pairs its body connects are
``r3`` triples and at least ``min_support`` are. Its other body pairs are then added to the
training triples of the embedding (rule-injected training, as in KALE / RUGE, Guo et al. 2016,
2018): the vectors are fitted to what the rule implies as well as to what is stated. On HPO the
miner finds, e.g., ``gene_associated_with_phenotype ⇐ gene_associated_with_disease ∘ has_phenotype``
— HPO derives genes_to_phenotype that way — which plain vectors cannot compose exactly.

Only rule bodies whose path count (Σ over middle entities of in-degree × out-degree) stays under
``max_paths`` are evaluated, so hub-to-hub products (phenotype → gene → phenotype) are skipped
rather than materialised; the cost is bounded by that cap per body, not by entities squared.
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


def _body_pairs(first: csr_matrix, second: csr_matrix) -> csr_matrix:
    pairs = (first @ second).tocsr()
    pairs.setdiag(0)
    pairs.eliminate_zeros()
    pairs.data[:] = 1.0
    return pairs


def _rules_of_body(pairs: csr_matrix, body: tuple[int, int], heads: list[csr_matrix], min_confidence: float,
                   min_support: int):
    """(rule, the triples it adds) for every relation the body's pairs imply confidently."""
    for head, stated in enumerate(heads):
        support = int(pairs.multiply(stated).nnz)
        if support < min_support or support / pairs.nnz < min_confidence:
            continue
        new = (pairs - pairs.multiply(stated)).tocoo()
        new.eliminate_zeros()
        if new.nnz:  # a confident rule that implies nothing train lacks adds nothing
            yield (PathRule(body, head, support, support / pairs.nnz, int(new.nnz)),
                   np.stack([new.row, np.full(new.nnz, head), new.col], axis=1))


def mine_path_rules(train: np.ndarray, num_entities: int, num_relations: int, min_confidence: float,
                    min_support: int = 20, max_paths: int = 20_000_000) -> tuple[list[PathRule], np.ndarray]:
    """(rules kept, the 0-based (head, relation, tail) triples they imply that train lacks)."""
    adj = _adjacency(train, num_entities, num_relations)
    indeg = csr_matrix(np.stack([np.asarray(a.sum(0)).ravel() for a in adj]))  # (2R × entities)
    outdeg = csr_matrix(np.stack([np.asarray(a.sum(1)).ravel() for a in adj]))
    paths = (indeg @ outdeg.T).toarray()  # paths[k1, k2]: (x, z, y) paths of body k1 ∘ k2
    rules, implied = [], []
    for k1, k2 in zip(*np.nonzero((paths > 0) & (paths <= max_paths))):
        if k2 == (k1 + num_relations) % len(adj):
            continue  # r ∘ r⁻¹ only says "shares a neighbour"
        pairs = _body_pairs(adj[k1], adj[k2])
        if pairs.nnz:
            for rule, new in _rules_of_body(pairs, (int(k1), int(k2)), adj[:num_relations], min_confidence,
                                            min_support):
                rules.append(rule)
                implied.append(new)
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
