"""The production stack for real: PostgreSQL on 127.0.0.1 (throwaway data directory), a Prefect
server on it, a process worker, the deployments of prefect.yaml; a build-kg run whose worker is
SIGKILLed mid-run (with its flow-run subprocess), a restarted worker, and a new run that completes
from the stages the killed one had finished.

What Prefect 3 does with the killed run (checked here): nothing. No process is left to report, so
the run stays Running on the server, also after a new worker starts on the pool; only flow-run
heartbeats plus an automation (docs/flows.md, "Production stack without Docker") would mark it
Crashed. The test marks it Crashed itself, through the same API call that automation makes, then
runs the deployment again."""

import json
import re
import signal
import time
from pathlib import Path

import pytest

from tests.chaos import BUILD, DATA, completed_stages
from tests.pg_server import postgres_server, unavailable_reason

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
STAGE_NAMES = ("ingest", "embed", "index", "linker", "shards", "train")
# the summary table's stage name for each manifest stage stamped with a cache key
MANIFEST_TO_STAGE = {"ingest": "ingest", "embed:transe": "embed", "index": "index", "linker": "linker",
                     "shards": "shards", "train:stage1": "train"}


def _params(root: Path) -> dict:
    sources = [str(DATA / f) for f in ("tiny.obo", "tiny.hpoa", "tiny_genes_to_phenotype.txt")]
    return {**{k: v for k, v in BUILD.items() if k != "name"}, "name": "pg", "root": str(root), "sources": sources}


def _deployment_run(params: dict, env: dict) -> str:
    from tests.prefect_server import prefect

    r = prefect(["deployment", "run", "build-kg/hpo", "--params", json.dumps(params)], env, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)


def _state(api: str, run_id: str) -> str:
    import httpx

    return httpx.get(f"{api}/flow_runs/{run_id}").json()["state_type"]


def _wait(what, timeout: float, log: Path, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(every)
    return found


def _kill_worker_and_flow_runs(worker) -> list[int]:
    """SIGKILL the worker and every process under it (the flow-run subprocess), children first
    collected so that none is missed once its parent is gone."""
    import psutil

    procs = psutil.Process(worker.pid).children(recursive=True) + [psutil.Process(worker.pid)]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    worker.wait(10)
    return [p.pid for p in procs]


async def _states_in_postgres(url: str, run_ids: list[str]) -> dict[str, str]:
    """Flow run id → state type, read from Prefect's tables in PostgreSQL itself."""
    import uuid

    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT id, state_type FROM flow_run WHERE id = ANY($1::uuid[])",
                                [uuid.UUID(r) for r in run_ids])
    finally:
        await conn.close()
    return {str(r["id"]): str(r["state_type"]) for r in rows}


def test_production_stack_on_postgresql_survives_a_killed_worker(tmp_path):
    import asyncio

    import httpx

    from tests.prefect_server import prefect, prefect_server, process_worker

    if reason := unavailable_reason():
        pytest.skip(reason)
    artifacts, log = tmp_path / "artifacts", tmp_path / "worker.log"
    params = _params(artifacts)
    with postgres_server() as db_url, prefect_server(tmp_path / "prefect", database_url=db_url) as (api, env):
        for args in (["work-pool", "create", "kalora", "--type", "process"], ["--no-prompt", "deploy", "--all"]):
            r = prefect(args, env, cwd=ROOT)
            assert r.returncode == 0, r.stdout + r.stderr

        with process_worker("kalora", env, ROOT, log) as worker:
            first = _deployment_run(params, env)
            # killed once index is done: the linker (or the flow between stages) is running
            _wait(lambda: "index" in completed_stages(artifacts, "pg", stamped=True) or _state(api, first) in TERMINAL,
                  120, log, every=0.2)
            assert _state(api, first) == "RUNNING", log.read_text()[-4000:]
            killed = _kill_worker_and_flow_runs(worker)
        assert len(killed) >= 2, "the worker and its flow-run subprocess"
        done_at_kill = {MANIFEST_TO_STAGE[s] for s in completed_stages(artifacts, "pg", stamped=True)
                        if s in MANIFEST_TO_STAGE}
        assert "train" not in done_at_kill

        with process_worker("kalora", env, ROOT, log):
            time.sleep(5)  # a worker polls its pool every few seconds: it picks up nothing of the dead run
            assert _state(api, first) == "RUNNING", "Prefect 3 leaves a run whose worker died as Running"
            r = httpx.post(f"{api}/flow_runs/{first}/set_state", json={
                "state": {"type": "CRASHED", "name": "Crashed", "message": "worker killed (SIGKILL)"}, "force": True})
            assert r.status_code in (200, 201) and r.json()["status"] == "ACCEPT", r.text
            second = _deployment_run(params, env)
            final = _wait(lambda: (s := _state(api, second)) in TERMINAL and s, 240, log)
            assert final == "COMPLETED", log.read_text()[-5000:]

        table = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [second]},
                                                                           "key": {"any_": ["kalora-pg-stages"]}}}).json()
        rows = json.loads(table[0]["data"]) if isinstance(table[0]["data"], str) else table[0]["data"]
        status = {row["stage"]: row["status"] for row in rows}
        assert status == {s: "cached" if s in done_at_kill else "ran" for s in STAGE_NAMES}, (status, done_at_kill)
        assert {"ingest", "embed", "index"} <= done_at_kill
        # the runs and their states live in PostgreSQL
        assert asyncio.run(_states_in_postgres(db_url, [first, second])) == {first: "CRASHED", second: "COMPLETED"}
