"""Learned candidate reranking for bare mentions.

A pool of alias names is gathered per mention (exact and variant keys, abbreviation initials, the
nearest names under the KB-trained name encoder of :mod:`linking.encoder` when there is one, and
otherwise character 3-gram TF-IDF neighbours, word-stem TF-IDF neighbours and the same expanded
through a stem translation table learned from names that share an entity — :class:`PoolSize`
chooses; optionally dense neighbours from a transformer name encoder), every
(mention, alias) pair gets a handful of string features, and a small ReLU network (logistic
regression for small tables) scores them; an entity's score is its best alias's. Exact and
variant-key hits rank first, the reranked rest below them. The model is trained at build time on
the knowledge base's own synonyms (:func:`training_pairs`: one alias of every multi-name entity
held out, the rest indexed, the held-out names linked), so it never sees anything outside the alias
table it serves. The weights are a few hundred floats, saved as JSON.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from linking.aliases import DEFAULT_KIND_WEIGHT, KIND_WEIGHTS, AliasTable
from linking.candidates import _unique_norms
from linking.context import _given
from pipelines.errors import ArtifactError, InputError
from pipelines.normalize import normalize_alias, variant_key

if TYPE_CHECKING:
    from linking.encoder import EncoderConfig, NameEncoder

log = logging.getLogger(__name__)

STOPWORDS = frozenset("of the and in a an to with or by on for at from as".split())
STEM_CHARS = 5  # a word's first five letters: "abnormality"/"abnormal", "hypertrophic"/"hypertrophy"
# character 3-grams carried by more aliases than this are skipped when *searching* (they are
# "abn", "ity", "ica"…: expensive posting lists that barely move cosine); features use all of them
CHAR_SEARCH_MAX_DF = 1500
STEM_SEARCH_MAX_DF = 1500

# Exact and variant-key hits are not features: they are ranked first (see score_pairs). Learned from
# leave-one-alias-out data, an "exact" feature would only ever fire on the wrong entity (the right
# one's name was held out) and teach the model to distrust exact matches.
FEATURES = ("char_cos", "word_cos", "stem_cos", "dense_cos", "jaccard", "len_ratio",
            "word_count_diff", "first_stem", "last_stem", "initials", "char_rank", "stem_rank", "kind_weight",
            "is_label", "log_aliases", "prior", "char_x_stem", "query_len", "trans_cos", "trans_rank", "enc_cos",
            "enc_rank")
TRANSLATION_MIN_COUNT = 2     # stem pairs seen in fewer same-entity name pairs are noise
TRANSLATION_MIN_P = 0.05
TRANSLATION_TOP = 10          # targets kept per source stem (bounds the query expansion's fan-out)
TRANSLATION_WEIGHT = 1.0
VARIANT_DISCOUNT = 0.95       # as ExactAliasGenerator
FUZZY_CEILING = 0.79          # reranked (non-exact) candidates score below every exact hit
MLP_MIN_QUERIES = 1000        # below this a hidden layer overfits (separable data, saturated logits)


def word_keys(norm: str, stem: int | None = STEM_CHARS) -> list[str]:
    """Content words of a normalised name in American/singular form, optionally cut to a stem."""
    return [w[:stem] if stem else w for w in variant_key(norm).split(" ") if w and w not in STOPWORDS]


class _Parsed:
    """Per-name keys, computed once: variant key, content words, word stems."""

    def __init__(self, norms: list[str]):
        self.variants = [variant_key(n) for n in norms]
        self.words = [[w for w in v.split(" ") if w and w not in STOPWORDS] for v in self.variants]
        self.stems = [[w[:STEM_CHARS] for w in ws] for ws in self.words]


def initials(norm: str) -> str:
    """"total lung capacity" → "tlc"; "atrial septal defect" → "asd" (stop words skipped)."""
    words = [w for w in norm.split(" ") if w and w not in STOPWORDS]
    return "".join(w[0] for w in words) if len(words) >= 2 else ""


def _tfidf(analyzer):
    from sklearn.feature_extraction.text import TfidfVectorizer

    kwargs = {"analyzer": "char_wb", "ngram_range": (3, 3)} if analyzer == "char" else {"analyzer": analyzer}
    return TfidfVectorizer(min_df=1, dtype=np.float32, sublinear_tf=True, **kwargs)


def _search_matrix(matrix: sp.csr_matrix, max_df: int) -> sp.csr_matrix:
    """The transposed (term x name) matrix, without the terms that more than ``max_df`` names carry."""
    df = np.diff(matrix.tocsc().indptr)
    return (sp.diags((df <= max_df).astype(np.float32)) @ matrix.T).tocsr()


def _row_dots(a: sp.csr_matrix, ai: np.ndarray, b: sp.csr_matrix, bi: np.ndarray) -> np.ndarray:
    """Dot products a[ai[j]] · b[bi[j]] for every j, without densifying."""
    if len(ai) == 0:
        return np.zeros(0, np.float32)
    return np.asarray(a[ai].multiply(b[bi]).sum(1), dtype=np.float32).ravel()


def _block_indicator(widths: list[int]) -> sp.csr_matrix:
    edges = np.cumsum([0, *widths])
    which = np.searchsorted(edges, np.arange(edges[-1]), side="right") - 1
    return sp.csr_matrix((np.ones(edges[-1], np.float32), (np.arange(edges[-1]), which)),
                         shape=(edges[-1], len(widths)))


def _block_row_dots(queries: list[sp.csr_matrix], names: sp.csr_matrix, indicator: sp.csr_matrix,
                    ai: np.ndarray, bi: np.ndarray) -> np.ndarray:
    """Per block: query block row ai[j] · name block row bi[j] (``names`` holds the blocks side by
    side, ``indicator`` maps its columns to blocks); one sparse pass for all blocks."""
    if len(ai) == 0:
        return np.zeros((0, indicator.shape[1]), np.float32)
    a = sp.hstack(queries, format="csr")
    return np.asarray((a[ai].multiply(names[bi]) @ indicator).todense(), np.float32)


def _top_columns(sims: sp.csr_matrix, n: int) -> list[np.ndarray]:
    """Column indices of the n largest entries of every row, best first."""
    out = []
    indptr, data, indices = sims.indptr, sims.data, sims.indices
    for i in range(sims.shape[0]):
        d, c = data[indptr[i]:indptr[i + 1]], indices[indptr[i]:indptr[i + 1]]
        if len(d) > n:
            keep = np.argpartition(-d, n)[:n]
            d, c = d[keep], c[keep]
        out.append(c[np.argsort(-d, kind="stable")])
    return out


def _normalize_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    from sklearn.preprocessing import normalize

    return normalize(m.tocsr(), copy=False)


def stem_translation(table: AliasTable, vocab: dict[str, int]) -> sp.csr_matrix:
    """P(t | s) over word stems, from the pairs of names that share an entity ("small" → "micro",
    "hypop"; "fast" → "tachy"): how often stem t appears in another name of an entity whose name
    contains s. Identity pairs are left out; the query side adds its own stems back."""
    from collections import Counter

    names_of: dict[int, set[str]] = {}
    for norm, ent in zip(table.alias_norm, table.entity_index.tolist()):
        names_of.setdefault(ent, set()).add(norm)
    pair: Counter = Counter()
    single: Counter = Counter()
    for names in names_of.values():
        if len(names) < 2:
            continue
        stems = [{s for s in word_keys(n) if s in vocab} for n in names]
        for i, a in enumerate(stems):
            others = set().union(*(b for j, b in enumerate(stems) if j != i))
            for s in a:
                single[s] += 1
                pair.update((s, t) for t in others if t != s)
    best: dict[str, list[tuple[float, str]]] = {}
    for (s, t), n in pair.items():
        p = n / single[s]
        if n >= TRANSLATION_MIN_COUNT and p >= TRANSLATION_MIN_P:
            best.setdefault(s, []).append((p, t))
    rows, cols, vals = [], [], []
    for s, targets in best.items():
        for p, t in sorted(targets, reverse=True)[:TRANSLATION_TOP]:
            rows.append(vocab[s])
            cols.append(vocab[t])
            vals.append(p)
    n = len(vocab)
    return sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(n, n))


@dataclass
class NameIndex:
    """The unique normalised names of an alias table, with everything the pool and the features need."""

    table: AliasTable
    char_vocab: dict[str, int] | None = None
    char_idf: np.ndarray | None = None
    word_vocab: dict[str, int] | None = None
    word_idf: np.ndarray | None = None
    stem_vocab: dict[str, int] | None = None
    stem_idf: np.ndarray | None = None
    name_vectors: np.ndarray | None = None  # dense name embeddings, one per unique norm (optional)
    encoder: "NameEncoder | None" = None     # the KB-trained name encoder (optional)
    vectorizers: dict = field(default_factory=dict, init=False)
    translation: sp.csr_matrix | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        t = self.table
        self.norms, self.rows_sorted, self.starts, self.ends = _unique_norms(t)
        names = self.norms.tolist()
        parsed = _Parsed(names)
        self.matrices = {}
        for key, analyzer, docs in (("char", "char", names), ("word", _given, parsed.words),
                                    ("stem", _given, parsed.stems)):
            vec = _tfidf(analyzer)
            vocab, idf = getattr(self, f"{key}_vocab"), getattr(self, f"{key}_idf")
            if vocab is None:
                self.matrices[key] = vec.fit_transform(docs).tocsr()
            else:
                vec.vocabulary_, vec.idf_ = vocab, idf
                self.matrices[key] = vec.transform(docs).tocsr()
            self.vectorizers[key] = vec
        binary = self.matrices["word"].copy()
        binary.data[:] = 1.0
        self.word_binary = binary
        blocks = [self.matrices["char"], self.matrices["word"], self.matrices["stem"], self.matrices["stem"], binary]
        self.name_blocks = sp.hstack(blocks, format="csr")
        self.block_indicator = _block_indicator([b.shape[1] for b in blocks])
        self.translation = stem_translation(t, self.vectorizers["stem"].vocabulary_)
        self.by_norm = {n: u for u, n in enumerate(names)}
        self.by_variant: dict[str, list[int]] = {}
        self.by_initials: dict[str, list[int]] = {}
        for u, n in enumerate(names):
            self.by_variant.setdefault(parsed.variants[u], []).append(u)
            if ini := initials(n):
                self.by_initials.setdefault(ini, []).append(u)
        stems = parsed.stems
        self.first_stem = np.array([s[0] if s else "" for s in stems], dtype=object)
        self.last_stem = np.array([s[-1] if s else "" for s in stems], dtype=object)
        self.n_words = np.array([len(s) for s in stems], dtype=np.float32)
        self.n_chars = np.array([len(n) for n in names], dtype=np.float32)
        self.n_distinct_words = np.asarray(self.word_binary.sum(1), np.float32).ravel()
        self.norm_variant = np.array(parsed.variants, dtype=object)
        self.norm_initials = np.array([initials(n) for n in names], dtype=object)
        n_aliases = np.bincount(t.entity_index, minlength=int(t.entity_index.max()) + 1)
        self.row_log_aliases = np.log1p(n_aliases[t.entity_index]).astype(np.float32)
        self.row_kind_weight = np.array([KIND_WEIGHTS.get(k, DEFAULT_KIND_WEIGHT) for k in t.kind], np.float32)
        self.row_is_label = np.array([k == "label" for k in t.kind], np.float32)
        self.enc_vectors = self.encoder.encode(names) if self.encoder is not None else None
        self._enc_faiss = None
        if self.name_vectors is not None and len(self.name_vectors) != len(names):
            raise ArtifactError(f"{len(self.name_vectors)} name vectors for {len(names)} unique aliases: rebuild the linker")

    # search matrices, built on first use (the default pool with a name encoder never searches them):
    # common n-grams/stems dropped from the posting lists (see CHAR_SEARCH_MAX_DF)
    @cached_property
    def char_t(self) -> sp.csr_matrix:
        return _search_matrix(self.matrices["char"], CHAR_SEARCH_MAX_DF)

    @cached_property
    def stem_t(self) -> sp.csr_matrix:
        return _search_matrix(self.matrices["stem"], STEM_SEARCH_MAX_DF)

    def vocabularies(self) -> dict:
        return {key: ({k: int(v) for k, v in vec.vocabulary_.items()}, vec.idf_.astype(np.float32))
                for key, vec in self.vectorizers.items()}

    # -- candidate pool ---------------------------------------------------------------------
    def pool(self, qnorms: list[str], parsed: _Parsed, query_vectors: np.ndarray | None, q_enc: np.ndarray | None,
             size: "PoolSize"):
        """(query position, unique-norm position) pairs, each pair's reciprocal rank in the char,
        stem, translated-stem and encoder searches (0 = not found there), and the query-side matrices."""
        from linking.index import build_faiss

        q_char = self.vectorizers["char"].transform(qnorms).tocsr()
        q_stem = self.vectorizers["stem"].transform(parsed.stems).tocsr()
        q_trans = _normalize_rows(_normalize_rows(q_stem @ self.translation) * TRANSLATION_WEIGHT + q_stem)
        none = [np.zeros(0, np.int64)] * len(qnorms)
        char_top = _top_columns((q_char @ self.char_t).tocsr(), size.char) if size.char else none
        stem_top = _top_columns((q_stem @ self.stem_t).tocsr(), size.stem) if size.stem else none
        trans_top = _top_columns((q_trans @ self.stem_t).tocsr(), size.stem) if size.stem else none
        enc_top = none
        if q_enc is not None and self.enc_vectors is not None and size.enc:
            if self._enc_faiss is None:
                self._enc_faiss, _ = build_faiss(self.enc_vectors)
            _, found = self._enc_faiss.search(np.ascontiguousarray(q_enc, np.float32), min(size.enc, len(self.norms)))
            enc_top = [row[row >= 0] for row in found]
        dense_top = None
        if query_vectors is not None and self.name_vectors is not None:
            if getattr(self, "_faiss", None) is None:
                self._faiss, _ = build_faiss(self.name_vectors)
            _, dense_top = self._faiss.search(np.ascontiguousarray(query_vectors, np.float32), size.dense)
        # every search's hits as (query, name, slot, reciprocal rank), then one row per distinct
        # (query, name) holding its reciprocal rank in each search (0 where it was not found)
        parts_q, parts_u, parts_slot, parts_rr = [], [], [], []

        def add(tops, slot: int) -> None:
            lengths = np.fromiter((len(t) for t in tops), np.int64, count=len(tops))
            if not lengths.sum():
                return
            parts_q.append(np.repeat(np.arange(len(tops)), lengths))
            parts_u.append(np.concatenate(tops).astype(np.int64))
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            parts_rr.append(1.0 / (1.0 + np.arange(int(lengths.sum())) - starts))
            parts_slot.append(np.full(int(lengths.sum()), slot))

        for slot, tops in enumerate((char_top, stem_top, trans_top, enc_top)):
            add(tops, slot)
        extras = []
        for q, norm in enumerate(qnorms):
            extra = list(self.by_variant.get(parsed.variants[q], []))
            if (u := self.by_norm.get(norm)) is not None:
                extra.append(u)
            if " " not in norm and 2 <= len(norm) <= 8:
                extra.extend(self.by_initials.get(norm, [])[:20])
            extras.append(np.array(extra, np.int64))
        if dense_top is not None:
            extras = [np.concatenate([e, d[d >= 0]]) for e, d in zip(extras, dense_top)]
        add(extras, 4)  # slot 4: pooled, no rank feature
        if not parts_q:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.float32), q_char, q_stem,
                    q_trans)
        qs, us = np.concatenate(parts_q), np.concatenate(parts_u)
        keys, inverse = np.unique(qs * len(self.norms) + us, return_inverse=True)
        ranks = np.zeros((len(keys), 5), np.float32)
        ranks[inverse, np.concatenate(parts_slot)] = np.concatenate(parts_rr)
        return keys // len(self.norms), keys % len(self.norms), ranks[:, :4], q_char, q_stem, q_trans

    def pair_features(self, qnorms, parsed: _Parsed, query_vectors, q_enc, qi, ui, ranks, q_char, q_stem,
                      q_trans) -> tuple[np.ndarray, np.ndarray]:
        """One row of name-level features per (query, unique norm) pair (entity columns filled later),
        and each pair's tier: 2 = same normalised name, 1 = same variant key, 0 = neither."""
        q_word = self.vectorizers["word"].transform(parsed.words).tocsr()
        q_binary = q_word.copy()
        q_binary.data[:] = 1.0
        f = np.zeros((len(qi), len(FEATURES)), np.float32)
        col = {name: i for i, name in enumerate(FEATURES)}
        # all sparse cosines in one pass: [char | word | stem | translated stem | binary word]
        dots = _block_row_dots([q_char, q_word, q_stem, q_trans, q_binary], self.name_blocks, self.block_indicator,
                               qi, ui)
        f[:, col["char_cos"]], f[:, col["word_cos"]], f[:, col["stem_cos"]], f[:, col["trans_cos"]] = dots[:, :4].T
        shared = dots[:, 4]
        if query_vectors is not None and self.name_vectors is not None:
            f[:, col["dense_cos"]] = np.einsum("ij,ij->i", query_vectors[qi], self.name_vectors[ui])
        if q_enc is not None and self.enc_vectors is not None:
            f[:, col["enc_cos"]] = np.einsum("ij,ij->i", q_enc[qi], self.enc_vectors[ui])
        qn = np.array(qnorms, dtype=object)
        qvar = np.array(parsed.variants, dtype=object)
        q_stems = parsed.stems
        q_first = np.array([s[0] if s else "-" for s in q_stems], dtype=object)
        q_last = np.array([s[-1] if s else "-" for s in q_stems], dtype=object)
        q_words = np.array([len(s) for s in q_stems], np.float32)
        q_chars = np.array([len(n) for n in qnorms], np.float32)
        q_distinct = np.asarray(q_binary.sum(1), np.float32).ravel()
        q_compact = np.array([n if " " not in n else "-" for n in qnorms], dtype=object)
        tier = 2 * (qn[qi] == self.norms[ui]).astype(np.int8) + (qvar[qi] == self.norm_variant[ui]).astype(np.int8)
        f[:, col["jaccard"]] = shared / np.maximum(q_distinct[qi] + self.n_distinct_words[ui] - shared, 1.0)
        a, b = q_chars[qi], self.n_chars[ui]
        f[:, col["len_ratio"]] = np.minimum(a, b) / np.maximum(np.maximum(a, b), 1)
        f[:, col["word_count_diff"]] = np.log1p(np.abs(q_words[qi] - self.n_words[ui]))
        f[:, col["first_stem"]] = q_first[qi] == self.first_stem[ui]
        f[:, col["last_stem"]] = q_last[qi] == self.last_stem[ui]
        f[:, col["initials"]] = q_compact[qi] == self.norm_initials[ui]
        f[:, col["char_rank"]], f[:, col["stem_rank"]], f[:, col["trans_rank"]], f[:, col["enc_rank"]] = ranks.T
        f[:, col["char_x_stem"]] = f[:, col["char_cos"]] * f[:, col["stem_cos"]]
        f[:, col["query_len"]] = np.log1p(q_words[qi])
        return f, np.minimum(tier, 2)

    def expand_rows(self, qi: np.ndarray, ui: np.ndarray, feats: np.ndarray, tier: np.ndarray, prior: np.ndarray):
        """(query, unique norm) pairs → (query, alias row) pairs, with the alias/entity columns set."""
        counts = self.ends[ui] - self.starts[ui]
        pair = np.repeat(np.arange(len(ui)), counts)
        offsets = np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = self.rows_sorted[self.starts[ui][pair] + offsets]
        f = feats[pair]
        col = {name: i for i, name in enumerate(FEATURES)}
        f[:, col["kind_weight"]] = self.row_kind_weight[rows]
        f[:, col["is_label"]] = self.row_is_label[rows]
        f[:, col["log_aliases"]] = self.row_log_aliases[rows]
        ents = self.table.entity_index[rows]
        f[:, col["prior"]] = prior[ents] if len(prior) > int(ents.max(initial=0)) else 0.0
        return qi[pair], rows, ents, f, tier[pair]


