"""The reranker's features: one row per (mention, alias) pair.

:data:`FEATURES` names the columns. :func:`pair_features` fills the name-level ones for every
(query, unique name) pair the pool found (sparse cosines in one pass, key matches, lengths, the
pool ranks); :func:`expand_rows` turns those pairs into (query, alias row) pairs and fills the
alias- and entity-level columns (kind weight, label, number of aliases, prior).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from linking.keys import ParsedNames
from linking.names import NameIndex

# Exact and variant-key hits are not features: they are ranked first (see reranker.score_pairs).
# Learned from leave-one-alias-out data, an "exact" feature would only ever fire on the wrong
# entity (the right one's name was held out) and teach the model to distrust exact matches.
FEATURES = ("char_cos", "word_cos", "stem_cos", "dense_cos", "jaccard", "len_ratio",
            "word_count_diff", "first_stem", "last_stem", "initials", "char_rank", "stem_rank", "kind_weight",
            "is_label", "log_aliases", "prior", "char_x_stem", "query_len", "trans_cos", "trans_rank", "enc_cos",
            "enc_rank")
COLUMN = {name: i for i, name in enumerate(FEATURES)}


def _block_row_dots(queries: list[sp.csr_matrix], names: sp.csr_matrix, indicator: sp.csr_matrix,
                    ai: np.ndarray, bi: np.ndarray) -> np.ndarray:
    """Per block: query block row ai[j] · name block row bi[j] (``names`` holds the blocks side by
    side, ``indicator`` maps its columns to blocks); one sparse pass for all blocks."""
    if len(ai) == 0:
        return np.zeros((0, indicator.shape[1]), np.float32)
    a = sp.hstack(queries, format="csr")
    return np.asarray((a[ai].multiply(names[bi]) @ indicator).todense(), np.float32)


def pair_features(index: NameIndex, qnorms: list[str], parsed: ParsedNames, query_vectors, q_enc, qi, ui, ranks,
                  q_char, q_stem, q_trans) -> tuple[np.ndarray, np.ndarray]:
    """One row of name-level features per (query, unique norm) pair (entity columns filled later),
    and each pair's tier: 2 = same normalised name, 1 = same variant key, 0 = neither."""
    q_word = index.vectorizers["word"].transform(parsed.words).tocsr()
    q_binary = q_word.copy()
    q_binary.data[:] = 1.0
    f = np.zeros((len(qi), len(FEATURES)), np.float32)
    col = COLUMN
    # all sparse cosines in one pass: [char | word | stem | translated stem | binary word]
    dots = _block_row_dots([q_char, q_word, q_stem, q_trans, q_binary], index.name_blocks, index.block_indicator,
                           qi, ui)
    f[:, col["char_cos"]], f[:, col["word_cos"]], f[:, col["stem_cos"]], f[:, col["trans_cos"]] = dots[:, :4].T
    shared = dots[:, 4]
    if query_vectors is not None and index.name_vectors is not None:
        f[:, col["dense_cos"]] = np.einsum("ij,ij->i", query_vectors[qi], index.name_vectors[ui])
    if q_enc is not None and index.enc_vectors is not None:
        f[:, col["enc_cos"]] = np.einsum("ij,ij->i", q_enc[qi], index.enc_vectors[ui])
    qn = np.array(qnorms, dtype=object)
    qvar = np.array(parsed.variants, dtype=object)
    q_stems = parsed.stems
    q_first = np.array([s[0] if s else "-" for s in q_stems], dtype=object)
    q_last = np.array([s[-1] if s else "-" for s in q_stems], dtype=object)
    q_words = np.array([len(s) for s in q_stems], np.float32)
    q_chars = np.array([len(n) for n in qnorms], np.float32)
    q_distinct = np.asarray(q_binary.sum(1), np.float32).ravel()
    q_compact = np.array([n if " " not in n else "-" for n in qnorms], dtype=object)
    tier = 2 * (qn[qi] == index.norms[ui]).astype(np.int8) + (qvar[qi] == index.norm_variant[ui]).astype(np.int8)
    f[:, col["jaccard"]] = shared / np.maximum(q_distinct[qi] + index.n_distinct_words[ui] - shared, 1.0)
    a, b = q_chars[qi], index.n_chars[ui]
    f[:, col["len_ratio"]] = np.minimum(a, b) / np.maximum(np.maximum(a, b), 1)
    f[:, col["word_count_diff"]] = np.log1p(np.abs(q_words[qi] - index.n_words[ui]))
    f[:, col["first_stem"]] = q_first[qi] == index.first_stem[ui]
    f[:, col["last_stem"]] = q_last[qi] == index.last_stem[ui]
    f[:, col["initials"]] = q_compact[qi] == index.norm_initials[ui]
    f[:, col["char_rank"]], f[:, col["stem_rank"]], f[:, col["trans_rank"]], f[:, col["enc_rank"]] = ranks.T
    f[:, col["char_x_stem"]] = f[:, col["char_cos"]] * f[:, col["stem_cos"]]
    f[:, col["query_len"]] = np.log1p(q_words[qi])
    return f, np.minimum(tier, 2)


def expand_rows(index: NameIndex, qi: np.ndarray, ui: np.ndarray, feats: np.ndarray, tier: np.ndarray,
                prior: np.ndarray):
    """(query, unique norm) pairs → (query, alias row) pairs, with the alias/entity columns set."""
    counts = index.ends[ui] - index.starts[ui]
    pair = np.repeat(np.arange(len(ui)), counts)
    offsets = np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = index.rows_sorted[index.starts[ui][pair] + offsets]
    f = feats[pair]
    col = COLUMN
    f[:, col["kind_weight"]] = index.row_kind_weight[rows]
    f[:, col["is_label"]] = index.row_is_label[rows]
    f[:, col["log_aliases"]] = index.row_log_aliases[rows]
    ents = index.table.entity_index[rows]
    f[:, col["prior"]] = prior[ents] if len(prior) > int(ents.max(initial=0)) else 0.0
    return qi[pair], rows, ents, f, tier[pair]
