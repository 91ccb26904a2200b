"""Wall time of `kalora run hpo` (the demo) end to end, in fresh artifact roots.

    .venv/bin/python benchmarks/e2e_hpo.py --repeats 3

Each repeat runs the console script in a new process (Prefect ephemeral mode included) with a new
artifact root, and reads per-stage wall times from the manifest it wrote. Prints a Markdown table
with the median and every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(workdir: Path) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect"), "PYKEEN_HOME": str(workdir / "pykeen"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "hpo", "--root", str(workdir / "artifacts")],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"kalora run hpo failed:\n{proc.stderr[-2000:]}")
    manifest = json.loads((workdir / "artifacts" / "hpo" / "manifest.json").read_text())
    stages = {k: v["wall_time_s"] for k, v in manifest["stages"].items() if v.get("wall_time_s") is not None}
    return {"wall_s": wall, "stages": stages, "mrr": manifest["stages"]["embed:transe"]["metrics"]["mrr"],
            "counts": manifest["stages"]["ingest"]["counts"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    runs = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp)))
            print(f"run {i + 1}: {runs[-1]['wall_s']:.1f} s", file=sys.stderr)
    walls = [r["wall_s"] for r in runs]
    print(f"| metric | median | runs |\n|---|---|---|")
    print(f"| `kalora run hpo` wall time (s) | {statistics.median(walls):.1f} | {', '.join(f'{w:.1f}' for w in walls)} |")
    for stage in runs[0]["stages"]:
        vals = [r["stages"].get(stage, float('nan')) for r in runs]
        print(f"| stage `{stage}` (s) | {statistics.median(vals):.1f} | {', '.join(f'{v:.1f}' for v in vals)} |")
    print(f"| TransE filtered MRR (2,000 test triples) | {statistics.median(r['mrr'] for r in runs):.3f} | "
          f"{', '.join(format(r['mrr'], '.3f') for r in runs)} |")
    c = runs[0]["counts"]
    print(f"\nentities {c['entities']:,}, aliases {c['aliases']:,}, relations {c['relations']}, triples {c['triples']:,}")


if __name__ == "__main__":
    main()