def _sigmoid(z: np.ndarray) -> np.ndarray:
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
        return _sigmoid(self.logit(f))

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


@dataclass(frozen=True)
class PoolSize:
    """Names gathered per mention from each search (0 = that search is skipped). With a name
    encoder its neighbours carry the pool, and the sparse searches (three quarters of the query
    time) are off by default: see :meth:`default`."""

    char: int = 30
    stem: int = 30
    dense: int = 30
    enc: int = 30

    @classmethod
    def default(cls, encoder: bool) -> "PoolSize":
        return cls(char=0, stem=0, enc=30) if encoder else cls(enc=0)

    @classmethod
    def from_config(cls, config: dict, encoder: bool, where: str = "candidate_pool") -> "PoolSize":
        from dataclasses import replace

        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"[{where}] unknown key(s) {sorted(unknown)}: expected char, stem, enc, dense")
        for key, value in config.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"[{where}] {key} must be a non-negative integer, got {value!r}")
        return replace(cls.default(encoder), **config)


def score_pairs(index: NameIndex, reranker: Reranker | None, mentions: list[str], prior: np.ndarray,
                query_vectors: np.ndarray | None = None, pool: PoolSize = PoolSize()):
    """(query position, entity index, logit, alias row, features, tier) of the best alias row of each
    pooled entity, ordered by query, tier (exact name, variant key, other) and logit; without a
    reranker the "logit" is the character cosine."""
    qnorms = [normalize_alias(m) for m in mentions]
    parsed = _Parsed(qnorms)
    q_enc = index.encoder.encode(qnorms) if index.encoder is not None else None
    qi, ui, ranks, q_char, q_stem, q_trans = index.pool(qnorms, parsed, query_vectors, q_enc, pool)
    feats, tier = index.pair_features(qnorms, parsed, query_vectors, q_enc, qi, ui, ranks, q_char, q_stem, q_trans)
    q, rows, ents, f, tier = index.expand_rows(qi, ui, feats, tier, prior)
    score = reranker.logit(f) if reranker is not None else f[:, FEATURES.index("char_cos")]
    order = np.lexsort((-score, -tier, ents, q))
    q, ents, score, rows, f, tier = q[order], ents[order], score[order], rows[order], f[order], tier[order]
    first = np.ones(len(q), bool)
    first[1:] = (q[1:] != q[:-1]) | (ents[1:] != ents[:-1])
    q, ents, score, rows, f, tier = q[first], ents[first], score[first], rows[first], f[first], tier[first]
    order = np.lexsort((-score, -tier, q))
    return q[order], ents[order], score[order], rows[order], f[order], tier[order]


