"""The sparse name index behind the reranked candidate pool, and the pool's size.

:class:`NameIndex` holds the unique normalised names of an alias table with their character
3-gram, word and stem TF-IDF vectors, the stem translation table learned from names that share an
entity, and (with a KB-trained name encoder) the names' encoder vectors and their FAISS index.
:meth:`NameIndex.pool` gathers candidate names per mention from those searches. Fitted once at
build time and saved with the linker (:meth:`NameIndex.save`/:meth:`NameIndex.load`: JSON, ``.npy``,
``.npz`` sparse matrices and FAISS files), so a loaded linker fits and indexes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from linking.aliases import DEFAULT_KIND_WEIGHT, KIND_WEIGHTS, AliasTable, unique_norms
from linking.keys import ParsedNames, given, initials, word_keys
from pipelines.errors import ArtifactError, InputError

if TYPE_CHECKING:
    from linking.encoder import NameEncoder

# character 3-grams carried by more aliases than this are skipped when *searching* (they are
# "abn", "ity", "ica"…: expensive posting lists that barely move cosine); features use all of them
CHAR_SEARCH_MAX_DF = 1500
STEM_SEARCH_MAX_DF = 1500
TRANSLATION_MIN_COUNT = 2     # stem pairs seen in fewer same-entity name pairs are noise
TRANSLATION_MIN_P = 0.05
TRANSLATION_TOP = 10          # targets kept per source stem (bounds the query expansion's fan-out)
TRANSLATION_WEIGHT = 1.0
KEYS = ("char", "word", "stem")  # the TF-IDF spaces of a name


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
        unknown = set(config) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"[{where}] unknown key(s) {sorted(unknown)}: expected char, stem, enc, dense")
        for key, value in config.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"[{where}] {key} must be a non-negative integer, got {value!r}")
        return replace(cls.default(encoder), **config)

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _tfidf(analyzer):
    from sklearn.feature_extraction.text import TfidfVectorizer

    kwargs = {"analyzer": "char_wb", "ngram_range": (3, 3)} if analyzer == "char" else {"analyzer": analyzer}
    return TfidfVectorizer(min_df=1, dtype=np.float32, sublinear_tf=True, **kwargs)


def _search_matrix(matrix: sp.csr_matrix, max_df: int) -> sp.csr_matrix:
    """The transposed (term x name) matrix, without the terms that more than ``max_df`` names carry."""
    df = np.diff(matrix.tocsc().indptr)
    return (sp.diags((df <= max_df).astype(np.float32)) @ matrix.T).tocsr()


def _block_indicator(widths: list[int]) -> sp.csr_matrix:
    edges = np.cumsum([0, *widths])
    which = np.searchsorted(edges, np.arange(edges[-1]), side="right") - 1
    return sp.csr_matrix((np.ones(edges[-1], np.float32), (np.arange(edges[-1]), which)),
                         shape=(edges[-1], len(widths)))


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


def normalize_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    from sklearn.preprocessing import normalize

    return normalize(m.tocsr(), copy=False)


def stem_translation(table: AliasTable, vocab: dict[str, int]) -> sp.csr_matrix:
    """P(t | s) over word stems, from the pairs of names that share an entity ("small" → "micro",
    "hypop"; "fast" → "tachy"): how often stem t appears in another name of an entity whose name
    contains s. Identity pairs are left out; the query side adds its own stems back."""
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


def _ranked_hits(tops: list[np.ndarray], slot: int):
    """(query, name, slot, reciprocal rank) arrays of one search's hits (``tops[q]``: best first)."""
    lengths = np.fromiter((len(t) for t in tops), np.int64, count=len(tops))
    total = int(lengths.sum())
    if not total:
        return None
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.repeat(np.arange(len(tops)), lengths), np.concatenate(tops).astype(np.int64),
            np.full(total, slot), 1.0 / (1.0 + np.arange(total) - starts))


