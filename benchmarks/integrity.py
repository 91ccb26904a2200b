"""What the integrity checks cost on a real build (the demo's: `kalora run hpo`).

    .venv/bin/python benchmarks/integrity.py digests --root artifacts --name hpo [--repeats 5]
    .venv/bin/python benchmarks/integrity.py warm --root artifacts --name hpo
    .venv/bin/python benchmarks/integrity.py run --root /tmp/kalora-int      # a whole `kalora run hpo`

``digests``: every published file of the build (everything outside hidden work directories), hashed
whole with SHA-256, BLAKE2b (and xxh3_128 when the xxhash package is installed), page cache warm
(a first pass reads every file), ``--repeats`` passes each, interleaved A B A B; the median pass in
CPU seconds of this process (wall time on a shared machine follows its load).
Then ``kalora verify`` on the build in a fresh process (its own wall clock, imports included),
which hashes every recorded file once.

``warm``: ``check_build`` (every recorded file) in one process, cold and then with the digests
remembered: what a check costs once the run's cache keys have hashed the same files.

``run``: ``kalora run hpo`` in this process with the integrity functions timed (recording the
digests after each stage, every check before a read): the seconds spent inside them, an upper
bound of what the checks add (a digest computed there is remembered, and the next stage's cache
key would otherwise have computed it), against the run's wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def published_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(base).parts))


def _hashers() -> dict[str, object]:
    out = {"sha256": lambda: hashlib.sha256(), "blake2b": lambda: hashlib.blake2b()}
    try:
        import xxhash

        out["xxh3_128"] = xxhash.xxh3_128
    except ImportError:
        pass
    return out


def hash_all(files: list[Path], make) -> float:
    """CPU seconds of hashing ``files`` whole (wall time moves with the load on a shared machine)."""
    t = time.process_time()
    for f in files:
        h = make()
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        h.hexdigest()
    return time.process_time() - t


def digests(args) -> None:
    base = Path(args.root) / args.name
    files = published_files(base)
    size = sum(f.stat().st_size for f in files)
    print(f"{len(files)} files, {size / 1e6:.1f} MB under {base}; load average {os.getloadavg()}")
    hashers = _hashers()
    hash_all(files, hashers["sha256"])  # warm the page cache
    times: dict[str, list[float]] = {name: [] for name in hashers}
    for _ in range(args.repeats):
        for name, make in hashers.items():
            times[name].append(hash_all(files, make))
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:9s} median {med:.3f} CPU s  ({size / 1e6 / med:.0f} MB/CPU s)  passes: "
              + " ".join(f"{t:.3f}" for t in ts))
    walls = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "flows.cli", "verify", "--name", args.name, "--root", args.root],
                           cwd=ROOT, capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
    print(f"kalora verify: rc {r.returncode}, median {statistics.median(walls):.2f} s wall (process start and "
          f"imports included), passes: " + " ".join(f"{w:.2f}" for w in walls))
    print(r.stdout)


def warm(args) -> None:
    """``check_build`` in this process twice: cold (every recorded file hashed) and warm (every
    digest already remembered, as in a run whose cache keys hashed the same files first)."""
    from pipelines.artifacts import ArtifactLayout
    from pipelines.integrity import check_build

    layout = ArtifactLayout(Path(args.root), args.name)
    for label in ("cold", "warm", "warm"):
        t, c = time.perf_counter(), time.process_time()
        checks = check_build(layout)
        n = sum(len(v or []) for v in checks.values())
        print(f"check_build {label}: {n} files, {time.perf_counter() - t:.3f} s wall, "
              f"{time.process_time() - c:.3f} s CPU; load average {os.getloadavg()}")


def run(args) -> None:
    import pipelines.integrity as integrity

    spent = {"record": 0.0, "check": 0.0}
    calls = {"record": 0, "check": 0}

    def timed(kind, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[kind] += time.perf_counter() - t
                calls[kind] += 1
        return wrapper

    # module globals: every record (record_stage_files, the linker's checksums.json) goes through
    # record_files and every check (verify, cached stages, from_disk) through check_record
    integrity.record_files = timed("record", integrity.record_files)
    integrity.check_record = timed("check", integrity.check_record)
    from flows.cli import main as cli

    t = time.perf_counter()
    rc = cli(["run", "hpo", "--root", args.root])
    wall = time.perf_counter() - t
    total = spent["record"] + spent["check"]
    print(f"kalora run hpo: rc {rc}, {wall:.1f} s wall; load average {os.getloadavg()}")
    print(f"recording digests: {spent['record']:.3f} s in {calls['record']} calls; checking: {spent['check']:.3f} s "
          f"in {calls['check']} calls; together {total:.3f} s = {100 * total / wall:.2f}% of the run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("digests")
    d.add_argument("--root", required=True)
    d.add_argument("--name", default="hpo")
    d.add_argument("--repeats", type=int, default=5)
    d.set_defaults(func=digests)
    w = sub.add_parser("warm")
    w.add_argument("--root", required=True)
    w.add_argument("--name", default="hpo")
    w.set_defaults(func=warm)
    r = sub.add_parser("run")
    r.add_argument("--root", required=True)
    r.set_defaults(func=run)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