def training_pairs(table: AliasTable, prior: np.ndarray, *, seed: int = 0, max_queries: int = 20_000,
                   name_vectors_fn=None, pool: PoolSize = PoolSize(), encoder_config: "EncoderConfig | None" = None):
    """Leave-one-alias-out pairs from the table itself: one non-label alias of every entity with two
    or more names is held out, the rest indexed, and the held-out names linked. With
    ``encoder_config`` a name encoder is trained on the rest only (so the held-out names are as
    new to it as real mentions will be to the one trained on the whole table). Returns (query
    position, entity, features, is-gold, number of queries)."""
    rng = np.random.default_rng(seed)
    by_entity: dict[int, list[int]] = {}
    for row, (ent, kind) in enumerate(zip(table.entity_index.tolist(), table.kind)):
        by_entity.setdefault(ent, []).append(row)
    held = []
    for ent, rows in by_entity.items():
        names = {table.alias_norm[r] for r in rows}
        labels = {table.alias_norm[r] for r in rows if table.kind[r] == "label"}
        options = [r for r in rows if table.kind[r] != "label" and table.alias_norm[r] not in labels]
        if len(names) >= 2 and options:
            held.append(options[int(rng.integers(len(options)))])
    if len(held) < 20:
        raise ArtifactError(f"only {len(held)} entities have two or more names: too few to train the reranker "
                            "(build the linker with rerank: false)")
    held = sorted(rng.permutation(held)[:max_queries].tolist())
    # drop the held-out rows, and any other row giving the same entity the same normalised name
    held_pairs = {(table.alias_norm[r], int(table.entity_index[r])) for r in held}
    keep = np.array([r for r, (norm, ent) in enumerate(zip(table.alias_norm, table.entity_index.tolist()))
                     if (norm, ent) not in held_pairs], dtype=np.int64)
    sub = AliasTable([table.alias[r] for r in keep], [table.alias_norm[r] for r in keep],
                     table.entity_index[keep], [table.kind[r] for r in keep])
    encoder = None
    if encoder_config is not None:
        from linking.encoder import train_name_encoder

        encoder = train_name_encoder(sub, encoder_config)
    index = NameIndex(sub, name_vectors=name_vectors_fn(_unique_norms(sub)[0].tolist()) if name_vectors_fn else None,
                      encoder=encoder)
    mentions = [table.alias[r] for r in held]
    qvec = name_vectors_fn([normalize_alias(m) for m in mentions]) if name_vectors_fn else None
    q, ents, _, _, f, _ = score_pairs(index, None, mentions, prior, qvec, pool)
    target = np.array([int(table.entity_index[held[i]]) for i in q]) == ents
    return q, ents, f, target, len(held)


