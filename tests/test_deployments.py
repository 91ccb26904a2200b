"""prefect.yaml: every entrypoint imports, every parameter matches its flow's signature, the
schedules parse; and one real deployment run against a real Prefect server and process worker."""

import json
import re
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def deployment_problems(deployment: dict) -> list[str]:
    """What is wrong with one prefect.yaml deployment: entrypoint, parameters, schedules."""
    import inspect

    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    problems = []
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    signature = inspect.signature(flow.fn)
    params = deployment.get("parameters") or {}
    unknown = set(params) - set(signature.parameters)
    if unknown:
        problems.append(f"{deployment['name']}: parameters {sorted(unknown)} not in {flow.name}{signature}")
    else:
        try:
            flow.validate_parameters(params)
        except Exception as exc:  # noqa: BLE001 - reported, the test fails on it
            problems.append(f"{deployment['name']}: {exc}")
    for schedule in deployment.get("schedules") or []:
        try:
            CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{deployment['name']}: schedule {schedule}: {exc}")
    return problems


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_deployments_prefect_yaml_matches_the_flows(prefect_yaml):
    deployments = prefect_yaml["deployments"]
    assert {d["name"] for d in deployments} == {"hpo", "wikidata-subset"}
    for d in deployments:
        assert deployment_problems(d) == []
        assert d["schedules"] and all(s["cron"] for s in d["schedules"])
        assert d["work_pool"]["name"] == "kalora"
    # deployments differ by parameters (and schedule) only
    strip = [{k: v for k, v in d.items() if k not in ("name", "parameters", "schedules", "description", "tags")}
             for d in deployments]
    assert strip[0] == strip[1]
    assert "definitions" in prefect_yaml and "&" in (ROOT / "prefect.yaml").read_text()


def test_deployments_check_catches_a_bad_parameter(prefect_yaml):
    bad = json.loads(json.dumps(prefect_yaml["deployments"][0]))
    bad["parameters"]["nmae"] = "typo"
    assert any("nmae" in p for p in deployment_problems(bad))
    bad = json.loads(json.dumps(prefect_yaml["deployments"][0]))
    bad["parameters"]["dask"] = {"n_workers": "many"}
    assert deployment_problems(bad)
    bad["parameters"]["dask"] = None
    bad["schedules"] = [{"cron": "61 * * * *"}]
    assert any("schedule" in p for p in deployment_problems(bad))


def test_deployments_hpo_parameters_validate_as_a_build_config(prefect_yaml):
    """The HPO deployment's parameters pass the flow's own validation (files exist, formats known)."""
    from flows.config import resolve

    params = dict(prefect_yaml["deployments"][0]["parameters"])
    for key in ("dask", "publish"):
        params.pop(key)
    cfg = resolve(None, params)
    assert cfg.name == "hpo" and [p.name for p in cfg.source_paths()] == ["hp.obo", "phenotype.hpoa",
                                                                            "genes_to_phenotype.txt"]


def _tiny_params(data_dir: Path, root: Path) -> dict:
    return {"name": "tiny", "root": str(root), "sources": [str(data_dir / f) for f in
                                                           ("tiny.obo", "tiny.hpoa", "tiny_genes_to_phenotype.txt")],
            "embed": {"embedding_dim": 8, "num_epochs": 2, "batch_size": 8, "eval_every": 0, "eval_max_triples": None},
            "shards": {"rows_per_part": 50, "question_fraction": 1.0},
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "max_length": 48, "vocab_size": 300},
            "stage1": {"max_steps": 2, "batch_size": 4}, "stage2": {"max_steps": 2, "batch_size": 4},
            "stage3": {"max_steps": 2, "batch_size": 4}}


@pytest.mark.slow
def test_deployments_run_on_a_real_server_and_worker(tmp_path, data_dir):
    """prefect server start → work pool → prefect deploy --all → process worker →
    `prefect deployment run build-kg/hpo` (parameters pointed at the tiny KG) → Completed + artifacts."""
    import httpx

    from tests.prefect_server import prefect, prefect_server, process_worker

    with prefect_server(tmp_path / "prefect") as (api, env):
        r = prefect(["work-pool", "create", "kalora", "--type", "process"], env)
        assert r.returncode == 0, r.stdout + r.stderr
        r = prefect(["--no-prompt", "deploy", "--all"], env, cwd=ROOT)
        assert r.returncode == 0, r.stdout + r.stderr
        deployments = httpx.post(f"{api}/deployments/filter", json={}).json()
        assert {d["name"] for d in deployments} == {"hpo", "wikidata-subset"}
        assert all(d["schedules"] for d in deployments)

        with process_worker("kalora", env, ROOT, tmp_path / "worker.log") as worker:
            params = _tiny_params(data_dir, tmp_path / "artifacts")
            r = prefect(["deployment", "run", "build-kg/hpo", "--params", json.dumps(params)], env, cwd=ROOT)
            assert r.returncode == 0, r.stdout + r.stderr
            run_id = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)
            deadline = time.monotonic() + 300
            while True:
                run = httpx.get(f"{api}/flow_runs/{run_id}").json()
                if run["state_type"] in TERMINAL:
                    break
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(2)
            assert run["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-5000:]
            assert run["parameters"]["root"] == str(tmp_path / "artifacts")

        artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
        by_key = {a["key"]: a for a in artifacts}
        assert {"kalora-tiny-stages", "kalora-tiny-report"} <= set(by_key)
        table = by_key["kalora-tiny-stages"]["data"]
        table = json.loads(table) if isinstance(table, str) else table
        assert [row["stage"] for row in table] == ["ingest", "embed", "index", "linker", "shards", "train",
                                                   "train:stage2", "train:stage3"]
        report = by_key["kalora-tiny-report"]["data"]
        assert "mrr=" in report and "alias_recall_at_10=" in report and "training.png" in report
        assert "tiny/embeddings/transe/training.png" in by_key["kalora-tiny-plot-embedding-training"]["data"]
        subflows = httpx.post(f"{api}/flow_runs/filter", json={}).json()
        assert {f["name"] for f in httpx.post(f"{api}/flows/filter", json={}).json()} >= {
            "build-kg", "ingest", "embed", "index", "linker", "shards", "train"}
        assert all(f["state_type"] == "COMPLETED" for f in subflows if f["id"] != run_id and f["parent_task_run_id"])
    manifest = json.loads((tmp_path / "artifacts" / "tiny" / "manifest.json").read_text())
    assert all(manifest["stages"][s]["cache"]["key"] for s in ("ingest", "embed:transe", "index", "linker",
                                                                 "shards", "train:stage1", "train:stage2",
                                                                 "train:stage3"))
