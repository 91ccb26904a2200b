"""The Prefect flows in-process (ephemeral API): caching by manifest cache key, re-running only
what a change reaches, failure and resume, transient-only retries, validation before work, Dask."""

import json
import shutil
from pathlib import Path

import pytest

from pipelines.errors import ConfigError, InputError, KaloraError

TINY = {"embed": {"embedding_dim": 8, "num_epochs": 2, "batch_size": 8, "eval_every": 0, "eval_max_triples": None},
        "shards": {"rows_per_part": 50, "question_fraction": 1.0},
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "max_length": 48, "vocab_size": 300},
        "stage1": {"max_steps": 2, "batch_size": 4}, "stage2": {"max_steps": 2, "batch_size": 4},
        "stage3": {"max_steps": 2, "batch_size": 4}}
STAGE_KEYS = {"ingest": "ingest", "embed": "embed:transe", "index": "index", "linker": "linker", "shards": "shards",
              "train": "train:stage1", "train:stage2": "train:stage2", "train:stage3": "train:stage3"}
TRAINING = {"train", "train:stage2", "train:stage3"}


@pytest.fixture(autouse=True)
def _code_does_not_change_during_a_test(monkeypatch):
    """Other work may edit the checkout while these tests run; the code version each test sees is
    the one it saw first (test_flows_new_code_version_... changes it on purpose)."""
    import functools

    import flows.stages

    from pipelines.artifacts import code_version

    monkeypatch.setattr(flows.stages, "code_version", functools.lru_cache(maxsize=None)(code_version))


def _sources(tmp_path: Path, data_dir: Path) -> list[str]:
    out = []
    for f in ("tiny.obo", "tiny.hpoa", "tiny_genes_to_phenotype.txt"):
        shutil.copy(data_dir / f, tmp_path / f)
        out.append(str(tmp_path / f))
    return out


def _build(root: Path, sources: list[str], **overrides):
    from flows.build import build_kg

    params = {**TINY, **overrides}
    return build_kg(name="tiny", root=str(root), sources=sources, publish=False, **params)


def _ran(results) -> set[str]:
    return {stage for stage, entry in results.items() if not entry["cached"]}


def _manifest(root: Path) -> dict:
    return json.loads((root / "tiny" / "manifest.json").read_text())


def test_flows_cache_skips_unchanged_stages_and_reruns_what_a_change_reaches(tmp_path, data_dir):
    root, sources = tmp_path / "artifacts", _sources(tmp_path, data_dir)
    assert _ran(_build(root, sources)) == set(STAGE_KEYS)
    first = _manifest(root)

    assert _ran(_build(root, sources)) == set()
    assert _manifest(root) == first, "a fully cached run rewrites nothing"

    # a stage-1 parameter reaches stage 1 and the stages that start from its output
    assert _ran(_build(root, sources, stage1={"max_steps": 3, "batch_size": 4})) == TRAINING
    # a stage-3 parameter reaches only stage 3
    assert _ran(_build(root, sources, stage1={"max_steps": 3, "batch_size": 4},
                       stage3={"max_steps": 3, "batch_size": 4})) == {"train:stage3"}
    manifest = _manifest(root)["stages"]
    assert manifest["train:stage3"]["parameters"]["stage"]["max_steps"] == 3
    assert manifest["train:stage2"]["outputs"]["embedding_version"] == manifest["train:stage1"]["outputs"]["embedding_version"]
    assert "policy_prefers_chosen" in manifest["train:stage3"]["metrics"]
    # a shard parameter reaches shards and the training that reads them
    assert _ran(_build(root, sources, stage1={"max_steps": 3, "batch_size": 4}, stage3={"max_steps": 3, "batch_size": 4},
                       shards={"rows_per_part": 50, "question_fraction": 0.5})) == {"shards"} | TRAINING
    after = _manifest(root)["stages"]
    for stage in ("ingest", "embed:transe", "index", "linker"):
        assert after[stage] == first["stages"][stage]

    # new input content re-runs ingestion and everything whose inputs it changed
    with open(sources[0], "a") as fh:
        fh.write("\n[Term]\nid: HP:9000099\nname: Invented late term\nis_a: HP:9000001\n")
    ran = _ran(_build(root, sources, stage1={"max_steps": 3, "batch_size": 4}, stage3={"max_steps": 3, "batch_size": 4},
                      shards={"rows_per_part": 50, "question_fraction": 0.5}))
    assert ran == set(STAGE_KEYS)
    assert _manifest(root)["stages"]["ingest"]["counts"]["entities"] == first["stages"]["ingest"]["counts"]["entities"] + 1

    # force re-runs a stage whatever its key; what it reaches downstream depends on its output bytes
    ran = _ran(_build(root, sources, force=["index"], stage1={"max_steps": 3, "batch_size": 4},
                      stage3={"max_steps": 3, "batch_size": 4}, shards={"rows_per_part": 50, "question_fraction": 0.5}))
    assert "index" in ran and not ran & {"ingest", "embed", "linker"}


