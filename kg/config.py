"""Typed embedding-training configuration, validated once at the edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pipelines.errors import ConfigError

MODELS = ("transe", "complex")
LOSSES = ("marginranking", "softplus", "bcewithlogits", "nssa", "crossentropy")


@dataclass(frozen=True)
class EmbeddingConfig:
    """Hyper-parameters of one PyKEEN training run (sLCWA with negative sampling)."""

    model: str = "transe"
    embedding_dim: int = 64          # ComplEx: the rank; stored vectors have 2 × rank floats
    num_epochs: int = 5
    batch_size: int = 4096
    learning_rate: float = 0.01
    optimizer: str = "adam"
    loss: str | None = None          # None: the model's PyKEEN default
    num_negs_per_pos: int = 4
    regularizer_weight: float = 0.0  # N3/L2 weight for ComplEx (0 disables)
    eval_max_triples: int | None = 2000  # evaluate on a seeded sample of the test split (None: all)
    eval_batch_size: int = 64
    seed: int = 42

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"[embed -> model] unknown model {self.model!r}: expected one of {', '.join(MODELS)}")
        if self.loss is not None and self.loss not in LOSSES:
            raise ConfigError(f"[embed -> loss] unknown loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        for name in ("embedding_dim", "num_epochs", "batch_size", "num_negs_per_pos", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[embed -> {name}] must be > 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"[embed -> learning_rate] must be > 0, got {self.learning_rate}")
        if self.eval_max_triples is not None and self.eval_max_triples <= 0:
            raise ConfigError(f"[embed -> eval_max_triples] must be > 0 or null, got {self.eval_max_triples}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "embed") -> "EmbeddingConfig":
        return from_dict(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def from_dict(cls, data: dict[str, Any] | None, where: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with their location."""
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"[{where}] unknown key(s) {unknown}: expected some of {sorted(known)}")
    for f in fields(cls):
        if f.name in data and isinstance(data[f.name], list):
            data[f.name] = tuple(data[f.name])
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"[{where}] {exc}") from None
