"""Rank the candidates of every mention in a document.

score = w_string · string similarity + w_prior · popularity prior + w_context · context similarity
        + w_coherence · graph coherence,
where the prior is log-scaled (sitelinks, annotation counts), context similarity is the cosine
between the words around the mention and the candidate's names and description
(:mod:`linking.context`), and coherence is the cosine between a candidate's KG embedding and the
embeddings of the other mentions' leading candidates. Terms that cannot be computed for a mention
(no embeddings, a single mention, no context words) drop out and the weights are renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from linking.candidates import Candidate
from pipelines.errors import ConfigError


@dataclass(frozen=True)
class DisambiguationWeights:
    string: float = 0.55
    prior: float = 0.15
    context: float = 0.1
    coherence: float = 0.2

    def __post_init__(self) -> None:
        for name in ("string", "prior", "context", "coherence"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[kg_linker -> weights -> {name}] must be >= 0")


@dataclass(frozen=True)
class Ranked:
    entity_index: int
    score: float
    alias: str
    kind: str


def prior_scores(priors: np.ndarray) -> np.ndarray:
    scaled = np.log1p(np.maximum(priors.astype(np.float64), 0.0))
    top = scaled.max() if len(scaled) else 0.0
    return (scaled / top if top > 0 else scaled).astype(np.float32)


def rank(candidates: list[list[Candidate]], prior: np.ndarray, vectors: np.ndarray | None,
         weights: DisambiguationWeights = DisambiguationWeights(),
         context: list[dict[int, float]] | None = None) -> list[list[Ranked]]:
    """``prior`` and ``vectors`` are indexed by KG entity index (row 0 = padding); ``context[m]``
    maps mention m's candidates to their context similarity (empty: no context for m)."""
    coherence = _coherence(candidates, vectors) if vectors is not None else None
    out = []
    for m, cands in enumerate(candidates):
        ctx = context[m] if context is not None else {}
        w_s, w_p = weights.string, weights.prior
        w_c = weights.coherence if coherence is not None else 0.0
        w_x = weights.context if ctx else 0.0
        total = (w_s + w_p + w_c + w_x) or 1.0
        ranked = []
        for c in cands:
            s = w_s * c.score + w_p * float(prior[c.entity_index]) + w_x * ctx.get(c.entity_index, 0.0)
            if coherence is not None:
                s += w_c * coherence[m].get(c.entity_index, 0.5)
            ranked.append(Ranked(c.entity_index, s / total, c.alias, c.kind))
        out.append(sorted(ranked, key=lambda r: -r.score))
    return out


def _coherence(candidates: list[list[Candidate]], vectors: np.ndarray) -> list[dict[int, float]] | None:
    leaders = [c[0].entity_index for c in candidates if c]
    if len(set(leaders)) < 2:
        return None
    unit = vectors[leaders] / np.maximum(np.linalg.norm(vectors[leaders], axis=1, keepdims=True), 1e-9)
    total = unit.sum(0)
    out = []
    pos = 0
    for cands in candidates:
        if not cands:
            out.append({})
            continue
        context = total - unit[pos]  # the other mentions' leading candidates
        pos += 1
        norm = np.linalg.norm(context)
        if norm < 1e-9:
            out.append({})
            continue
        idx = np.array([c.entity_index for c in cands])
        vec = vectors[idx]
        cos = vec @ (context / norm) / np.maximum(np.linalg.norm(vec, axis=1), 1e-9)
        out.append(dict(zip(idx.tolist(), ((cos + 1) / 2).tolist())))
    return out