def test_flows_new_code_version_reruns_the_stages_it_computes(tmp_path, data_dir, monkeypatch):
    """Editing the linking package re-runs index, linker and shards; ingestion and embeddings stay."""
    import flows.stages

    root, sources = tmp_path / "artifacts", _sources(tmp_path, data_dir)
    params = {"shards": {"rows_per_part": 50, "question_fraction": 1.0}}
    corpus = tmp_path / "c.jsonl"  # a bad second line stops the build at shards, before training
    corpus.write_text('{"text": "Seizures."}\nnot json\n')
    with pytest.raises(KaloraError):
        _build(root, sources, corpus=str(corpus), **params)
    real = flows.stages.code_version
    monkeypatch.setattr(flows.stages, "code_version",
                        lambda packages: real(packages) + ("-edited" if "linking" in packages else ""))
    with pytest.raises(KaloraError):
        _build(root, sources, corpus=str(corpus), **params)
    stages = _manifest(root)["stages"]
    assert stages["index"]["cache"]["code"].endswith("-edited") and stages["linker"]["cache"]["code"].endswith("-edited")
    assert not stages["ingest"]["cache"]["code"].endswith("-edited")
    assert not stages["embed:transe"]["cache"]["code"].endswith("-edited")


def test_flows_failed_stage_keeps_earlier_artifacts_and_the_next_run_resumes(tmp_path, data_dir):
    root, sources = tmp_path / "artifacts", _sources(tmp_path, data_dir)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "Seizures and clouded lens."}\nnot json\n')
    with pytest.raises(KaloraError, match=r"corpus\.jsonl:2: not valid JSON"):
        _build(root, sources, corpus=str(corpus))
    manifest = _manifest(root)
    assert {"ingest", "embed:transe", "index", "linker"} <= set(manifest["stages"])
    assert "shards" not in manifest["stages"] and not (root / "tiny" / "shards").exists()
    assert not list((root / "tiny").glob(".shards.*")), "no temporary directory left behind"
    done = {s: manifest["stages"][s]["completed_at"] for s in ("ingest", "embed:transe", "index", "linker")}

    corpus.write_text('{"text": "Seizures and clouded lens."}\n{"text": "Short stature."}\n')
    assert _ran(_build(root, sources, corpus=str(corpus))) == {"shards"} | TRAINING
    manifest = _manifest(root)
    assert {s: manifest["stages"][s]["completed_at"] for s in done} == done
    assert manifest["stages"]["shards"]["counts"]["joint_docs"] == 2

    # failing again, over published shards: the entry and the files of the last good run stay
    from pipelines.artifacts import tree_sha256

    before = tree_sha256(root / "tiny" / "shards")
    corpus.write_text('{"text": "Seizures."}\n{"txt": "no text field"}\n')
    with pytest.raises(KaloraError):
        _build(root, sources, corpus=str(corpus))
    assert _manifest(root)["stages"]["shards"] == manifest["stages"]["shards"]
    assert tree_sha256(root / "tiny" / "shards") == before


def test_flows_validate_every_parameter_before_any_work(tmp_path, data_dir):
    from flows.build import build_kg

    root = tmp_path / "artifacts"
    cases = [({"stage1": {"max_step": 3}}, ConfigError, r"max_step"),
             ({"sources": [str(tmp_path / "missing.obo")]}, InputError, r"missing\.obo: no such file"),
             ({"force": ["embedd"]}, ConfigError, r"\[force\] unknown stage\(s\) \['embedd'\]"),
             ({"format": "rdf"}, InputError, r"unknown format 'rdf'"),
             ({"sources": ["ftp2://host/x.obo"]}, ConfigError, r"cannot read ftp2:// URLs")]
    for bad, error, pattern in cases:
        params = {"sources": [str(data_dir / "tiny.obo")], **bad}
        with pytest.raises(error, match=pattern):
            build_kg(name="tiny", root=str(root), publish=False, **params)
    assert not root.exists(), "nothing was written before validation failed"


def test_flows_url_source_is_fetched_then_cached(tmp_path, data_dir):
    root = tmp_path / "artifacts"
    sources = [(data_dir / "tiny.obo").as_uri(), str(data_dir / "tiny.hpoa")]
    from flows.build import ingest_flow
    from flows.config import resolve

    cfg = resolve(None, {"name": "tiny", "root": str(root), "sources": sources})
    entry = ingest_flow(cfg)
    assert not entry["cached"] and entry["counts"]["entities"] > 5
    assert (root / "tiny" / "downloads" / "tiny.obo").read_bytes() == (data_dir / "tiny.obo").read_bytes()
    assert ingest_flow(cfg)["cached"]


