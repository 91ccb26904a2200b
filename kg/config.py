"""Typed embedding-training configuration, one dataclass per model with tuned defaults,
validated once at the edge (unknown keys and bad values are refused with their location)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kg.splits import SplitConfig
from pipelines.config import check_choice, check_range, from_dict
from pipelines.errors import ConfigError

MODELS = ("transe", "complex", "distmult")
LOSSES = ("marginranking", "softplus", "bcewithlogits", "nssa", "crossentropy")
LOOPS = ("lcwa", "slcwa", "shared")
ENGINES = ("pykeen", "lightning")
OPTIMIZERS = ("adam", "adagrad")


@dataclass(frozen=True)
class EmbeddingConfig:
    """One embedding training run. The defaults are the recipe for graphs of ~10k to ~1M entities
    (the HPO demo: 36,853 entities, 509k triples), chosen by measurement (BENCHMARKS.md, issue 14).

    ``shared`` (kg.shared_negatives) scores each batch of (head, relation) queries against one set
    of ``num_negatives`` candidates drawn from the slot's typed range (the entities whose types fill
    that slot in train; out-of-range entities score last) with one matrix product: the cost per
    epoch grows with triples × candidates, not with entities. Two-hop rules mined from train with
    ``rule_confidence`` (kg.rules) add the triples they imply to training.
    ``lcwa`` (PyKEEN) scores every entity for each (head, relation) — with reciprocal relations this
    is the 1-N training that reaches published quality on small graphs (``model: complex`` or
    ``model: transe`` select those tuned configs); ``slcwa`` (PyKEEN) samples ``num_negs_per_pos``
    negatives per triple.
    """

    model: str = "complex"             # complex | distmult (shared loop) | transe (PyKEEN loops)
    embedding_dim: int = 64            # ComplEx: the rank; stored vectors have 2 × rank floats
    num_epochs: int = 4
    batch_size: int | None = 1024      # shared: queries per batch; None: automatic (PyKEEN loops)
    training_loop: str = "shared"
    inverse_triples: bool = True       # reciprocal relations (the shared loop always uses them)
    loss: str | None = None            # None: the model's PyKEEN default (PyKEEN loops)
    optimizer: str = "adam"
    learning_rate: float = 0.03
    num_negs_per_pos: int = 4          # slcwa only
    num_negatives: int = 2048          # shared: candidates shared by each batch of queries
    type_negative_fraction: float = 1.0  # shared: share of candidates drawn from the relation's range
    init_scale: float = 0.01           # shared: std of the normal initialisation
    slot_bias: bool = True             # shared: learned (relation, tail) bias started at log(1 + slot count)
    type_constraints: bool = True      # shared: candidates and scores limited to entity types seen in the slot
    popularity_power: float = 1.0      # shared: range candidates drawn ∝ (1 + slot fills)^power (0: uniform)
    rule_confidence: float = 0.8       # shared: > 0 adds triples implied by 2-hop rules this confident (kg.rules)
    sparse_updates: bool | None = None  # shared: update only the entity rows a batch touches (None: by graph size)
    regularizer_weight: float = 0.0    # Lp regulariser on entity and relation vectors (0 disables)
    regularizer_p: float = 3.0         # 3: N3 (Lacroix et al. 2018); 2: squared L2
    label_smoothing: float = 0.0
    scoring_norm: int = 1              # TransE: the Lp norm of h + r - t
    eval_every: int = 0                # validate every N epochs for early stopping (0: never; PyKEEN loops)
    patience: int = 3                  # validations without improvement before stopping
    valid_max_triples: int | None = 1000
    eval_max_triples: int | None = 5000  # test on a seeded sample of the test split (None: all)
    eval_batch_size: int = 256
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
        check_range(self, where, "type_negative_fraction", ge=0, le=1)
        check_range(self, where, "popularity_power", ge=0)
        check_range(self, where, "rule_confidence", ge=0, le=1)
        check_range(self, where, "num_negatives", "init_scale", gt=0)
        if self.model == "distmult" and self.training_loop != "shared":
            raise _bad(self, "model", "distmult is trained by the shared-negative loop only (training_loop: shared)")
        if self.training_loop == "shared" and self.model == "transe":
            raise _bad(self, "model", "the shared-negative loop trains complex or distmult")
        if self.training_loop == "shared" and (self.engine != "pykeen" or self.eval_every):
            raise _bad(self, "engine" if self.engine != "pykeen" else "eval_every",
                       "the shared-negative loop runs in one process without validation (engine: pykeen, eval_every: 0); "
                       "for several processes use engine: lightning with training_loop: slcwa or lcwa")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "embed") -> "EmbeddingConfig":
        """Build the config of ``data['model']`` (default TransE): per-model tuned defaults apply
        to every key the mapping leaves out."""
        model = data.get("model", "transe") if isinstance(data, dict) else None
        target = MODEL_CONFIGS.get(model, cls) if cls is EmbeddingConfig and isinstance(model, str) else cls
        return from_dict(target, data, where)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_sparse_updates(self, num_entities: int) -> bool:
        """``sparse_updates``, or when unset: on from ``SPARSE_UPDATE_ENTITIES`` entities, where a
        dense update of the whole entity table every step dominates an epoch's cost."""
        if self.sparse_updates is not None:
            return self.sparse_updates
        return num_entities >= SPARSE_UPDATE_ENTITIES


@dataclass(frozen=True)
class OneToNConfig(EmbeddingConfig):
    """The tuned recipe for small graphs (UMLS, Kinships, Nations): reciprocal relations, 1-N scoring
    with cross-entropy, Adagrad, early stopping on validation MRR (Lacroix et al. 2018, through
    PyKEEN). At HPO size one epoch costs ~110 s: use the default (shared) recipe there."""

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
    eval_max_triples: int | None = 2000
    eval_batch_size: int = 64


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


def _bad(config: EmbeddingConfig, name: str, expected: str) -> ConfigError:
    return ConfigError(f"[embed -> {name}] {expected}, got {getattr(config, name)!r}")

SPARSE_UPDATE_ENTITIES = 100_000  # shared loop: sparse row updates from here (see resolved_sparse_updates)
SMALL_GRAPH_ENTITIES = 5_000  # up to here 1-N ComplEx (every entity scored per query) is affordable


def default_config(num_entities: int | None = None) -> EmbeddingConfig:
    """The measured default for a graph of ``num_entities``: 1-N ComplEx-N3 for small graphs (UMLS,
    Kinships, Nations: ≤ 135 entities), the shared-negative recipe (``EmbeddingConfig()``) above
    ``SMALL_GRAPH_ENTITIES``, where scoring every entity per query costs too much."""
    if num_entities is not None and num_entities <= SMALL_GRAPH_ENTITIES:
        return ComplExConfig()
    return EmbeddingConfig()


