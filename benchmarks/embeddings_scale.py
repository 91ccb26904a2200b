"""The shared-negative recipe on generated power-law graphs: training triples/s per epoch, peak RSS,
evaluation time, and the memory estimate printed before training against the measured peak.

    .venv/bin/python benchmarks/embeddings_scale.py --sizes 100000:1000000 1000000:10000000
    .venv/bin/python benchmarks/embeddings_scale.py --step-times --sizes 30000:300000 100000:1000000 1000000:1000000

Each size runs in a fresh process (peak RSS is a per-process high-water mark). The graph comes from
``embeddings_ddp.power_law_triples`` (Zipf-like degrees, `--relations` relations, seeded); 1% of the
rows are held out as the test split. Training: ``EmbeddingConfig()`` (the default recipe) with
`--epochs` epochs and the flags given; evaluation: the filtered both-sides ranks of `--eval`
held-out triples over every entity (kg.evaluate). "RSS growth" is the peak minus the RSS measured
after the graph was generated, which is what the estimate (parameters, optimizer state, slot
tables, one batch) covers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import psutil


def one_size(entities: int, triples: int, args) -> dict:
    import torch

    from embeddings_ddp import power_law_triples
    from kg.config import EmbeddingConfig
    from kg.evaluate import filtered_rank_metrics
    from kg.shared_negatives import estimate_memory_bytes, train_shared

    rows = power_law_triples(entities, args.relations, triples, seed=0).numpy()
    rng = np.random.default_rng(0)
    held = rng.random(len(rows)) < 0.01
    train, test = rows[~held], rows[held][: args.eval]
    config = EmbeddingConfig(num_epochs=args.epochs, **json.loads(args.config))
    rss_before = psutil.Process().memory_info().rss
    queries = len(np.unique(np.concatenate([train[:, 0] * 2 * args.relations + train[:, 1],
                                            train[:, 2] * 2 * args.relations + train[:, 1] + args.relations])))
    estimate = estimate_memory_bytes(config, entities, args.relations, config.batch_size or 2048,
                                     2 * len(train) / queries)
    start, cpu = time.perf_counter(), time.process_time()
    model, state, run = train_shared(config, train, entities, args.relations, None, progress=False)
    train_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    metrics = filtered_rank_metrics(model, test, rows, args.relations, batch_size=64)
    eval_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"entities": entities, "train_triples": int(len(train)), "epochs": state.epoch,
            "sparse_updates": run["sparse_updates"], "setup_s": run["setup_seconds"],
            "epoch_s": run["epoch_seconds"],
            "triples_per_s_per_epoch": round(len(train) * state.epoch / sum(run["epoch_seconds"])),
            "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu, 1),
            "eval_triples": int(len(test)), "eval_s": round(eval_s, 1), "mrr": round(metrics["mrr"], 4),
            "estimate_gib": round(estimate / 2**30, 3), "rss_growth_gib": round((peak - rss_before) / 2**30, 3),
            "peak_rss_gib": round(peak / 2**30, 3), "torch_threads": torch.get_num_threads()}


def step_times(entities: int, triples: int, args) -> dict:
    """Median milliseconds of one optimizer step (same batches) with sparse and with dense updates:
    the per-step term that a dense update adds grows with the entity table."""
    import statistics

    import torch

    from embeddings_ddp import power_law_triples
    from kg.config import EmbeddingConfig
    from kg.shared_negatives import batch_loss, build, make_optimizer

    rows = power_law_triples(entities, args.relations, triples, seed=0).numpy()
    out = {"entities": entities, "train_triples": int(len(rows))}
    for sparse in (True, False):
        config = EmbeddingConfig(sparse_updates=sparse, rule_confidence=0, **json.loads(args.config))
        index, model, _ = build(config, rows, entities, args.relations)
        optimizer = make_optimizer(config, model)
        batches = index.batches(config.batch_size or 2048, np.random.default_rng(0))[: args.steps + 5]
        times = []
        for i, queries in enumerate(batches):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            batch_loss(model, index, queries, config, np.random.default_rng(i)).backward()
            optimizer.step()
            if i >= 5:
                times.append(1000 * (time.perf_counter() - start))
        out["sparse_ms" if sparse else "dense_ms"] = round(statistics.median(times), 1)
        out["queries_per_epoch"] = len(index)
    out["steps_per_epoch"] = -(-out["queries_per_epoch"] // (EmbeddingConfig().batch_size or 2048))
    out["torch_threads"] = torch.get_num_threads()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["100000:1000000", "1000000:10000000"],
                    help="ENTITIES:TRIPLES, one process each")
    ap.add_argument("--relations", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--eval", type=int, default=1000)
    ap.add_argument("--config", default="{}", help="JSON EmbeddingConfig fields over the default")
    ap.add_argument("--step-times", action="store_true",
                    help="instead: median ms per optimizer step, sparse vs dense updates, at each size")
    ap.add_argument("--steps", type=int, default=30, help="--step-times: steps timed per arm")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        entities, triples = map(int, args.one.split(":"))
        print(json.dumps(step_times(entities, triples, args) if args.step_times else one_size(entities, triples, args)),
              flush=True)
        return
    print(f"load average {os.getloadavg()}")
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", size, "--relations", str(args.relations), "--epochs",
               str(args.epochs), "--eval", str(args.eval), "--config", args.config, "--steps", str(args.steps)]
        cmd += ["--step-times"] if args.step_times else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr[-2000:], f"(load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