def test_flows_retry_transient_errors_only(monkeypatch):
    from flows.build import BuildConfig, index_task, is_transient
    from pipelines.artifacts import ArtifactLayout

    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError()) and is_transient(OSError(5, "EIO"))
    for exc in (InputError("x"), ConfigError("x"), FileNotFoundError("x"), PermissionError("x"), ValueError("x")):
        assert not is_transient(exc), exc

    import linking.index

    calls = []

    def flaky(layout, model):
        calls.append(model)
        if len(calls) == 1:
            raise ConnectionResetError("network storage went away")
        return {"counts": {"entities": 1}}

    monkeypatch.setattr(linking.index, "build_entity_index", flaky)
    task = index_task.with_options(retry_delay_seconds=0)
    assert task(BuildConfig(), ArtifactLayout(Path("unused"), "x")) == {"counts": {"entities": 1}}
    assert len(calls) == 2

    def bad_input(layout, model):
        calls.append(model)
        raise InputError("entities.parquet: wrong schema")

    calls.clear()
    monkeypatch.setattr(linking.index, "build_entity_index", bad_input)
    with pytest.raises(InputError):
        task(BuildConfig(), ArtifactLayout(Path("unused"), "x"))
    assert len(calls) == 1, "bad input is never retried"


@pytest.fixture(scope="module")
def dask_cluster_opts(tmp_path_factory):
    """An existing two-worker Dask cluster in processes of its own (``dask scheduler`` + ``dask worker``),
    reached through ``address`` exactly as a remote one would be. Out of process on purpose: an
    in-process LocalCluster leaves state behind that broke later forked DataLoader workers."""
    pytest.importorskip("prefect_dask")
    from tests.dask_cluster import local_dask_cluster

    with local_dask_cluster(tmp_path_factory.mktemp("dask")) as address:
        yield {"address": address}


def test_flows_dask_link_corpus_fans_out_on_a_local_cluster(tmp_path, tiny_build, dask_cluster_opts):
    from flows.link_corpus import link_corpus

    texts = tmp_path / "texts.txt"
    texts.write_text("Seizures and clouded lens.\nNothing here.\n" * 3 + "Short stature.\n")
    out_dask, out_threads = tmp_path / "dask.jsonl", tmp_path / "threads.jsonl"
    layout = tiny_build
    summary = link_corpus(str(texts), str(out_dask), name=layout.name, root=str(layout.root), chunk_size=2,
                          dask=dask_cluster_opts)
    assert summary["documents"] == 7 and summary["chunks"] == 4
    link_corpus(str(texts), str(out_threads), name=layout.name, root=str(layout.root), chunk_size=3)
    rows = [json.loads(line) for line in out_dask.read_text().splitlines()]
    assert out_dask.read_text() == out_threads.read_text(), "same links, in input order, on Dask and threads"
    assert [(s["text"], s["kb_id"]) for s in rows[0]["spans"]] == [("Seizures", "HP:9000006"),
                                                                    ("clouded lens", "HP:9000003")]


def test_flows_dask_ingest_fan_out_matches_the_thread_pool(tmp_path, data_dir, dask_cluster_opts):
    from flows.build import ingest_flow, task_runner
    from flows.config import resolve

    sources = [str(data_dir / f) for f in ("tiny.obo", "tiny.hpoa", "tiny_genes_to_phenotype.txt")]
    a = ingest_flow.with_options(task_runner=task_runner(dask_cluster_opts))(
        resolve(None, {"name": "a", "root": str(tmp_path), "sources": sources}))
    b = ingest_flow(resolve(None, {"name": "b", "root": str(tmp_path), "sources": sources}))
    assert a["counts"] == b["counts"]
    ma, mb = (json.loads((tmp_path / n / "manifest.json").read_text())["stages"]["ingest"]["cache"] for n in "ab")
    assert ma == mb, "same source digests and key whichever runner hashed them"


def test_flows_dask_options_are_validated():
    from flows.build import task_runner

    pytest.importorskip("prefect_dask")
    with pytest.raises(Exception, match="n_workers"):
        task_runner({"n_workers": 0})
    with pytest.raises(Exception, match="extra"):
        task_runner({"adress": "tcp://x:8786"})
    assert type(task_runner({"address": "tcp://127.0.0.1:8786"})).__name__ == "DaskTaskRunner"


def test_flows_build_config_linker_section_reaches_the_linker_stage():
    from flows.config import BuildConfig
    from flows.stages import SPECS
    from pipelines.errors import ConfigError

    cfg = BuildConfig.from_dict({"linker": {"top_k": 3, "encoder": {"epochs": 7}}})
    assert cfg.linker.top_k == 3 and cfg.linker.encoder.epochs == 7
    parameters = SPECS["linker"].parameters(cfg)
    assert parameters["linker"]["top_k"] == 3  # part of the stage's cache key
    assert parameters != SPECS["linker"].parameters(BuildConfig.from_dict({}))
    with pytest.raises(ConfigError, match=r"\[linker -> top_k\] must be > 0"):
        BuildConfig.from_dict({"linker": {"top_k": 0}})
