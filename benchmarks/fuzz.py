"""The long fuzzing run: every harness of tests/fuzz/harnesses.py for a fixed time, reporting
executions, executions per second, distinct outcomes, and every input that raised anything other
than one of the project's named errors.

    nice -n 10 .venv/bin/python benchmarks/fuzz.py --seconds 130            # 5 harnesses, ~11 min
    nice -n 10 .venv/bin/python benchmarks/fuzz.py --seconds 130 --save-corpus
    nice -n 10 .venv/bin/python benchmarks/fuzz.py --seconds 60 --engine atheris   # pip install atheris

Hypothesis generates the inputs (not coverage-guided): batches of ``--batch`` examples with a
fresh random seed each, until the harness's time is up. An execution is one input run through the
public entry point (``ingest`` into a scratch KG, or ``resolve`` of a build config), generation
included in the time. ``--save-corpus`` keeps, per harness, the smallest input seen for each distinct
outcome (and every failure) under tests/fuzz/corpus/<harness>/, with its outcome, as regression
fixtures for tests/fuzz/test_fuzz.py.

``--engine atheris`` drives the same hypothesis strategies from libFuzzer instead
(``fuzz_one_input``): coverage-guided, with the readers and the config loader instrumented; each
harness runs in a child process (libFuzzer exits when its time is up) and the figures are
libFuzzer's final stats (executed units, average exec/s, coverage edges).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.harnesses import CORPUS, HARNESSES, dump_case, outcome  # noqa: E402

MAX_KEPT, MAX_BYTES = 12, 2048


def _size(case) -> int:
    return sum(len(v) for v in case["files"].values())


def fuzz(name: str, seconds: float, batch: int) -> dict:
    """Run harness ``name`` for ``seconds``; executions, outcomes, smallest input per outcome, failures."""
    _, strategy = HARNESSES[name]
    state = {"runs": 0, "last": None, "smallest": {}, "outcomes": {}}

    @settings(max_examples=batch, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate, Phase.shrink])
    @given(strategy)
    def run(case):
        state["runs"] += 1
        state["last"] = case
        got = outcome(name, case)
        state["outcomes"][got] = state["outcomes"].get(got, 0) + 1
        if got not in state["smallest"] or _size(case) < _size(state["smallest"][got]):
            state["smallest"][got] = case

    failures = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            run()
        except Exception as exc:  # anything but a named error: a bug; the last run is the shrunk input
            failures.append({"error": f"{type(exc).__name__}: {exc}"[:300], "case": state["last"],
                             "where": traceback.format_exc(limit=-3)[-800:]})
    wall = time.perf_counter() - start
    return {"harness": name, "seconds": round(wall, 1), "executions": state["runs"],
            "exec_per_s": round(state["runs"] / wall, 1), "distinct_outcomes": len(state["outcomes"]),
            "failures": failures, "smallest": state["smallest"], "outcomes": state["outcomes"]}


def save_corpus(result: dict) -> int:
    """Keep the smallest input of each outcome (at most MAX_KEPT, each under MAX_BYTES) and every failure."""
    folder = CORPUS / result["harness"]
    folder.mkdir(parents=True, exist_ok=True)
    kept = 0
    ranked = sorted(result["smallest"].items(), key=lambda kv: (not kv[0].startswith("ok"), _size(kv[1])))
    for label, case in ranked[:MAX_KEPT]:
        if _size(case) > MAX_BYTES:
            continue
        text = dump_case(case)
        stem = f"{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')[:40]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        (folder / f"{stem}.json").write_text(text + "\n", encoding="utf-8")
        (folder / f"{stem}.outcome").write_text(label + "\n", encoding="utf-8")
        kept += 1
    for failure in result["failures"]:
        text = dump_case(failure["case"])
        (folder / f"failure-{hashlib.sha256(text.encode()).hexdigest()[:8]}.json").write_text(text + "\n", encoding="utf-8")
        kept += 1
    return kept


_INSTRUMENTED = ["pipelines", "flows.config"]


def atheris_child(name: str, seconds: float, artifacts: Path) -> None:
    """Run harness ``name`` under libFuzzer for ``seconds`` (this process exits at the end)."""
    import atheris

    with atheris.instrument_imports(include=_INSTRUMENTED):
        import flows.config  # noqa: F401
        import pipelines.ingest  # noqa: F401
        from pipelines import obo, triples, umls, wikidata, wikidata_stream  # noqa: F401
    _, strategy = HARNESSES[name]

    runs = [0]

    @settings(database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case):
        outcome(name, case)
        runs[0] += 1
        if runs[0] % 20 == 0:  # libFuzzer ends the process without running Python's exit hooks
            (artifacts / "runs").write_text(str(runs[0]))

    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-print_final_stats=1", "-rss_limit_mb=4096",
                   f"-artifact_prefix={artifacts}/", "-timeout=60"], run.hypothesis.fuzz_one_input)
    atheris.Fuzz()


def atheris_run(name: str, seconds: float) -> dict:
    import subprocess
    import tempfile

    artifacts = Path(tempfile.mkdtemp(prefix=f"kalora-atheris-{name}-"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--atheris-child", name, "--seconds", str(seconds),
                           "--json", str(artifacts)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", proc.stderr))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", proc.stderr)
    crashes = sorted(p.name for p in artifacts.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    runs = int((artifacts / "runs").read_text()) if (artifacts / "runs").exists() else 0
    return {"harness": name, "seconds": round(wall, 1), "units": int(stats.get("number_of_executed_units", 0)),
            "exec_per_s": int(stats.get("average_exec_per_sec", 0)), "executions": runs,
            "coverage_edges": int(cov[-1][0]) if cov else None,
            "features": int(cov[-1][1]) if cov else None, "failures": crashes, "returncode": proc.returncode,
            "tail": proc.stderr[-1500:] if proc.returncode else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=130.0, help="per harness")
    ap.add_argument("--batch", type=int, default=200, help="examples per hypothesis run (a fresh seed each)")
    ap.add_argument("--harness", action="append", choices=sorted(HARNESSES), help="default: all")
    ap.add_argument("--save-corpus", action="store_true")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    ap.add_argument("--atheris-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    if args.atheris_child:
        atheris_child(args.atheris_child, args.seconds, args.json)
        return
    if args.engine == "atheris":
        return report_atheris(args)
    results = []
    print("| harness | seconds | executions | exec/s | distinct outcomes | non-named exceptions |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.harness or sorted(HARNESSES):
        r = fuzz(name, args.seconds, args.batch)
        if args.save_corpus:
            r["kept"] = save_corpus(r)
        print(f"| {name} | {r['seconds']} | {r['executions']} | {r['exec_per_s']} | {r['distinct_outcomes']} | "
              f"{len(r['failures'])} |", flush=True)
        for f in r["failures"]:
            print(f"  FAILURE {f['error']}\n{f['where']}", flush=True)
        results.append({k: v for k, v in r.items() if k not in ("smallest",)}
                       | {"failures": [{"error": f["error"]} for f in r["failures"]]})
    total_runs, total_s = sum(r["executions"] for r in results), sum(r["seconds"] for r in results)
    print(f"total: {total_runs} executions in {total_s:.0f} s, "
          f"{sum(len(r['failures']) for r in results)} non-named exceptions")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


def report_atheris(args) -> None:
    # units: libFuzzer's inputs (hypothesis turns some buffers away before the harness runs);
    # executions: harness runs (inputs that reached the reader or the config loader, to within 20)
    print("| harness (atheris) | seconds | libFuzzer units | units/s | harness executions | executions/s | coverage edges | crashes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for name in args.harness or sorted(HARNESSES):
        r = atheris_run(name, args.seconds)
        results.append(r)
        print(f"| {name} | {r['seconds']} | {r['units']} | {r['exec_per_s']} | {r['executions']} | "
              f"{r['executions'] / r['seconds']:.1f} | {r['coverage_edges']} | {len(r['failures'])} |", flush=True)
        if r["returncode"] and not r["failures"]:
            print(f"  child exited {r['returncode']}:\n{r['tail']}", flush=True)
    print(f"total: {sum(r['executions'] for r in results)} executions in {sum(r['seconds'] for r in results):.0f} s, "
          f"{sum(len(r['failures']) for r in results)} crashes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
