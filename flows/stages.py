"""What each stage reads, which parameters and code shape its output, and where the output lies:
the cache key of a stage is a SHA-256 over the content hashes of its inputs, its parameters and the
code version of the packages that compute it (``pipelines.artifacts.code_version``).

A stage whose manifest entry carries the same key, and whose outputs still exist, is skipped. The
inputs are the upstream artifacts themselves (hashed, not their timestamps), so a change anywhere
re-runs exactly the stages downstream of it whose inputs changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flows.config import BuildConfig
from linking.evaluate import AliasRecallConfig
from pipelines.artifacts import ArtifactLayout, cache_key, cached_entry, code_version, input_digests
from pipelines.integrity import verify
from pipelines.shards import ShardInputs

STAGE_NAMES = ("ingest", "embed", "index", "linker", "shards", "train")


@dataclass(frozen=True)
class StageSpec:
    name: str
    packages: tuple[str, ...]
    manifest_key: Callable[[BuildConfig], str]
    inputs: Callable[[BuildConfig, ArtifactLayout], dict[str, Path | None]]
    parameters: Callable[[BuildConfig], dict[str, Any]]
    outputs: Callable[[BuildConfig, ArtifactLayout], list[Path]]


def _vectors(cfg: BuildConfig, lay: ArtifactLayout) -> Path:
    return lay.embeddings(cfg.embed.model) / "entities.npy"


def _embed_parameters(cfg: BuildConfig) -> dict[str, Any]:
    embed = cfg.embed.to_dict()
    return {"embed": embed, "split": embed.pop("split")}


SPECS: dict[str, StageSpec] = {
    "ingest": StageSpec(
        "ingest", ("pipelines",), lambda cfg: "ingest",
        # ingest's source digests come from the fan-out that fetched and hashed them (see build.py)
        lambda cfg, lay: {},
        lambda cfg: {"sources": list(cfg.sources), "format": cfg.format, "options": cfg.ingest.cache_key()},  # not workers/chunking
        lambda cfg, lay: [lay.entities, lay.aliases, lay.relations, lay.triples]),
    "embed": StageSpec(
        "embed", ("kg",), lambda cfg: f"embed:{cfg.embed.model}",
        lambda cfg, lay: {"entities": lay.entities, "relations": lay.relations, "triples": lay.triples},
        _embed_parameters,
        lambda cfg, lay: [lay.embeddings(cfg.embed.model), lay.splits]),
    "index": StageSpec(
        "index", ("linking",), lambda cfg: "index",
        lambda cfg, lay: {"entities": lay.entities, "vectors": _vectors(cfg, lay)},
        lambda cfg: {"model": cfg.embed.model},
        lambda cfg, lay: [lay.index]),
    "linker": StageSpec(
        "linker", ("linking",), lambda cfg: "linker",
        lambda cfg, lay: {"entities": lay.entities, "aliases": lay.aliases, "vectors": _vectors(cfg, lay)},
        lambda cfg: {"model": cfg.embed.model, "linker": cfg.linker.to_dict()},
        lambda cfg, lay: [lay.linker]),
    "linker_eval": StageSpec(
        "linker_eval", ("linking", "flows"), lambda cfg: "eval:linker",
        lambda cfg, lay: {"aliases": lay.aliases, "linker": lay.linker},
        lambda cfg: AliasRecallConfig().to_dict(),
        lambda cfg, lay: []),
    "shards": StageSpec(
        "shards", ("pipelines", "linking"), lambda cfg: "shards",
        lambda cfg, lay: {"entities": lay.entities, "relations": lay.relations, "splits": lay.splits,
                          "embeddings": lay.embeddings(cfg.embed.model), "index": lay.index, "linker": lay.linker,
                          "corpus": Path(cfg.corpus) if cfg.corpus else None,
                          **{f"preferences[{i}]": Path(p) for i, p in enumerate(cfg.preferences)}},
        lambda cfg: {"shards": asdict(cfg.shards), "model": cfg.embed.model, "corpus": cfg.corpus,
                     "preferences": list(cfg.preferences)},
        lambda cfg, lay: [lay.shards]),
    # The train flow's tasks record "train:stage1/2/3"; keep these keys in step with what they record.
    # A later stage reads the earlier stage's saved knowledge module (hashed), so retraining stage 1
    # re-runs 2 and 3, and a stage-3 setting re-runs only stage 3.
    "train": StageSpec(
        "train", ("model",), lambda cfg: "train:stage1",
        lambda cfg, lay: {"shards": lay.shards, "vectors": _vectors(cfg, lay)},
        lambda cfg: {"model": asdict(cfg.model), "stage1": cfg.stage1.to_dict()},
        lambda cfg, lay: [lay.adapters / "stage1"]),
    "train:stage2": StageSpec(
        "train:stage2", ("model",), lambda cfg: "train:stage2",
        lambda cfg, lay: {"shards": lay.shards, "vectors": _vectors(cfg, lay),
                          "stage1": lay.adapters / "stage1" / "knowledge.safetensors"},
        lambda cfg: {"model": asdict(cfg.model), "peft": asdict(cfg.peft), "stage2": cfg.stage2.to_dict()},
        lambda cfg, lay: [lay.adapters / "stage2"]),
    "train:stage3": StageSpec(
        "train:stage3", ("model",), lambda cfg: "train:stage3",
        lambda cfg, lay: {"shards": lay.shards, "stage2": lay.adapters / "stage2" / "knowledge.safetensors",
                          "stage2_adapter": lay.adapters / "stage2" / "adapter"},
        lambda cfg: {"stage3": cfg.stage3.to_dict()},
        lambda cfg, lay: [lay.adapters / "stage3"]),
}
TRAIN_STAGES = {1: "train", 2: "train:stage2", 3: "train:stage3"}  # stage number -> SPECS key


def fingerprint(spec: StageSpec, cfg: BuildConfig, layout: ArtifactLayout,
                extra_inputs: dict[str, str | None] | None = None) -> tuple[str, dict[str, Any]]:
    """(cache key, what went into it) for ``spec`` as configured by ``cfg``, on the current inputs."""
    inputs = {**input_digests(spec.inputs(cfg, layout)), **(extra_inputs or {})}
    code = code_version(spec.packages)
    parameters = spec.parameters(cfg)
    return cache_key(inputs, parameters, code), {"inputs": inputs, "code": code}


def running_marker(layout: ArtifactLayout, manifest_key: str) -> Path:
    """Present while a stage runs in a flow, and after a run that died or failed in it: the stage's
    old entry may then describe files the run had already replaced, so it is not trusted."""
    return layout.base / f".running-{manifest_key.replace(':', '-')}"


def lookup(spec: StageSpec, cfg: BuildConfig, layout: ArtifactLayout, key: str) -> dict[str, Any] | None:
    """The stage's entry when it can be skipped: same cache key, outputs present, and the files it
    recorded unchanged (a changed one raises :class:`~pipelines.errors.ArtifactError`)."""
    if running_marker(layout, spec.manifest_key(cfg)).exists():
        return None
    return cached_entry(layout, spec.manifest_key(cfg), key, spec.outputs(cfg, layout))


def shard_inputs(layout: ArtifactLayout, model: str) -> ShardInputs:
    """What the shards stage reads from the embed, index and linker stages, loaded for
    ``pipelines.shards.build_shards`` (which sits below those packages and does not import them)."""
    from kg.embeddings import load_entity_vectors
    from kg.splits import read_splits
    from linking.build import load_linker
    from linking.index import load_entity_index

    verify(layout, [layout.require(layout.entities, "ingest"), layout.relations])  # read by build_shards
    splits = read_splits(layout)
    vectors, meta = load_entity_vectors(layout, model)
    return ShardInputs(splits=splits, vectors=vectors, embedding_version=meta["embedding_version"],
                       index=load_entity_index(layout), nlp=load_linker(layout))
