"""A name encoder trained on the knowledge base's own synonyms.

Every name becomes the mean of learned vectors of its features (fastText-style: the content words
of its American/singular form, and the character 3-, 4- and 5-grams of each word with boundary
marks), L2-normalised. The vectors are trained contrastively, SapBERT-style but without a
transformer: two names of the same entity form a positive pair, the other entities' names in the
batch are the negatives (symmetric InfoNCE). So "kidney" learns to sit near "renal", "small" near
"micro" and "head" near "cephal", from the pairs the KB itself provides, and a name that was never
seen still lands near its entity's other names through the pieces it shares with them.

Training runs on torch (a few seconds to a minute on CPU); encoding at query time is a NumPy gather
and mean, thousands of names per second per core. The weights are saved as safetensors and the
feature vocabulary as JSON (no pickle).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from linking.aliases import AliasTable
from linking.rerank import STOPWORDS
from pipelines.errors import ArtifactError
from pipelines.normalize import variant_key

log = logging.getLogger(__name__)

WEIGHTS_FILE = "name_encoder.safetensors"
VOCAB_FILE = "name_encoder.json"
SPARSE_ABOVE = 250_000  # features; see train_name_encoder
WORD_CACHE = 200_000  # words whose feature ids are remembered between calls


def name_features(norm: str, ngrams: tuple[int, ...] = (3, 4, 5)) -> list[str]:
    """Features of a normalised name: "w:" + each content word (variant key form), and the
    character n-grams of every word wrapped in "<" and ">"."""
    out = []
    for word in variant_key(norm).split(" "):
        if not word:
            continue
        if word not in STOPWORDS:
            out.append("w:" + word)
        marked = f"<{word}>"
        for n in ngrams:
            out.extend(marked[i:i + n] for i in range(len(marked) - n + 1))
    return out


@dataclass(frozen=True)
class EncoderConfig:
    dim: int = 128
    epochs: int = 40             # passes over the multi-name entities (one random pair of names each)
    max_steps: int = 4000        # bounds training on very large KBs
    batch_size: int = 1024       # in-batch negatives: more is harder
    temperature: float = 0.05
    lr: float = 3e-3
    ngrams: tuple[int, ...] = (3, 4, 5)
    max_features: int = 1_000_000  # most frequent features kept (memory: max_features x dim x 4 bytes)
    max_entities: int = 200_000  # multi-name entities trained on (a seeded sample beyond this bounds memory)
    min_entities: int = 20       # fewer multi-name entities than this: nothing to learn from
    seed: int = 0


class NameEncoder:
    """Feature vocabulary + one vector per feature; :meth:`encode` maps normalised names to unit vectors."""

    def __init__(self, features: list[str], weight: np.ndarray, config: EncoderConfig, meta: dict | None = None):
        if weight.ndim != 2 or len(features) != len(weight):
            raise ArtifactError(f"name encoder: {len(features)} features for a weight matrix of shape {weight.shape}")
        self.features = features
        self.vocab = {f: i for i, f in enumerate(features)}
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.config = config
        self.meta = meta or {}
        self._cache: dict[str, list[int]] = {}

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def _word_ids(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            if len(self._cache) > WORD_CACHE:
                self._cache.clear()
            vocab = self.vocab
            ids = self._cache[word] = [i for f in name_features(word, self.config.ngrams)
                                       if (i := vocab.get(f)) is not None]
        return ids

    def feature_ids(self, norms: list[str]) -> list[list[int]]:
        """Known feature ids of each name (features are per word, so they are cached per word)."""
        word_ids = self._word_ids
        return [[i for w in n.split(" ") for i in word_ids(w)] for n in norms]

    def encode(self, norms: list[str], chunk: int = 100_000) -> np.ndarray:
        """Unit vectors, one per normalised name; a name with no known feature gets the zero vector."""
        if len(norms) > chunk:
            return np.concatenate([self.encode(norms[i:i + chunk], chunk) for i in range(0, len(norms), chunk)])
        import scipy.sparse as sp

        ids = self.feature_ids(norms)
        lengths = np.fromiter((len(x) for x in ids), np.int64, count=len(ids))
        flat = np.fromiter((i for x in ids for i in x), np.int64, count=int(lengths.sum()))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        # sums of the feature vectors (a sparse x dense product: no per-feature copy of the rows);
        # the mean's 1/n disappears in the L2 normalisation
        bags = sp.csr_matrix((np.ones(len(flat), np.float32), flat, indptr), shape=(len(norms), len(self.weight)))
        out = np.asarray(bags @ self.weight, dtype=np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"weight": self.weight}, str(path / WEIGHTS_FILE))
        (path / VOCAB_FILE).write_text(json.dumps({"config": asdict(self.config), "meta": self.meta,
                                                   "features": self.features}))

    @classmethod
    def load(cls, path: Path) -> "NameEncoder":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            data = json.loads((path / VOCAB_FILE).read_text())
            weight = load_file(str(path / WEIGHTS_FILE))["weight"]
            config = dict(data["config"])
            config["ngrams"] = tuple(config["ngrams"])
            return cls(list(data["features"]), weight, EncoderConfig(**config), data.get("meta", {}))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            raise ArtifactError(f"{path}: unreadable name encoder ({exc}): rebuild the linker") from None


def synonym_groups(table: AliasTable) -> list[list[str]]:
    """The distinct normalised names of every entity that has two or more."""
    names_of: dict[int, set[str]] = {}
    for norm, ent in zip(table.alias_norm, table.entity_index.tolist()):
        names_of.setdefault(ent, set()).add(norm)
    return [sorted(names) for _, names in sorted(names_of.items()) if len(names) >= 2]


def train_name_encoder(table: AliasTable, config: EncoderConfig = EncoderConfig()) -> NameEncoder:
    """Fit the encoder on pairs of names that share an entity (see the module docstring). Raises
    :class:`ArtifactError` when the table has fewer than ``config.min_entities`` such entities."""
    import torch

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
    # every name's feature ids, names of one entity adjacent: entity g owns names start[g] ... start[g] + size[g] - 1
    name_ids = [np.array([vocab[f] for f in fs if f in vocab] or [0], np.int64) for feats in group_feats for fs in feats]
    size = np.array([len(feats) for feats in group_feats], np.int64)
    start_of = np.concatenate([[0], np.cumsum(size)[:-1]])

    gen = torch.Generator().manual_seed(config.seed)
    # dense gradients and Adam are 2-3x faster while the table is small; sparse ones (lazy Adam)
    # keep a step's cost independent of the vocabulary on big KBs
    sparse = len(features) > SPARSE_ABOVE
    emb = torch.nn.EmbeddingBag(len(features), config.dim, mode="mean", sparse=sparse)
    with torch.no_grad():
        emb.weight.normal_(0.0, 0.1, generator=gen)
    opt = (torch.optim.SparseAdam if sparse else torch.optim.Adam)(emb.parameters(), lr=config.lr)
    batch = min(config.batch_size, len(groups))
    per_epoch = math.ceil(len(groups) / batch)
    steps = min(config.epochs * per_epoch, config.max_steps)
    log.info("training the name encoder: %d entities with 2+ names, %d features, %d steps",
             len(groups), len(features), steps)

    def bag(arrays: list[np.ndarray]):
        lengths = np.array([len(a) for a in arrays])
        return (torch.from_numpy(np.concatenate(arrays)),
                torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)))

    order, loss_sum, step = np.empty(0, np.int64), 0.0, 0
    labels = torch.arange(batch)
    while step < steps:
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(len(groups))])
        chosen, order = order[:batch], order[batch:]
        # one random pair of distinct names per entity (no entity twice in a batch)
        a = rng.integers(size[chosen])
        b = (a + 1 + rng.integers(size[chosen] - 1)) % size[chosen]
        left = [name_ids[i] for i in start_of[chosen] + a]
        right = [name_ids[i] for i in start_of[chosen] + b]
        za = torch.nn.functional.normalize(emb(*bag(left)), dim=-1)
        zb = torch.nn.functional.normalize(emb(*bag(right)), dim=-1)
        logits = za @ zb.T / config.temperature
        target = labels[:len(chosen)]
        loss = (torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach())
        step += 1
        if step % per_epoch == 0 or step == steps:
            if step // per_epoch % 10 == 0 or step == steps:
                log.info("name encoder step %d/%d: loss %.3f", step, steps, loss_sum / per_epoch)
            loss_sum = 0.0
    meta = {"entities": len(groups), "features": len(features), "steps": steps,
            "train_s": round(time.perf_counter() - start, 1)}
    log.info("name encoder trained in %.1f s", meta["train_s"])
    return NameEncoder(features, emb.weight.detach().numpy().copy(), config, meta)