def train_reranker(table: AliasTable, prior: np.ndarray, *, seed: int = 0, max_queries: int = 20_000,
                   name_vectors_fn=None, pool: PoolSize = PoolSize(), hidden: tuple[int, ...] = (32,),
                   encoder_config: "EncoderConfig | None" = None) -> Reranker:
    """A ReLU network (``hidden`` units; ``()`` = logistic regression) fit on :func:`training_pairs`;
    positives are the pooled aliases of the right entity. ``name_vectors_fn(list[str]) ->
    np.ndarray`` adds the dense feature; ``encoder_config`` the KB-trained name encoder's (the
    linker that uses this reranker must then have an encoder too)."""
    from sklearn.neural_network import MLPClassifier

    q, ents, f, target, n_held = training_pairs(table, prior, seed=seed, max_queries=max_queries,
                                                name_vectors_fn=name_vectors_fn, pool=pool,
                                                encoder_config=encoder_config)
    mean, scale = f.mean(0), f.std(0)
    scale[scale < 1e-6] = 1.0
    x = (f - mean) / scale
    if hidden and n_held < MLP_MIN_QUERIES:
        log.info("%d training queries: too few for a hidden layer, fitting logistic regression", n_held)
        hidden = ()
    if hidden:
        model = MLPClassifier(hidden_layer_sizes=hidden, early_stopping=True, random_state=seed, batch_size=1024,
                              max_iter=60).fit(x, target)
        weights, biases = model.coefs_, model.intercepts_
    else:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(max_iter=2000).fit(x, target)
        weights, biases = [model.coef_.T], [model.intercept_]
    found = len(set(q[target].tolist()))
    log.info("reranker trained on %d held-out aliases (%d pairs; gold in pool for %d)", n_held, len(q), found)
    return Reranker(FEATURES, mean.astype(np.float32), scale.astype(np.float32),
                    tuple(np.asarray(w, np.float32) for w in weights), tuple(np.asarray(b, np.float32) for b in biases),
                    {"queries": n_held, "pairs": int(len(q)), "gold_in_pool": found, "seed": seed,
                     "hidden": list(hidden), "name_encoder": encoder_config is not None,
                     "pool": {k: getattr(pool, k) for k in PoolSize.__dataclass_fields__}})


