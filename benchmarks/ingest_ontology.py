"""Peak memory and time of `kalora ingest` on generated OBO and UMLS RRF files, two code trees side
by side (e.g. before and after a change), at two sizes.

The claim measured: OBO and UMLS builds stream their text (names, synonyms, definitions, xrefs) to
sorted runs on disk instead of holding it in memory, so a 10x larger ontology costs far less than
10x the memory; what still grows with the input is one small record per concept (id, types,
parents, label). Each run is a fresh ``python -m flows.cli ingest`` process with ``PYTHONPATH``
set to one code tree; its peak RSS is sampled every 20 ms (process tree, psutil). Runs alternate
(code A, code B, per size, per round) so that machine load affects both alike; medians reported.

Generated inputs (seeded, fabricated: no HPO or UMLS content):
- OBO: ``--terms`` terms under one root, each with a name, a ~200-character definition, 5
  synonyms, 3 xrefs, one or two ``is_a`` parents among the 1,000 terms before it, every 50th term obsolete with a ``replaced_by``;
- UMLS: ``--concepts`` CUIs with 10 MRCONSO names each (2 of them in Spanish, filtered out), 2
  MRSTY types each, and 5 MRREL rows per concept.

    python benchmarks/ingest_ontology.py --code /path/to/old/checkout . --terms 20000 200000 \\
        --concepts 20000 200000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_triples import run_sampled  # noqa: E402


def _words(rng: random.Random, n: int) -> str:
    syll = ["ka", "lo", "ra", "mi", "ne", "to", "su", "vi", "pe", "do", "gan", "tro", "phy", "lis"]
    return " ".join("".join(rng.choice(syll) for _ in range(rng.randint(2, 4))) for _ in range(n))


def generate_obo(path: Path, terms: int, seed: int = 0) -> Path:
    if path.exists():
        return path
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write("format-version: 1.2\nontology: gen\n\n")
        for i in range(1, terms + 1):
            tid = f"GEN:{i:07d}"
            lines = [f"[Term]", f"id: {tid}", f"name: {_words(rng, 3)} {i}",
                     f'def: "{_words(rng, 28)}." [PMID:{rng.randint(1, 10**7)}]']
            lines += [f'synonym: "{_words(rng, 3)}" EXACT []' for _ in range(5)]
            lines += [f"xref: DB{k}:{rng.randint(1, 10**6)}" for k in range(3)]
            if i > 1 and i % 50 == 0:
                lines += ["is_obsolete: true", f"replaced_by: GEN:{rng.randint(1, i - 1):07d}"]
            elif i > 1:  # one root (term 1); parents among the 1,000 terms before, never obsolete ones
                parents = {rng.randint(max(1, i - 1000), i - 1) for _ in range(rng.randint(1, 2))}
                lines += [f"is_a: GEN:{p:07d}" for p in sorted({p if p % 50 else p - 1 for p in parents})]
            fh.write("\n".join(lines) + "\n\n")
    tmp.rename(path)
    return path


def generate_umls(directory: Path, concepts: int, seed: int = 0) -> Path:
    if (directory / "MRREL.RRF").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(directory / "MRCONSO.RRF", "w") as con, open(directory / "MRSTY.RRF", "w") as sty:
        for i in range(concepts):
            cui = f"C{i:07d}"
            for k in range(10):
                lat = "SPA" if k >= 8 else "ENG"
                pref = "Y" if k == 0 else "N"
                ts, stt = ("P", "PF") if k == 0 else ("S", "VO")
                code = f"{rng.randint(1, 10**6)}"
                con.write(f"{cui}|{lat}|{ts}|L{i}{k}|{stt}|S{i}{k}|{pref}|A{i}{k}||||SRC{k % 3}|PT|{code}|"
                          f"{_words(rng, 3)}|0|N|256|\n")
            for k in range(2):
                sty.write(f"{cui}|T{k:03d}|A1.2|Type {k}|AT{i}{k}|256|\n")
    with open(directory / "MRREL.RRF", "w") as rel:
        for i in range(concepts):
            for k in range(5):
                j = rng.randrange(concepts)
                rel.write(f"C{i:07d}|A{i}|CUI|RO|C{j:07d}|A{j}|CUI|rel_{k}|R{i}{k}||SRC|SRC|||N||\n")
    return directory


def run(source: Path, fmt: str, code: Path, root: Path) -> dict:
    sources = sorted(map(str, source.glob("*.RRF"))) if source.is_dir() else [str(source)]
    cmd = [sys.executable, "-m", "flows.cli", "ingest", *sources, "--format", fmt, "--name", "g", "--root",
           str(root), "--force"]
    env = {**os.environ, "PYTHONPATH": str(code)}
    err_path = root.parent / "stderr.txt"
    peak, status, usage, wall = run_sampled(cmd, code, root.parent / "stdout.txt", err_path, env)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ingest failed ({code}): {err_path.read_text()[-2000:]}")
    return {"peak_rss_mb": round(peak / 2**20, 1), "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", type=Path, nargs="+", default=[Path(".")], help="code trees to compare (PYTHONPATH)")
    ap.add_argument("--terms", type=int, nargs="*", default=[20_000, 200_000])
    ap.add_argument("--concepts", type=int, nargs="*", default=[20_000, 200_000])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/kalora-bench-ontology"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    inputs = [("obo", n, generate_obo(args.work / f"gen_{n}.obo", n)) for n in args.terms]
    inputs += [("umls", n, generate_umls(args.work / f"umls_{n}", n)) for n in args.concepts]
    results: dict[tuple, list[dict]] = {}
    for rnd in range(args.rounds):
        for fmt, n, source in inputs:
            for code in args.code:
                res = run(source, fmt, code.resolve(), args.work / "artifacts")
                res.update(format=fmt, size=n, code=str(code), round=rnd, load=round(os.getloadavg()[0], 1))
                results.setdefault((fmt, n, str(code)), []).append(res)
                print(json.dumps(res), flush=True)
    print("| input | size | code | peak RSS MiB (median) | wall s | CPU s |")
    print("|---|---:|---|---:|---:|---:|")
    for (fmt, n, code), rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("peak_rss_mb", "wall_s", "cpu_s")}
        print(f"| {fmt} | {n:,} | {code} | {med['peak_rss_mb']:.0f} | {med['wall_s']:.1f} | {med['cpu_s']:.1f} |")


if __name__ == "__main__":
    main()
