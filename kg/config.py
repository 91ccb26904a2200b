"""Typed embedding-training configuration, one dataclass per model with tuned defaults,
validated once at the edge (unknown keys and bad values are refused with their location)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kg.splits import SplitConfig
from pipelines.config import check_choice, check_range, from_dict

MODELS = ("transe", "complex")
LOSSES = ("marginranking", "softplus", "bcewithlogits", "nssa", "crossentropy")
LOOPS = ("lcwa", "slcwa")
ENGINES = ("pykeen", "lightning")
OPTIMIZERS = ("adam", "adagrad")


@dataclass(frozen=True)
class EmbeddingConfig:
    """One PyKEEN training run.

    ``lcwa`` scores every entity for each (head, relation) — with reciprocal relations this is the
    1-N training that reaches published quality on small and medium graphs; ``slcwa`` samples
    ``num_negs_per_pos`` negatives per triple and scales to graphs whose entity count makes 1-N
    scoring too large.
    """

    model: str = "transe"
    embedding_dim: int = 64            # ComplEx: the rank; stored vectors have 2 × rank floats
    num_epochs: int = 5
    batch_size: int | None = 4096      # None: the largest power of two within the memory budget
    training_loop: str = "slcwa"
    inverse_triples: bool = False      # reciprocal relations (recommended with lcwa)
    loss: str | None = None            # None: the model's PyKEEN default
    optimizer: str = "adam"
    learning_rate: float = 0.01
    num_negs_per_pos: int = 4          # slcwa only
    regularizer_weight: float = 0.0    # Lp regulariser on entity and relation vectors (0 disables)
    regularizer_p: float = 3.0         # 3: N3 (Lacroix et al. 2018); 2: squared L2
    label_smoothing: float = 0.0
    scoring_norm: int = 1              # TransE: the Lp norm of h + r - t
    eval_every: int = 0                # validate every N epochs for early stopping (0: never)
    patience: int = 3                  # validations without improvement before stopping
    valid_max_triples: int | None = 1000
    eval_max_triples: int | None = 2000  # test on a seeded sample of the test split (None: all)
    eval_batch_size: int = 64
    checkpoint_every: int = 1          # epochs between resumable checkpoints (0: never)
    engine: str = "pykeen"             # "lightning": PyKEEN's PyTorch Lightning module on `devices`
    devices: int = 1                   # lightning only: devices per node
    num_nodes: int = 1                 # lightning only
    accelerator: str = "auto"          # lightning only: cpu, gpu, auto
    strategy: str = "auto"             # lightning only: e.g. ddp
    memory_fraction: float = 0.8       # refuse when the estimate exceeds this share of free memory
    force: bool = False                # train even when the memory estimate says it will not fit
    seed: int = 42
    split: SplitConfig = field(default_factory=SplitConfig)  # the train/valid/test split trained on

    def __post_init__(self) -> None:
        where = "embed"
        check_choice(self, where, "model", MODELS, "unknown model")
        check_choice(self, where, "loss", LOSSES, "unknown loss", nullable=True)
        for name, choices in (("training_loop", LOOPS), ("engine", ENGINES), ("optimizer", OPTIMIZERS)):
            check_choice(self, where, name, choices)
        check_range(self, where, "embedding_dim", "num_epochs", "num_negs_per_pos", "eval_batch_size", "patience",
                    "devices", "num_nodes", "learning_rate", gt=0)
        check_range(self, where, "eval_every", "checkpoint_every", ge=0)
        check_range(self, where, "batch_size", "eval_max_triples", "valid_max_triples", gt=0, nullable=True)
        check_range(self, where, "memory_fraction", gt=0, le=1)
        check_range(self, where, "label_smoothing", ge=0, lt=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "embed") -> "EmbeddingConfig":
        """Build the config of ``data['model']`` (default TransE): per-model tuned defaults apply
        to every key the mapping leaves out."""
        model = data.get("model", "transe") if isinstance(data, dict) else None
        target = MODEL_CONFIGS.get(model, cls) if cls is EmbeddingConfig and isinstance(model, str) else cls
        return from_dict(target, data, where)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OneToNConfig(EmbeddingConfig):
    """The tuned recipe both models share: reciprocal relations, 1-N scoring with cross-entropy,
    Adagrad, early stopping on validation MRR (Lacroix et al. 2018, applied through PyKEEN)."""

    embedding_dim: int = 200
    num_epochs: int = 200
    batch_size: int | None = 256
    training_loop: str = "lcwa"
    inverse_triples: bool = True
    loss: str | None = "crossentropy"
    optimizer: str = "adagrad"
    learning_rate: float = 0.5
    eval_every: int = 10
    patience: int = 3


@dataclass(frozen=True)
class TransEConfig(OneToNConfig):
    """TransE with an L1 distance and no unit-norm constraint (BENCHMARKS.md has what it reaches)."""

    model: str = "transe"
    scoring_norm: int = 1


@dataclass(frozen=True)
class ComplExConfig(OneToNConfig):
    """ComplEx-N3 (BENCHMARKS.md has what it reaches)."""

    model: str = "complex"
    regularizer_weight: float = 0.1
    regularizer_p: float = 3.0


MODEL_CONFIGS: dict[str, type[EmbeddingConfig]] = {"transe": TransEConfig, "complex": ComplExConfig}