class RerankedGenerator:
    """The :class:`~linking.candidates.CandidateGenerator` over :func:`score_pairs`: pooled entities
    ranked by the reranker's match probability, the best alias of each entity named."""

    def __init__(self, index: NameIndex, reranker: Reranker, prior: np.ndarray, encode=None,
                 pool: PoolSize = PoolSize()):
        self.index, self.reranker, self.prior, self.encode, self.pool = index, reranker, prior, encode, pool

    def top_k(self, mentions: list[str], k: int):
        """(query position, entity index, score, alias row) arrays of every mention's best k
        entities, grouped by query, best first (what :meth:`__call__` wraps in Candidates)."""
        from linking.candidates import _check_mentions

        mentions = _check_mentions(mentions)
        if not mentions:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64)
        vectors = self.encode([normalize_alias(m) for m in mentions]) if self.encode is not None else None
        q, ents, logit, rows, _, tier = score_pairs(self.index, self.reranker, mentions, self.prior, vectors,
                                                    self.pool)
        # exact and variant-key hits keep the alias-kind scores ExactAliasGenerator gives them; the
        # reranked rest stay below that range, in the reranker's order
        kind_weight = self.index.row_kind_weight[rows]
        score = np.where(tier == 2, kind_weight, np.where(tier == 1, kind_weight * VARIANT_DISCOUNT,
                                                          FUZZY_CEILING * _sigmoid(logit)))
        # rows come grouped by query, best first: keep each query's first k
        first = np.searchsorted(q, q)
        keep = np.flatnonzero(np.arange(len(q)) - first < k)
        return q[keep], ents[keep], score[keep], rows[keep]

    def __call__(self, mentions: list[str], k: int) -> list[list["Candidate"]]:
        from linking.candidates import Candidate

        q, ents, score, rows = self.top_k(mentions, k)
        table = self.index.table
        out: list[list[Candidate]] = [[] for _ in mentions]
        for i, e, s, r in zip(q.tolist(), ents.tolist(), score.tolist(), rows.tolist()):
            out[i].append(Candidate(e, s, table.alias[r], table.kind[r]))
        return out
