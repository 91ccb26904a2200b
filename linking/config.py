"""The linker's typed configuration, validated once at the edge.

:class:`LinkerConfig` covers what the ``kg_linker`` spaCy factory takes (:meth:`LinkerConfig.component_config`
is what ``nlp.add_pipe("kg_linker", config=...)`` receives) and the settings of the two models trained
at build time (:class:`~linking.encoder.EncoderConfig`, :class:`RerankerConfig`). Unknown keys and
bad values are refused with their location, spaCy-style: ``[linker -> top_k] must be > 0, got 0``.
"""

from __future__ import annotations

from dataclasses import InitVar, asdict, dataclass, field, fields
from typing import Any

from pipelines.config import from_dict
from linking.disambiguation import DisambiguationWeights
from linking.encoder import EncoderConfig
from linking.names import PoolSize
from pipelines.errors import ConfigError

FUZZY_GENERATORS = ("tfidf", "dense")
# fields of LinkerConfig that are the spaCy component's config (the rest configure training)
COMPONENT_FIELDS = ("top_k", "min_score", "use_ner_spans", "dense_model", "fuzzy_weights", "weights", "rerank",
                    "name_encoder", "candidate_pool", "context_window", "abbreviations", "coordination", "negation",
                    "negation_scope", "negation_triggers", "allowed_roots", "windows", "detection",
                    "window_min_score")
DETECTION_MODES = ("precise", "sensitive")


@dataclass(frozen=True)
class RerankerConfig:
    seed: int = 0
    max_queries: int = 20_000        # held-out aliases trained on (a seeded sample beyond this)
    hidden: tuple[int, ...] = (32,)  # ReLU layer widths; () = logistic regression


@dataclass(frozen=True)
class LinkerConfig:
    top_k: int = 5                   # candidates kept per mention
    min_score: float = 0.0           # a mention whose best candidate scores below this is not linked
    use_ner_spans: bool = False      # link an earlier component's doc.ents instead of matching aliases
    dense_model: str | None = None   # None, "auto" or a local transformer directory (extra name vectors)
    fuzzy_weights: dict[str, float] = field(default_factory=lambda: {"tfidf": 0.5, "dense": 0.5})
    weights: DisambiguationWeights = DisambiguationWeights()
    rerank: bool = True              # train the candidate reranker at build time
    name_encoder: bool = True        # train the KB name encoder the reranker's pool uses
    candidate_pool: dict[str, int] = field(default_factory=dict)  # PoolSize overrides: char, stem, dense, enc
    context_window: int = 25         # tokens either side of a mention for context similarity
    abbreviations: bool = True       # link later uses of a short form defined in the text: "... syndrome (NBCCS)"
    coordination: bool = True        # one concept per conjunct: "aplastic or hypoplastic nails"
    negation: bool = True            # set span._.negated / ._.uncertain (NegEx/ConText-style scopes)
    negation_scope: int = 8          # tokens a negation or uncertainty trigger reaches
    negation_triggers: dict[str, list[str]] = field(default_factory=dict)  # more phrases per trigger kind
    allowed_roots: list[str] = field(default_factory=list)  # link only to these entities and their descendants
    # mention detection beyond exact aliases (linking.phrases): word-bag windows ("ears were low-set");
    # "sensitive" also scores the other 2-3 word windows of each sentence with the name encoder and
    # reranker and keeps those whose best candidate scores >= window_min_score
    windows: bool = True
    detection: str = "precise"
    window_min_score: float = 0.7
    # build: the relations whose (child, parent) edges are saved with the linker for allowed_roots
    hierarchy_relations: list[str] = field(default_factory=lambda: ["is_a", "isa", "P279", "P31"])
    encoder: EncoderConfig = EncoderConfig()
    reranker: RerankerConfig = RerankerConfig()
    where: InitVar[str] = "linker"   # the location errors name (not a setting)

    def __post_init__(self, where: str) -> None:
        _check(self, where, positive=("top_k", "negation_scope", "window_min_score"), non_negative=("context_window",))
        if self.detection not in DETECTION_MODES:
            raise ConfigError(f"[{where} -> detection] expected one of {list(DETECTION_MODES)}, got {self.detection!r}")
        from linking.negation import TRIGGERS

        bad = sorted(set(self.negation_triggers) - set(TRIGGERS))
        if bad or any(not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v)
                      for v in self.negation_triggers.values()):
            raise ConfigError(f"[{where} -> negation_triggers] expected lists of phrases under some of "
                              f"{sorted(TRIGGERS)}, got {self.negation_triggers!r}")
        for name in ("allowed_roots", "hierarchy_relations"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) and x for x in value):
                raise ConfigError(f"[{where} -> {name}] expected a list of entity or relation ids, got {value!r}")
        unknown = set(self.fuzzy_weights) - set(FUZZY_GENERATORS)
        if unknown:
            raise ConfigError(f"[{where} -> fuzzy_weights] unknown key(s) {sorted(unknown)}: expected tfidf, dense")
        PoolSize.from_config(dict(self.candidate_pool), True, f"{where} -> candidate_pool")
        _check(self.encoder, f"{where} -> encoder", positive=("dim", "epochs", "max_steps", "batch_size", "lr",
                                                                "temperature", "max_features", "max_entities"),
               non_negative=("min_entities",))
        _check(self.reranker, f"{where} -> reranker", positive=("max_queries",), non_negative=())
        if any(not isinstance(h, int) or h <= 0 for h in self.reranker.hidden):
            raise ConfigError(f"[{where} -> reranker -> hidden] must be positive layer widths, got "
                              f"{list(self.reranker.hidden)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "linker") -> "LinkerConfig":
        """Build from a mapping (the build config's ``linker:`` section, or a spaCy component config);
        nested ``weights``, ``encoder`` and ``reranker`` mappings become their dataclasses."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"[{where}] unknown key(s) {unknown}: expected some of {sorted(known)}")
        for key, kind in (("weights", DisambiguationWeights), ("encoder", EncoderConfig),
                          ("reranker", RerankerConfig)):
            if key in data and not isinstance(data[key], kind):
                data[key] = from_dict(kind, _mapping(data[key], f"{where} -> {key}"), f"{where} -> {key}")
        for key in ("fuzzy_weights", "candidate_pool", "negation_triggers"):
            if key in data:
                data[key] = dict(_mapping(data[key], f"{where} -> {key}"))
        for key in ("allowed_roots", "hierarchy_relations"):
            if isinstance(data.get(key), tuple):
                data[key] = list(data[key])
        return cls(**data, where=where)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists), for cache keys and manifests."""
        return _plain(asdict(self))

    def component_config(self) -> dict[str, Any]:
        """What ``nlp.add_pipe("kg_linker", config=...)`` takes (the training settings are not a
        component setting: they are passed to :func:`linking.train.train_models`)."""
        return {key: _plain(getattr(self, key) if key != "weights" else asdict(self.weights))
                for key in COMPONENT_FIELDS}


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"[{where}] must be a mapping, got {value!r}")
    return value


def _check(obj: Any, where: str, *, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
    for name in positive:
        value = getattr(obj, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"[{where} -> {name}] must be > 0, got {value!r}")
    for name in non_negative:
        value = getattr(obj, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"[{where} -> {name}] must be >= 0, got {value!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
