"""Typed training configuration for the KALoRA stages, validated once at the edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pipelines.config import check_choice, check_range, from_dict, location
from pipelines.errors import ConfigError

PEFT_METHODS = ("lora", "adalora", "prefix", "prompt")
LOSS_WEIGHTINGS = ("fixed", "uncertainty")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    domain_adapter_rank: int = 8     # 0: no DomainAdapter

    def __post_init__(self) -> None:
        check_range(self, "train -> model", "n_layer", "n_head", "n_embd", "max_length", "knowledge_heads", gt=0)
        check_range(self, "train -> model", "domain_adapter_rank", ge=0)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "train -> model") -> "ModelConfig":
        return from_dict(cls, data, where)


@dataclass(frozen=True)
class AdapterConfig:
    """The peft method stage 2 adds to the base model (stage 1 trains no peft parameters).

    ``lora``/``adalora`` use ``r``, ``alpha``, ``dropout``, ``target_modules`` (``None``: peft's
    default for the architecture); ``prefix``/``prompt`` use ``num_virtual_tokens``.
    ``loraplus_lr_ratio`` > 1 gives LoRA's B matrices that multiple of the learning rate (LoRA+)."""

    method: str = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    loraplus_lr_ratio: float = 1.0
    num_virtual_tokens: int = 8
    adalora_target_r: int = 4

    def __post_init__(self) -> None:
        if self.method not in PEFT_METHODS:
            raise ConfigError(f"[train -> peft -> method] unknown method {self.method!r}; expected one of {', '.join(PEFT_METHODS)}")
        check_range(self, "train -> peft", "r", "alpha", "num_virtual_tokens", "adalora_target_r", gt=0)
        check_range(self, "train -> peft", "dropout", ge=0, lt=1)
        check_range(self, "train -> peft", "loraplus_lr_ratio", ge=1)
        if self.loraplus_lr_ratio != 1 and self.method not in ("lora", "adalora"):
            raise ConfigError(f"[train -> peft -> loraplus_lr_ratio] applies to lora/adalora, not {self.method!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "train -> peft") -> "AdapterConfig":
        return from_dict(cls, data, where)


@dataclass(frozen=True)
class StageConfig:
    max_steps: int = 40
    batch_size: int = 16
    gradient_accumulation: int = 1
    learning_rate: float = 1e-3
    warmup_steps: int = 4
    max_grad_norm: float = 1.0
    weight_decay: float = 0.01
    knowledge_loss_weight: float = 1.0
    loss_weighting: str = "fixed"    # stage 2: "uncertainty" learns the task/knowledge weights
    dpo_beta: float = 0.1            # stage 3
    precision: str = "auto"          # auto: bf16 autocast on CUDA/CPU-with-bf16 only when asked; see trainer
    checkpoint_every: int = 0        # 0: only at the end; N: a resumable checkpoint every N steps
    log_every: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        where = "train -> stage"
        check_range(self, where, "max_steps", "batch_size", "gradient_accumulation", "log_every", "learning_rate",
                    "dpo_beta", "max_grad_norm", gt=0)
        check_range(self, where, "warmup_steps", "checkpoint_every", "knowledge_loss_weight", ge=0)
        check_choice(self, where, "loss_weighting", LOSS_WEIGHTINGS)
        check_choice(self, where, "precision", PRECISIONS)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "train -> stage",
                  defaults: "StageConfig | None" = None) -> "StageConfig":
        base = defaults or cls()
        checked = from_dict(cls, data, where)  # unknown keys and bad values fail here, with their location
        return replace(base, **{k: getattr(checked, k) for k in (data or {})})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STAGE_DEFAULTS = {
    "stage1": StageConfig(),
    "stage2": StageConfig(max_steps=60, learning_rate=5e-4, knowledge_loss_weight=0.5),
    "stage3": StageConfig(max_steps=30, batch_size=8, learning_rate=1e-4, warmup_steps=2),
}


def with_stage_defaults(data: Any, where: str) -> Any:
    """``data`` (a mapping with ``stage1``..``stage3`` sections, or anything else, returned as is)
    with each stage section built as a :class:`StageConfig` under that stage's own defaults
    (``STAGE_DEFAULTS``), not the class defaults a plain ``from_dict`` would fill in."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for stage in ("stage1", "stage2", "stage3"):
        if stage in data and (data[stage] is None or isinstance(data[stage], dict)):
            data[stage] = StageConfig.from_dict(data[stage], location(where, stage), STAGE_DEFAULTS[stage])
    return data


@dataclass(frozen=True)
class TrainConfig:
    """The ``train:`` section: ``model``, ``peft``, ``stage1``, ``stage2``, ``stage3``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    peft: AdapterConfig = field(default_factory=AdapterConfig)
    stage1: StageConfig = field(default_factory=lambda: STAGE_DEFAULTS["stage1"])
    stage2: StageConfig = field(default_factory=lambda: STAGE_DEFAULTS["stage2"])
    stage3: StageConfig = field(default_factory=lambda: STAGE_DEFAULTS["stage3"])

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "train") -> "TrainConfig":
        return from_dict(cls, with_stage_defaults(data, where), where)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