class NameIndex:
    """The unique normalised names of an alias table, with everything the pool and the features
    need. ``fitted`` (from :meth:`load`) restores the TF-IDF spaces, matrices, translation table and
    encoder vectors and index instead of fitting them."""

    def __init__(self, table: AliasTable, name_vectors: np.ndarray | None = None,
                 encoder: "NameEncoder | None" = None, *, name_faiss=None, fitted: dict | None = None):
        self.table, self.name_vectors, self.encoder = table, name_vectors, encoder
        self.norms, self.rows_sorted, self.starts, self.ends = unique_norms(table)
        names = self.norms.tolist()
        self._keys = (fitted or {}).get("keys")  # per-name keys saved with the linker (names_keys.parquet)
        if name_vectors is not None and len(name_vectors) != len(names):
            raise ArtifactError(f"{len(name_vectors)} name vectors for {len(names)} unique aliases: rebuild the linker")
        self._faiss = name_faiss
        if fitted is None:
            fitted = self._fit(names)
        self.vectorizers: dict = fitted["vectorizers"]
        self.matrices: dict[str, sp.csr_matrix] = fitted["matrices"]
        self.translation: sp.csr_matrix = fitted["translation"]
        self.enc_vectors, self.enc_faiss = fitted.get("enc_vectors"), fitted.get("enc_faiss")
        self.__dict__.update(fitted.get("search", {}))  # saved char_t / stem_t (cached properties)
        self._derive(names)

    @cached_property
    def parsed(self) -> ParsedNames:
        """Every name's variant key, content words and stems (parsed in Python: at build time, or
        at load for a linker saved without ``names_keys.parquet``)."""
        row_variants = self.table.variants()
        return ParsedNames(self.norms.tolist(), [row_variants[r] for r in self.rows_sorted[self.starts].tolist()])

    def _name_keys(self, names: list[str]) -> dict[str, list]:
        """Per name: variant key, initials, first and last stem, number of content words."""
        if self._keys is not None:
            return self._keys
        stems = self.parsed.stems
        return {"variant": self.parsed.variants, "initials": [initials(n) for n in names],
                "first_stem": [s[0] if s else "" for s in stems], "last_stem": [s[-1] if s else "" for s in stems],
                "n_words": [len(s) for s in stems]}

    def _fit(self, names: list[str]) -> dict:
        from linking.index import build_faiss

        vectorizers, matrices = {}, {}
        for key, docs in zip(KEYS, (names, self.parsed.words, self.parsed.stems)):
            vectorizers[key] = _tfidf("char" if key == "char" else given)
            matrices[key] = vectorizers[key].fit_transform(docs).tocsr()
        fitted = {"vectorizers": vectorizers, "matrices": matrices,
                  "translation": stem_translation(self.table, vectorizers["stem"].vocabulary_)}
        if self.encoder is not None:
            fitted["enc_vectors"] = self.encoder.encode(names)
            fitted["enc_faiss"] = build_faiss(fitted["enc_vectors"])[0]
        return fitted

    def _derive(self, names: list[str]) -> None:
        """Lookups and per-name arrays computed from the names and the fitted matrices (cheap)."""
        t = self.table
        binary = self.matrices["word"].copy()
        binary.data[:] = 1.0
        self.word_binary = binary
        blocks = [self.matrices["char"], self.matrices["word"], self.matrices["stem"], self.matrices["stem"], binary]
        self.name_blocks = sp.hstack(blocks, format="csr")
        self.block_indicator = _block_indicator([b.shape[1] for b in blocks])
        self.by_norm = {n: u for u, n in enumerate(names)}
        self.by_variant: dict[str, list[int]] = {}
        self.by_initials: dict[str, list[int]] = {}
        keys = self._name_keys(names)
        self.norm_initials = np.array(keys["initials"], dtype=object)
        for u, (variant, ini) in enumerate(zip(keys["variant"], keys["initials"])):
            self.by_variant.setdefault(variant, []).append(u)
            if ini:
                self.by_initials.setdefault(ini, []).append(u)
        self.first_stem = np.array(keys["first_stem"], dtype=object)
        self.last_stem = np.array(keys["last_stem"], dtype=object)
        self.n_words = np.asarray(keys["n_words"], dtype=np.float32)
        self.n_chars = np.array([len(n) for n in names], dtype=np.float32)
        self.n_distinct_words = np.asarray(self.word_binary.sum(1), np.float32).ravel()
        self.norm_variant = np.array(keys["variant"], dtype=object)
        self._keys = keys
        n_aliases = np.bincount(t.entity_index, minlength=int(t.entity_index.max()) + 1)
        self.row_log_aliases = np.log1p(n_aliases[t.entity_index]).astype(np.float32)
        self.row_kind_weight = np.array([KIND_WEIGHTS.get(k, DEFAULT_KIND_WEIGHT) for k in t.kind], np.float32)
        self.row_is_label = np.array([k == "label" for k in t.kind], np.float32)

    # search matrices: common n-grams/stems dropped from the posting lists (see CHAR_SEARCH_MAX_DF);
    # built on first use in memory (the default pool with a name encoder never searches them), saved
    # with the linker when its pool searches them
    @cached_property
    def char_t(self) -> sp.csr_matrix:
        return _search_matrix(self.matrices["char"], CHAR_SEARCH_MAX_DF)

    @cached_property
    def stem_t(self) -> sp.csr_matrix:
        return _search_matrix(self.matrices["stem"], STEM_SEARCH_MAX_DF)

    # -- candidate pool ---------------------------------------------------------------------
    def pool(self, qnorms: list[str], parsed: ParsedNames, query_vectors: np.ndarray | None,
             q_enc: np.ndarray | None, size: PoolSize):
        """(query position, unique-norm position) pairs, each pair's reciprocal rank in the char,
        stem, translated-stem and encoder searches (0 = not found there), and the query-side matrices."""
        q_char = self.vectorizers["char"].transform(qnorms).tocsr()
        q_stem = self.vectorizers["stem"].transform(parsed.stems).tocsr()
        q_trans = normalize_rows(normalize_rows(q_stem @ self.translation) * TRANSLATION_WEIGHT + q_stem)
        none = [np.zeros(0, np.int64)] * len(qnorms)
        char_top = _top_columns((q_char @ self.char_t).tocsr(), size.char) if size.char else none
        stem_top = _top_columns((q_stem @ self.stem_t).tocsr(), size.stem) if size.stem else none
        trans_top = _top_columns((q_trans @ self.stem_t).tocsr(), size.stem) if size.stem else none
        enc_top = none
        if q_enc is not None and self.enc_vectors is not None and size.enc:
            _, found = self.enc_faiss.search(np.ascontiguousarray(q_enc, np.float32), min(size.enc, len(self.norms)))
            enc_top = [row[row >= 0] for row in found]
        hits = [_ranked_hits(tops, slot) for slot, tops in enumerate((char_top, stem_top, trans_top, enc_top))]
        hits.append(_ranked_hits(self._extras(qnorms, parsed, query_vectors, size), 4))  # slot 4: no rank feature
        hits = [h for h in hits if h is not None]
        if not hits:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.float32), q_char, q_stem,
                    q_trans)
        qs, us, slots, rr = (np.concatenate(part) for part in zip(*hits))
        keys, inverse = np.unique(qs * len(self.norms) + us, return_inverse=True)
        ranks = np.zeros((len(keys), 5), np.float32)
        ranks[inverse, slots] = rr
        return keys // len(self.norms), keys % len(self.norms), ranks[:, :4], q_char, q_stem, q_trans

    def _extras(self, qnorms: list[str], parsed: ParsedNames, query_vectors: np.ndarray | None,
                size: PoolSize) -> list[np.ndarray]:
        """Per query: names with its variant key, its exact name, names it is the initials of, and
        the dense (transformer) neighbours."""
        extras = []
        for q, norm in enumerate(qnorms):
            extra = list(self.by_variant.get(parsed.variants[q], []))
            if (u := self.by_norm.get(norm)) is not None:
                extra.append(u)
            if " " not in norm and 2 <= len(norm) <= 8:
                extra.extend(self.by_initials.get(norm, [])[:20])
            extras.append(np.array(extra, np.int64))
        if query_vectors is not None and self.name_vectors is not None:
            if self._faiss is None:
                from linking.index import build_faiss

                self._faiss, _ = build_faiss(self.name_vectors)
            _, dense_top = self._faiss.search(np.ascontiguousarray(query_vectors, np.float32), size.dense)
            extras = [np.concatenate([e, d[d >= 0]]) for e, d in zip(extras, dense_top)]
        return extras

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: Path, pool: PoolSize) -> list[str]:
        """Write the fitted parts into ``path``; returns the file names written."""
        import faiss

        import pyarrow as pa
        import pyarrow.parquet as pq

        written = {"names_vocab.json", "names_translation.npz", "names_keys.parquet"}
        keys = self._name_keys(self.norms.tolist())
        pq.write_table(pa.table({"variant": pa.array(keys["variant"], pa.string()),
                                 "initials": pa.array(keys["initials"], pa.string()),
                                 "first_stem": pa.array(keys["first_stem"], pa.string()),
                                 "last_stem": pa.array(keys["last_stem"], pa.string()),
                                 "n_words": pa.array(keys["n_words"], pa.int32())}), path / "names_keys.parquet")
        (path / "names_vocab.json").write_text(json.dumps(
            {key: {k: int(v) for k, v in vec.vocabulary_.items()} for key, vec in self.vectorizers.items()}))
        sp.save_npz(path / "names_translation.npz", self.translation)
        for key in KEYS:
            np.save(path / f"names_idf_{key}.npy", self.vectorizers[key].idf_.astype(np.float32), allow_pickle=False)
            sp.save_npz(path / f"names_{key}.npz", self.matrices[key])
            written |= {f"names_idf_{key}.npy", f"names_{key}.npz"}
        for key, wanted in (("char_t", pool.char), ("stem_t", pool.stem or 0)):
            if wanted:
                sp.save_npz(path / f"names_{key}.npz", getattr(self, key))
                written.add(f"names_{key}.npz")
        if self.enc_vectors is not None:
            np.save(path / "names_enc.npy", self.enc_vectors, allow_pickle=False)
            faiss.write_index(self.enc_faiss, str(path / "names_enc.faiss"))
            written |= {"names_enc.npy", "names_enc.faiss"}
        return sorted(written)

    @classmethod
    def load(cls, path: Path, table: AliasTable, name_vectors: np.ndarray | None = None,
             encoder: "NameEncoder | None" = None, *, name_faiss=None) -> "NameIndex":
        import faiss

        try:
            vocab = json.loads((path / "names_vocab.json").read_text())
            fitted: dict = {"vectorizers": {}, "matrices": {}, "search": {},
                            "translation": sp.load_npz(path / "names_translation.npz").tocsr()}
            for key in KEYS:
                vec = fitted["vectorizers"][key] = _tfidf("char" if key == "char" else given)
                vec.vocabulary_, vec.idf_ = vocab[key], np.load(path / f"names_idf_{key}.npy", allow_pickle=False)
                fitted["matrices"][key] = sp.load_npz(path / f"names_{key}.npz").tocsr()
            for key in ("char_t", "stem_t"):
                if (path / f"names_{key}.npz").exists():
                    fitted["search"][key] = sp.load_npz(path / f"names_{key}.npz").tocsr()
            if (path / "names_keys.parquet").exists():  # linkers saved before it re-parse the names
                import pyarrow.parquet as pq

                table_keys = pq.read_table(path / "names_keys.parquet")
                fitted["keys"] = {c: table_keys.column(c).to_pylist() for c in table_keys.column_names}
            if encoder is not None:
                fitted["enc_vectors"] = np.load(path / "names_enc.npy", allow_pickle=False)
                fitted["enc_faiss"] = faiss.read_index(str(path / "names_enc.faiss"))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ArtifactError(f"{path}: unreadable name index ({exc}): rebuild the linker") from None
        index = cls(table, name_vectors, encoder, name_faiss=name_faiss, fitted=fitted)
        if index.matrices["char"].shape[0] != len(index.norms) or len(index.norm_variant) != len(index.norms):
            raise ArtifactError(f"{path}: the saved name index has {index.matrices['char'].shape[0]} names, the alias "
                                f"table {len(index.norms)}: rebuild the linker")
        return index
