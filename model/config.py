"""Typed training configuration for the KALoRA stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kg.config import from_dict
from pipelines.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """The base causal LM. ``base_model`` is a local path or hub name; ``None`` builds a small
    GPT-2-shaped model from a config (what the offline demo and the tests use)."""

    base_model: str | None = None
    tokenizer: str | None = None     # a local fast tokenizer; None: train a byte-level BPE on the shards
    vocab_size: int = 4000           # BPE vocabulary when training one
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    max_length: int = 96
    knowledge_heads: int = 4

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ModelConfig":
        return from_dict(cls, data, "train -> model")


@dataclass(frozen=True)
class StageConfig:
    max_steps: int = 40
    batch_size: int = 16
    gradient_accumulation: int = 1
    learning_rate: float = 1e-3
    warmup_steps: int = 4
    max_grad_norm: float = 1.0
    knowledge_loss_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "gradient_accumulation"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[train -> stage -> {name}] must be > 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"[train -> stage -> learning_rate] must be > 0, got {self.learning_rate}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "StageConfig":
        return from_dict(cls, data, "train -> stage")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
