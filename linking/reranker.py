"""The learned candidate reranker for bare mentions, and the candidate generator around it.

A pool of alias names is gathered per mention by :meth:`linking.names.NameIndex.pool` (exact and
variant keys, abbreviation initials, the nearest names under the KB-trained name encoder of
:mod:`linking.encoder` when there is one, and otherwise character 3-gram TF-IDF neighbours,
word-stem TF-IDF neighbours and the same expanded through a stem translation table learned from
names that share an entity — :class:`~linking.names.PoolSize` chooses; optionally dense neighbours
from a transformer name encoder), every (mention, alias) pair gets the string features of
:mod:`linking.features`, and a small ReLU network (logistic regression for small tables) scores
them; an entity's score is its best alias's. Exact and variant-key hits rank first, the reranked
rest below them. The model is trained at build time on the knowledge base's own synonyms
(:mod:`linking.train`), so it never sees anything outside the alias table it serves. The weights
are a few hundred floats, saved as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from linking.candidates import Candidate, check_mentions
from linking.features import FEATURES, expand_rows, pair_features
from linking.keys import ParsedNames
from linking.names import NameIndex, PoolSize
from pipelines.errors import ArtifactError
from pipelines.normalize import normalize_alias

VARIANT_DISCOUNT = 0.95       # as ExactAliasGenerator
FUZZY_CEILING = 0.79          # reranked (non-exact) candidates score below every exact hit


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z.astype(np.float64), -60.0, 60.0)))


@dataclass(frozen=True)
class Reranker:
    """A small ReLU network over standardised :data:`FEATURES` with a sigmoid output (no hidden
    layer = logistic regression); weights as JSON."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    meta: dict = field(default_factory=dict)

    def logit(self, f: np.ndarray) -> np.ndarray:
        """The network's raw output; rank by this (probabilities saturate at 1 for clear matches)."""
        h = (f - self.mean) / self.scale
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                np.maximum(h, 0.0, out=h)
        return h[:, 0]

    def score(self, f: np.ndarray) -> np.ndarray:
        return sigmoid(self.logit(f))

    def to_json(self) -> dict:
        return {"features": list(self.features), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": [w.tolist() for w in self.weights], "biases": [b.tolist() for b in self.biases],
                "meta": self.meta}

    @classmethod
    def from_json(cls, data: dict, path: Path | str = "reranker.json") -> "Reranker":
        if tuple(data.get("features", ())) != FEATURES:
            raise ArtifactError(f"{path}: reranker features {data.get('features')} do not match this version's "
                                f"{list(FEATURES)}: rebuild the linker")
        weights = tuple(np.array(w, np.float32) for w in data["weights"])
        biases = tuple(np.array(b, np.float32) for b in data["biases"])
        dims = [len(FEATURES)] + [w.shape[1] for w in weights]
        if any(w.shape != (a, b) for w, a, b in zip(weights, dims, dims[1:])) or dims[-1] != 1:
            raise ArtifactError(f"{path}: reranker layer shapes {[w.shape for w in weights]} are inconsistent")
        return cls(FEATURES, np.array(data["mean"], np.float32), np.array(data["scale"], np.float32),
                   weights, biases, data.get("meta", {}))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> "Reranker":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: unreadable reranker ({exc})") from None
        return cls.from_json(data, path)


def score_pairs(index: NameIndex, reranker: Reranker | None, mentions: list[str], prior: np.ndarray,
                query_vectors: np.ndarray | None = None, pool: PoolSize = PoolSize()):
    """(query position, entity index, logit, alias row, features, tier) of the best alias row of each
    pooled entity, ordered by query, tier (exact name, variant key, other) and logit; without a
    reranker the "logit" is the character cosine."""
    qnorms = [normalize_alias(m) for m in mentions]
    parsed = ParsedNames(qnorms)
    q_enc = index.encoder.encode(qnorms) if index.encoder is not None else None
    qi, ui, ranks, q_char, q_stem, q_trans = index.pool(qnorms, parsed, query_vectors, q_enc, pool)
    feats, tier = pair_features(index, qnorms, parsed, query_vectors, q_enc, qi, ui, ranks, q_char, q_stem, q_trans)
    q, rows, ents, f, tier = expand_rows(index, qi, ui, feats, tier, prior)
    score = reranker.logit(f) if reranker is not None else f[:, FEATURES.index("char_cos")]
    order = np.lexsort((-score, -tier, ents, q))
    q, ents, score, rows, f, tier = q[order], ents[order], score[order], rows[order], f[order], tier[order]
    first = np.ones(len(q), bool)
    first[1:] = (q[1:] != q[:-1]) | (ents[1:] != ents[:-1])
    q, ents, score, rows, f, tier = q[first], ents[first], score[first], rows[first], f[first], tier[first]
    order = np.lexsort((-score, -tier, q))
    return q[order], ents[order], score[order], rows[order], f[order], tier[order]


class RerankedGenerator:
    """The :class:`~linking.candidates.CandidateGenerator` over :func:`score_pairs`: pooled entities
    ranked by the reranker's match probability, the best alias of each entity named."""

    def __init__(self, index: NameIndex, reranker: Reranker, prior: np.ndarray, encode=None,
                 pool: PoolSize = PoolSize()):
        self.index, self.reranker, self.prior, self.encode, self.pool = index, reranker, prior, encode, pool

    def top_k(self, mentions: list[str], k: int):
        """(query position, entity index, score, alias row) arrays of every mention's best k
        entities, grouped by query, best first (what :meth:`__call__` wraps in Candidates)."""
        mentions = check_mentions(mentions)
        if not mentions:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64)
        vectors = self.encode([normalize_alias(m) for m in mentions]) if self.encode is not None else None
        q, ents, logit, rows, _, tier = score_pairs(self.index, self.reranker, mentions, self.prior, vectors,
                                                    self.pool)
        # exact and variant-key hits keep the alias-kind scores ExactAliasGenerator gives them; the
        # reranked rest stay below that range, in the reranker's order
        kind_weight = self.index.row_kind_weight[rows]
        score = np.where(tier == 2, kind_weight, np.where(tier == 1, kind_weight * VARIANT_DISCOUNT,
                                                          FUZZY_CEILING * sigmoid(logit)))
        # rows come grouped by query, best first: keep each query's first k
        first = np.searchsorted(q, q)
        keep = np.flatnonzero(np.arange(len(q)) - first < k)
        return q[keep], ents[keep], score[keep], rows[keep]

    def __call__(self, mentions: list[str], k: int) -> list[list["Candidate"]]:
        q, ents, score, rows = self.top_k(mentions, k)
        table = self.index.table
        out: list[list[Candidate]] = [[] for _ in mentions]
        for i, e, s, r in zip(q.tolist(), ents.tolist(), score.tolist(), rows.tolist()):
            out[i].append(Candidate(e, s, table.alias[r], table.kind[r]))
        return out
