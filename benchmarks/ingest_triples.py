"""Peak memory of `kalora ingest` on generated headerless triples files of two sizes.

The claim measured: triples builds stream (sorted runs on disk, bounded batches), so a file ten
times larger ingests with a peak RSS within 2x of the smaller one's. Each run is a fresh
`python -m flows.cli ingest FILE` process; its peak RSS is the maximum, over samples every 20 ms,
of the summed RSS of the process and all its descendants (psutil), cross-checked with the
kernel's high-water mark of the largest process (getrusage RUSAGE_CHILDREN). Sizes alternate
(A B A B ...) so that machine load affects both alike; medians are reported.

Generated graph: ``lines`` distinct-ish random directed triples ``e<i> r<j> e<k>`` over
``lines * entities_per_line`` entities (default 0.1: 1M lines → 100k entities, 10M → 1M, an
average degree of 20) and 50 relations, uniform, seeded; headerless and tab-separated, PyKEEN's
format.

    python benchmarks/ingest_triples.py --lines 1000000 10000000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]


def generate(path: Path, lines: int, entities: int, relations: int, seed: int = 0) -> Path:
    if path.exists() and path.stat().st_size > 0:
        return path
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for start in range(0, lines, 1_000_000):
            n = min(1_000_000, lines - start)
            h, r, t = rng.integers(0, entities, n), rng.integers(0, relations, n), rng.integers(0, entities, n)
            fh.write("".join(f"e{a}\tr{b}\te{c}\n" for a, b, c in zip(h.tolist(), r.tolist(), t.tolist())))
    tmp.rename(path)
    return path


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_sampled(cmd: list[str], cwd: Path, out_path: Path, err_path: Path, env: dict | None = None):
    """Run ``cmd``; return (peak tree RSS in bytes, wait status, rusage, wall seconds)."""
    started = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, env=env)
    proc, peak = psutil.Process(child.pid), 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        try:
            peak = max(peak, tree_rss(proc))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.02)
    return peak, status, usage, time.perf_counter() - started


def run_ingest(path: Path, root: Path) -> dict:
    cmd = [sys.executable, "-m", "flows.cli", "ingest", str(path), "--name", path.stem, "--root", str(root), "--force"]
    out_path, err_path = root.parent / "stdout.txt", root.parent / "stderr.txt"
    peak, status, usage, wall = run_sampled(cmd, ROOT, out_path, err_path)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ingest failed: {err_path.read_text()[-2000:]}")
    text = out_path.read_text()
    counts = json.loads(text[text.index("{\n"):])["counts"]
    # ru_maxrss: the kernel's high-water mark of the ingest process itself (KiB on Linux)
    return {"lines": None, "peak_tree_rss_mb": round(peak / 2**20, 1), "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            "wall_s": round(wall, 1), "triples": counts["triples"], "entities": counts["entities"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--entities-per-line", type=float, default=0.1)
    ap.add_argument("--relations", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/kalora-bench-triples"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    files = {n: generate(args.work / f"triples_{n}.tsv", n, max(1, int(n * args.entities_per_line)), args.relations)
             for n in args.lines}
    results: dict[int, list[dict]] = {n: [] for n in args.lines}
    for rnd in range(args.rounds):
        for n in args.lines:
            res = run_ingest(files[n], args.work / "artifacts")
            res.update(lines=n, round=rnd, load=os.getloadavg()[0])
            results[n].append(res)
            print(json.dumps(res), flush=True)
    summary = {n: {k: statistics.median(r[k] for r in rs) for k in ("peak_tree_rss_mb", "ru_maxrss_mb", "wall_s")}
               for n, rs in results.items()}
    small, large = min(args.lines), max(args.lines)
    print(json.dumps({"median": summary, "rss_ratio_large_over_small":
                      summary[large]["peak_tree_rss_mb"] / summary[small]["peak_tree_rss_mb"]}, indent=2))


if __name__ == "__main__":
    main()
