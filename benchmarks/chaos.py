"""Chaos run of the whole build: `kalora run` on the tiny fabricated KG SIGKILLed at N seeded random
moments (one uniform draw in each N-th of an uninterrupted run's measured duration) and inside
every publish swap of a forced rebuild; each kill followed by a plain rerun. Reports, per kill, the
stage it interrupted, whether the rerun completed and whether the result equals the uninterrupted
build (tests/chaos.py: what is compared, and why timings are left out). The runs report to one
Prefect server (SQLite) started for the benchmark, as `kalora run` does with PREFECT_API_URL set;
the SIGKILL hits the `kalora run` process group.

    .venv/bin/python benchmarks/chaos.py [--points 20] [--seed 21] [--swaps 5] [--keep]

The same run is the slow test tests/test_chaos.py::test_chaos_twenty_random_kills_and_every_publish_swap.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(chaos, args) -> list:
    from tests.chaos import kill_delays

    duration = chaos.reference()
    print(f"uninterrupted build: {duration:.1f} s, {len(chaos.expected)} artifact files and manifest stages compared; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    outcomes = []
    for delay in kill_delays(args.seed, args.points, duration):
        outcomes.append(chaos.timing_kill(delay))
        print(f"{outcomes[-1].line()}  (load {os.getloadavg()[0]:.1f})", flush=True)
    for n in range(1, args.swaps + 1):
        outcomes.append(chaos.swap_kill(n))
        print(f"{outcomes[-1].line()}  (load {os.getloadavg()[0]:.1f})", flush=True)
    return outcomes


def main() -> int:
    from tests.chaos import Chaos
    from tests.prefect_server import prefect_server

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=20, help="random kill moments")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--swaps", type=int, default=5,
                    help="kill inside publish swaps 1..N of a forced rebuild (it has 5: embeddings, index, linker, "
                         "shards, adapters; ingest keeps kg/ when its inputs are unchanged)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (runs.log, artifacts)")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="kalora-chaos-"))
    started = time.monotonic()
    with prefect_server(scratch / "prefect-server") as (api, _):
        print(f"Prefect server (SQLite) on {api} after {time.monotonic() - started:.0f} s", flush=True)
        outcomes = run(Chaos(scratch, api), args)
    killed = [o for o in outcomes if o.killed]
    equal = [o for o in killed if o.ok]
    reruns = sorted(o.rerun_seconds for o in killed)
    print(f"\nkills: {len(killed)} of {len(outcomes)} points landed while the build ran "
          f"({sum(o.kind == 'timing' for o in killed)} random, {sum(o.kind == 'swap' for o in killed)} in a publish swap); "
          f"reruns completed with digests equal to the uninterrupted build: {len(equal)} of {len(killed)}; "
          f"not equal or failed: {len(outcomes) - sum(o.ok for o in outcomes)}; "
          f"directories left behind: {sum(len(o.leftovers) for o in outcomes)}")
    print(f"rerun seconds: median {reruns[len(reruns) // 2]:.1f}, min {reruns[0]:.1f}, max {reruns[-1]:.1f}; "
          f"total {time.monotonic() - started:.0f} s; load average at end {os.getloadavg()[0]:.2f}; nproc {os.cpu_count()}")
    if args.keep:
        print(f"scratch kept: {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
