"""Filtered rank-based link-prediction evaluation (MRR, Hits@k), both sides, realistic ranks.

PyKEEN's evaluator builds its filter by scanning every known triple for every batch, which on a
half-million-triple graph costs ~25 ms per test triple on 2 cores. Here the known answers of each
(head, relation) and (relation, tail) query are looked up once through a sorted key array, so the
cost is dominated by scoring.
"""

from __future__ import annotations

import numpy as np
import torch


class AnswerIndex:
    """All true answers per query key, e.g. key = head * R + relation → tails."""

    def __init__(self, keys: np.ndarray, answers: np.ndarray):
        order = np.argsort(keys, kind="stable")
        self.keys, first = np.unique(keys[order], return_index=True)
        self.answers = answers[order]
        self.starts = first
        self.ends = np.append(first[1:], len(order))

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, answer) pairs: every known answer of every query key."""
        pos = np.searchsorted(self.keys, keys)
        pos = np.clip(pos, 0, max(len(self.keys) - 1, 0))
        found = self.keys[pos] == keys if len(self.keys) else np.zeros(len(keys), bool)
        starts, ends = self.starts[pos], np.where(found, self.ends[pos], self.starts[pos])
        lengths = ends - starts
        rows = np.repeat(np.arange(len(keys)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self.answers[np.repeat(starts, lengths) + offsets]


def _side_ranks(score_fn, queries: torch.Tensor, targets: np.ndarray, known: AnswerIndex,
                keys: np.ndarray, batch_size: int) -> np.ndarray:
    ranks = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), batch_size):
        sl = slice(start, start + batch_size)
        with torch.no_grad():
            scores = score_fn(queries[sl]).float()
        tgt = torch.as_tensor(targets[sl], dtype=torch.long)
        true = scores.gather(1, tgt[:, None])
        rows, answers = known.lookup(keys[sl])
        scores[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(answers, dtype=torch.long)] = float("-inf")
        greater = (scores > true).sum(1)
        equal = (scores == true).sum(1)  # the target itself was masked: ties are other entities
        ranks[sl] = (1 + greater + 0.5 * equal).numpy()
    return ranks


def side_ranks(predict_t, predict_h, test: np.ndarray, known: np.ndarray, num_relations: int,
               batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Filtered realistic ranks (head side, tail side) of 0-based ``test`` triples; ``predict_t``
    scores every entity for (head, relation) rows, ``predict_h`` for (relation, tail) rows."""
    h, r, t = (known[:, i].astype(np.int64) for i in range(3))
    tails_of = AnswerIndex(h * num_relations + r, t)
    heads_of = AnswerIndex(t * num_relations + r, h)
    test = test.astype(np.int64)
    q = torch.as_tensor(test, dtype=torch.long)
    tail_ranks = _side_ranks(predict_t, q[:, :2], test[:, 2], tails_of,
                             test[:, 0] * num_relations + test[:, 1], batch_size)
    head_ranks = _side_ranks(predict_h, q[:, 1:], test[:, 0], heads_of,
                             test[:, 2] * num_relations + test[:, 1], batch_size)
    return head_ranks, tail_ranks


def summarise_ranks(head_ranks: np.ndarray, tail_ranks: np.ndarray,
                    ks: tuple[int, ...] = (1, 3, 10)) -> dict[str, float]:
    ranks = np.concatenate([head_ranks, tail_ranks])
    out = {"mrr": float(np.mean(1.0 / ranks)), "mean_rank": float(np.mean(ranks))}
    out.update({f"hits_at_{k}": float(np.mean(ranks <= k)) for k in ks})
    out.update({"mrr_head": float(np.mean(1.0 / head_ranks)), "mrr_tail": float(np.mean(1.0 / tail_ranks))})
    return out


def per_relation(head_ranks: np.ndarray, tail_ranks: np.ndarray, relations: np.ndarray,
                 labels: list[str]) -> dict[str, dict[str, float]]:
    """MRR, Hits@10 (both sides) and test-triple count of every relation present in the test."""
    out = {}
    for rel in np.unique(relations):
        sel = relations == rel
        m = summarise_ranks(head_ranks[sel], tail_ranks[sel], ks=(10,))
        out[labels[int(rel)]] = {"mrr": m["mrr"], "hits_at_10": m["hits_at_10"], "mrr_head": m["mrr_head"],
                                 "mrr_tail": m["mrr_tail"], "count": int(sel.sum())}
    return out


def filtered_rank_metrics(model, test: np.ndarray, known: np.ndarray, num_relations: int,
                          batch_size: int = 256, ks: tuple[int, ...] = (1, 3, 10),
                          relation_labels: list[str] | None = None) -> dict:
    """``test`` and ``known`` are (n, 3) arrays of 0-based (head, relation, tail) ids (original
    relations: PyKEEN's predict_* map them to inverse relations where the model uses those); ``known``
    holds every true triple (train + valid + test) used for filtering. With ``relation_labels`` the
    result also holds ``per_relation`` metrics keyed by label."""
    model.eval()
    head_ranks, tail_ranks = side_ranks(model.predict_t, model.predict_h, test, known, num_relations, batch_size)
    out: dict = {**summarise_ranks(head_ranks, tail_ranks, ks), "num_entities": int(model.num_entities)}
    if relation_labels is not None:
        out["per_relation"] = per_relation(head_ranks, tail_ranks, test[:, 1], relation_labels)
    return out


class PopularityBaseline:
    """No learning: every entity scores how often it fills the relation's head (or tail) slot in train."""

    def __init__(self, train: np.ndarray, num_entities: int, num_relations: int):
        from scipy.sparse import csr_matrix

        h, r, t = (train[:, i].astype(np.int64) for i in range(3))
        ones = np.ones(len(train), dtype=np.float32)
        shape = (num_relations, num_entities)
        self.tail_counts = csr_matrix((ones, (r, t)), shape=shape)
        self.head_counts = csr_matrix((ones, (r, h)), shape=shape)
        self.num_entities = num_entities

    def eval(self) -> None:
        """Nothing to switch: there are no parameters."""

    def predict_t(self, hr: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.tail_counts[hr[:, 1].numpy()].toarray())

    def predict_h(self, rt: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.head_counts[rt[:, 0].numpy()].toarray())


def with_baseline(metrics: dict, train: np.ndarray, test: np.ndarray, known: np.ndarray, num_relations: int,
                  relation_labels: list[str] | None = None, batch_size: int = 256) -> dict:
    """``metrics`` plus the popularity baseline on the same test triples (``baseline``: overall, per
    side and per relation) and ``baseline_ratio`` = model MRR / baseline MRR."""
    baseline = PopularityBaseline(train, int(metrics["num_entities"]), num_relations)
    base = filtered_rank_metrics(baseline, test, known, num_relations, batch_size, relation_labels=relation_labels)
    base.pop("num_entities")
    ratio = metrics["mrr"] / base["mrr"] if base["mrr"] > 0 else None
    return {**metrics, "baseline": base, "baseline_ratio": ratio}
