"""A name encoder trained on the knowledge base's own synonyms.

Every name becomes the mean of learned vectors of its features (fastText-style: the content words
of its American/singular form, and the character 3-, 4- and 5-grams of each word with boundary
marks), L2-normalised. The vectors are trained contrastively, SapBERT-style but without a
transformer: two names of the same entity form a positive pair, the other entities' names in the
batch are the negatives (symmetric InfoNCE). So "kidney" learns to sit near "renal", "small" near
"micro" and "head" near "cephal", from the pairs the KB itself provides, and a name that was never
seen still lands near its entity's other names through the pieces it shares with them.

Training (:func:`linking.train.train_name_encoder`) runs on torch (a few seconds to a minute on CPU); encoding at query time is a NumPy gather
and mean, thousands of names per second per core. The weights are saved as safetensors and the
feature vocabulary as JSON (no pickle).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from linking.keys import STOPWORDS
from pipelines.errors import ArtifactError
from pipelines.normalize import variant_key

log = logging.getLogger(__name__)

WEIGHTS_FILE = "name_encoder.safetensors"
VOCAB_FILE = "name_encoder.json"
SPARSE_ABOVE = 250_000  # features; see linking.train.train_name_encoder
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
    def save(self, path: Path) -> list[str]:
        """Weights as safetensors, vocabulary and config as JSON; returns the file names written."""
        from safetensors.numpy import save_file

        save_file({"weight": self.weight}, str(path / WEIGHTS_FILE))
        (path / VOCAB_FILE).write_text(json.dumps({"config": asdict(self.config), "meta": self.meta,
                                                   "features": self.features}))
        return [WEIGHTS_FILE, VOCAB_FILE]

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
