"""Loopback load test of ``kalora serve``: documents/s and p50 / p99 request latency at 1, 4 and 16
concurrent clients.

    .venv/bin/python benchmarks/serve_load.py --root artifacts --name hpo [--requests 96] [--seconds 60]

Starts ``kalora serve`` on a free 127.0.0.1 port (the pipeline loaded once), waits for
``/health``, then for each concurrency level C runs C client threads (``httpx``, one connection
each) that post one document per ``POST /link`` request until ``--requests`` requests have been
answered or ``--seconds`` have passed, whichever comes first (bounded in count and time). Documents:
the paragraphs of the JAX case reports (``../shared/data/jax/txt``, real clinical running text),
in a seeded order. Every answer must be 200; the server's own batch counter (``/health``) shows how
many ``nlp.pipe`` calls the requests were merged into.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
JAX = ROOT.parent / "shared" / "data" / "jax" / "txt"


def documents(seed: int = 0) -> list[str]:
    paragraphs = []
    for f in sorted(JAX.glob("*.txt")):
        paragraphs += [p.strip() for p in f.read_text(encoding="utf-8").split("\n") if len(p.strip()) >= 200]
    order = np.random.default_rng(seed).permutation(len(paragraphs))
    return [paragraphs[i] for i in order]


def start_server(root: Path, name: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--root", str(root), "--name", name,
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                print(f"server ready in {time.perf_counter() - start:.1f} s (load + first request)", flush=True)
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"kalora serve exited: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)


def level(base: str, docs: list[str], clients: int, requests: int, seconds: float) -> dict:
    latencies: list[float] = []
    chars = [0]
    lock = threading.Lock()
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter)
                if i >= requests:
                    return
                text = docs[i % len(docs)]
                t0 = time.perf_counter()
                r = http.post("/link", json={"text": text})
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    raise SystemExit(f"request {i}: HTTP {r.status_code}: {r.text[:300]}")
                with lock:
                    latencies.append(dt)
                    chars[0] += len(text)

    before = httpx.get(f"{base}/health").json()["batches"]
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    batches = httpx.get(f"{base}/health").json()["batches"] - before
    lat = sorted(latencies)
    return {"clients": clients, "documents": len(lat), "seconds": round(wall, 2), "docs_per_s": round(len(lat) / wall, 2),
            "p50_ms": round(1000 * statistics.median(lat), 1),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
            "mean_chars": round(chars[0] / max(len(lat), 1)), "pipe_batches": batches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--name", default="hpo")
    ap.add_argument("--requests", type=int, default=96, help="requests per concurrency level (at most)")
    ap.add_argument("--seconds", type=float, default=60, help="time per concurrency level (at most)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()
    docs = documents()
    print(f"{len(docs)} JAX paragraphs; load average {os.getloadavg()}", flush=True)
    proc, base = start_server(args.root.resolve(), args.name)
    try:
        level(base, docs, 1, 4, 30)  # warm-up: first-call setup outside the figures
        print("| concurrent clients | requests answered | docs/s | p50 ms | p99 ms | nlp.pipe batches | chars/doc |")
        print("|---|---|---|---|---|---|---|")
        for c in args.clients:
            r = level(base, docs, c, args.requests, args.seconds)
            print(f"| {c} | {r['documents']} in {r['seconds']} s | {r['docs_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                  f"{r['pipe_batches']} | {r['mean_chars']} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
