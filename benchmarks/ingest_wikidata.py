"""Wikidata ingestion throughput and memory: kalora-kg at 1 and 2 workers next to two references.

    .venv/bin/pip install qwikidata                 # the reference reader (not a project dependency)
    .venv/bin/python benchmarks/ingest_wikidata.py  # 200k entities, 3 repeats, memory at 1x and 4x

A Wikidata-shaped dump (``pipelines.synthetic``: real items from tests/data as templates, ids
remapped, ~11 KB per entity like the real dump's average) of --entities entities is generated once
under --dump-dir (and one --scale times larger for the memory check). In each repeat, every arm
runs once, in a fresh subprocess, in the same order:

Before each arm the dump is read once (untimed) so every arm finds it in the page cache.

- floor: single process, read every line and ``orjson.loads`` it, nothing else;
- kalora-kg with 1 and 2 workers: ``pipelines.ingest.ingest(..., "wikidata")`` end to end —
  chunking, parsing, extraction (labels, descriptions, aliases for ``en``, P31/P279 types,
  entity-valued claims, sitelink prior), checkpoint files, the merge and the Parquet tables, input
  hashing and the manifest;
- with ``--dask-workers N``: the same ingest with its chunks as tasks on a Dask cluster of N worker
  processes (1 thread each) on 127.0.0.1, started once before the repeats (a standing cluster, as
  a user's would be); the merge runs in the arm's process. CPU and peak RSS of this arm cover the
  arm's process only, not the cluster's workers;
- qwikidata: ``WikidataJsonDump`` iteration with the same extraction through its entity/claim
  objects, kept in lists (it writes no files, so this flatters it).

Rates are entities/s over the whole dump (subprocess start and imports included); the table gives
medians over repeats and, for the ratios, the median over repeats of arm / reference within the same
repeat (the arms of one repeat run back to back). CPU ms/entity (user + system of the whole process
tree) is the figure least disturbed by other jobs on a shared machine.
Memory: peak RSS of the ingest process tree (main + workers, sampled every 50 ms) on the 1x and the
``--scale``x dump, same settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOOR = """
import sys, time, orjson
n = 0
t = time.perf_counter()
with open(sys.argv[1], "rb") as fh:
    for line in fh:
        line = line.strip().rstrip(b",")
        if len(line) > 1:
            orjson.loads(line)
            n += 1
print(n, time.perf_counter() - t)
"""

OURS = """
import contextlib, sys, time, json, logging
from pathlib import Path
from pipelines.artifacts import ArtifactLayout
from pipelines.ingest import IngestOptions, ingest
from pipelines.wikidata_stream import dask_client
t = time.perf_counter()
with (dask_client(sys.argv[4]) if len(sys.argv) > 4 else contextlib.nullcontext()) as client:
    entry = ingest([sys.argv[1]], "wikidata", ArtifactLayout(Path(sys.argv[2]), "wd"),
                   IngestOptions(workers=int(sys.argv[3]), force=True), executor=client)
print(entry["counts"]["entities"], time.perf_counter() - t)
print(json.dumps({k: v for k, v in entry["counts"].items() if k != "per_file"}), file=sys.stderr)
"""

QWIKIDATA = """
import sys, time
from qwikidata.entity import WikidataItem, WikidataProperty
from qwikidata.json_dump import WikidataJsonDump
from pipelines.normalize import normalize_alias
entities, aliases, triples = [], [], []
t = time.perf_counter()
for doc in WikidataJsonDump(sys.argv[1]):
    ent = WikidataProperty(doc) if doc["type"] == "property" else WikidataItem(doc)
    eid = ent.entity_id
    label = ent.get_label("en")
    types = []
    for pid, group in ent.get_claim_groups().items():
        for claim in group:
            if claim.rank == "deprecated" or claim.mainsnak.snaktype != "value":
                continue
            if claim.mainsnak.value_datatype == "wikibase-entityid":
                tail = claim.mainsnak.datavalue.value["id"]
                triples.append((eid, pid, tail))
                if pid in ("P31", "P279"):
                    types.append(tail)
    names = ([("label", label)] if label else []) + [("synonym", a) for a in ent.get_aliases("en")]
    for kind, text in names:
        aliases.append((eid, text, normalize_alias(text), kind, "en"))
    entities.append((eid, label or eid, ent.get_description("en"), sorted(set(types)),
                     float(len(doc.get("sitelinks") or ()))))
