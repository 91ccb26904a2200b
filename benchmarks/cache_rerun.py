"""First vs second `kalora run hpo` into a fresh artifact root: the second run should find every
stage's cache key in the manifest and skip it.

    .venv/bin/python benchmarks/cache_rerun.py [--ephemeral] [--runs 2]

By default a Prefect server is started on a free 127.0.0.1 port (temporary PREFECT_HOME, SQLite)
and both runs report to it, as deployment runs do; the build-kg flow run's own duration is read
back from the API. ``--ephemeral`` runs without a server (Prefect starts a temporary API in each
process, about 10 s on the reference machine), which is what `make demo` does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_once(root: Path, env: dict[str, str]) -> tuple[float, list[str]]:
    """Wall seconds of one `kalora run hpo`, and the manifest stages it (re)computed."""
    manifest_path = root / "hpo" / "manifest.json"
    before = json.loads(manifest_path.read_text())["stages"] if manifest_path.exists() else {}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flows.cli", "run", "hpo", "--root", str(root)], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"kalora run hpo failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    after = json.loads(manifest_path.read_text())["stages"]
    return wall, sorted(k for k, v in after.items() if before.get(k, {}).get("completed_at") != v["completed_at"])


def flow_run_seconds(api: str) -> list[float]:
    import httpx

    runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_ASC"}).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}).json()}
    out = []
    for r in runs:
        if flows.get(r["flow_id"]) == "build-kg" and r["start_time"] and r["end_time"]:
            start, end = (datetime.fromisoformat(r[k].replace("Z", "+00:00")) for k in ("start_time", "end_time"))
            out.append((end - start).total_seconds())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ephemeral", action="store_true", help="no server: Prefect's ephemeral mode in each run")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kalora-cache-"))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    walls: list[float] = []
    ran: list[list[str]] = []

    def one(run_env: dict[str, str]) -> None:
        wall, stages = run_once(scratch / "artifacts", run_env)
        walls.append(wall)
        ran.append(stages)
        print(f"run {len(walls)}: {wall:.1f} s, stages computed: {', '.join(stages) or 'none'}", flush=True)

    if args.ephemeral:
        env.pop("PREFECT_API_URL", None)
        for _ in range(args.runs):
            one(env)
        flow_secs: list[float] = []
    else:
        from tests.prefect_server import prefect_server

        with prefect_server(scratch / "prefect") as (api, server_env):
            env = {**env, "PREFECT_API_URL": api}
            for _ in range(args.runs):
                one(env)
            flow_secs = flow_run_seconds(api)
    load = os.getloadavg()
    print(f"\nmode: {'ephemeral' if args.ephemeral else 'local server'}; load average at end {load[0]:.2f}; "
          f"nproc {os.cpu_count()}; scratch {scratch}")
    print("| run | `kalora run hpo` wall s | build-kg flow run s | stages computed |")
    print("|---|---|---|---|")
    for i, w in enumerate(walls):
        f = f"{flow_secs[i]:.1f}" if i < len(flow_secs) else "-"
        print(f"| {i + 1} | {w:.1f} | {f} | {', '.join(ran[i]) or 'none (all cached)'} |")
    print(f"\nsecond / first: wall {walls[1] / walls[0]:.3f}" +
          (f", flow run {flow_secs[1] / flow_secs[0]:.3f}" if len(flow_secs) >= 2 else ""))


if __name__ == "__main__":
    main()