print(len(entities), time.perf_counter() - t)
"""


def run_arm(code: str, *args: str) -> tuple[int, float, int, float]:
    """(entities, seconds, peak RSS bytes of the process tree, CPU seconds of the tree) of one run."""
    import resource

    import psutil

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    cpu0 = children_cpu()

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"arm failed ({proc.returncode}):\n{err[-3000:]}")
    n, seconds = out.split()[:2]
    return int(n), float(seconds), peak, children_cpu() - cpu0  # waited-for workers count as children


@contextlib.contextmanager
def dask_cluster(n_workers: int, home: Path):
    """``dask scheduler`` + ``dask worker --nworkers N --nthreads 1`` on 127.0.0.1; yields the address."""
    if not n_workers:
        yield None
        return
    dask = str(Path(sys.executable).with_name("dask"))
    info = home / "scheduler.json"
    info.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(info)], env=env, stderr=subprocess.DEVNULL)]
    try:
        while not info.exists():
            time.sleep(0.2)
        procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(info), "--nworkers", str(n_workers),
                                       "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                                       "--memory-limit", "0"], env=env, stderr=subprocess.DEVNULL))
        from distributed import Client

        address = json.loads(info.read_text())["address"]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def warm(path: Path) -> None:
    """Read the dump once so every arm finds it in the page cache (the first arm would pay the disk)."""
    with open(path, "rb") as fh:
        while fh.read(64 << 20):
            pass


def make_dump(path: Path, n: int) -> None:
    from pipelines.synthetic import load_templates, write_dump

    if path.exists():
        return
    templates = load_templates(ROOT / "tests" / "data" / "wikidata_sample_100_items.json.bz2")
    tmp = path.with_name(path.name + ".tmp")
    start = time.perf_counter()
    size = write_dump(tmp, n, templates, seed=0)
    tmp.rename(path)
    print(f"generated {path} ({n:,} entities, {size / 1e9:.2f} GB, {size / n / 1e3:.1f} KB/entity) "
          f"in {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=200_000)
    p.add_argument("--scale", type=int, default=4, help="memory check: a dump this many times larger (0: skip)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-qwikidata", action="store_true")
    p.add_argument("--no-floor", action="store_true")
    p.add_argument("--dask-workers", type=int, default=0, help="also run on a Dask cluster of this many workers")
    p.add_argument("--dump-dir", type=Path, default=Path(tempfile.gettempdir()) / "kalora-wd-bench")
    args = p.parse_args()
    args.dump_dir.mkdir(parents=True, exist_ok=True)
    dump = args.dump_dir / f"wikidata-{args.entities}.json"
    make_dump(dump, args.entities)
    rates: dict[str, list[float]] = {}
    peaks: dict[str, list[int]] = {}
    cpus: dict[str, list[float]] = {}

    def record(name: str, n: int, seconds: float, peak: int, cpu: float) -> None:
        rates.setdefault(name, []).append(n / seconds)
        peaks.setdefault(name, []).append(peak)
        cpus.setdefault(name, []).append(cpu / n * 1e3)
        print(f"  {name}: {n:,} entities in {seconds:.1f}s = {n / seconds:,.0f}/s, {cpu:.1f} CPU s, "
              f"peak RSS {peak / 2**20:,.0f} MiB", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(dir=args.dump_dir) as out, dask_cluster(args.dask_workers, Path(out)) as address:
        for rep in range(args.repeats):
            print(f"repeat {rep + 1}/{args.repeats}", file=sys.stderr, flush=True)
            if not args.no_floor:
                warm(dump)
                record("floor: orjson.loads per line", *run_arm(FLOOR, str(dump)))
            for w in args.workers:
                warm(dump)
                record(f"kalora-kg, {w} worker{'s' if w > 1 else ''}", *run_arm(OURS, str(dump), out, str(w)))
            if address:
                warm(dump)
                record(f"kalora-kg, Dask cluster of {args.dask_workers} workers",
                       *run_arm(OURS, str(dump), out, "1", address))
            if not args.no_qwikidata:
                warm(dump)
                record("qwikidata WikidataJsonDump + same extraction", *run_arm(QWIKIDATA, str(dump)))
        memory: list[tuple[str, int, int]] = []
        if args.scale:
            big = args.dump_dir / f"wikidata-{args.entities * args.scale}.json"
            make_dump(big, args.entities * args.scale)
            for w in args.workers:
                small_peak = max(peaks[f"kalora-kg, {w} worker{'s' if w > 1 else ''}"])
                n, seconds, big_peak, _ = run_arm(OURS, str(big), out, str(w))
                print(f"  {args.scale}x, {w} workers: {n:,} entities in {seconds:.1f}s, peak RSS {big_peak / 2**20:,.0f} MiB",
                      file=sys.stderr, flush=True)
                memory.append((f"{w} worker{'s' if w > 1 else ''}", small_peak, big_peak))

    floor_name, qwik_name = "floor: orjson.loads per line", "qwikidata WikidataJsonDump + same extraction"
    one_name = "kalora-kg, 1 worker"

    def paired(name: str, ref: str) -> str:  # median over repeats of (arm / reference in the same repeat)
        if ref not in rates:
            return "-"
        return f"{statistics.median(a / b for a, b in zip(rates[name], rates[ref])):.2f}x"

    print(f"<!-- $ {shlex.join([os.path.relpath(sys.executable), *sys.argv])} -->")
    print(f"<!-- {args.entities:,} entities, {dump.stat().st_size / 1e9:.2f} GB plain JSON, {args.repeats} repeats, "
          f"{os.cpu_count()} cores -->\n")
    print("| arm | entities/s (median) | runs | vs floor (paired) | vs 1 worker (paired) | vs qwikidata (paired) "
          "| CPU ms/entity (median) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, values in rates.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {name} | {statistics.median(values):,.0f} | {runs} | {paired(name, floor_name)} | "
              f"{paired(name, one_name)} | {paired(name, qwik_name)} | {statistics.median(cpus[name]):.3f} |")
    if memory:
        print(f"\n| workers | peak RSS, 1x ({args.entities:,}) | peak RSS, {args.scale}x ({args.entities * args.scale:,}) | ratio |")
        print("|---|---:|---:|---:|")
        for name, small, big in memory:
            print(f"| {name} | {small / 2**20:,.0f} MiB | {big / 2**20:,.0f} MiB | {big / small:.2f} |")
    print(json.dumps({"rates": rates, "cpu_ms_per_entity": cpus, "memory": memory}), file=sys.stderr)


if __name__ == "__main__":
    main()
