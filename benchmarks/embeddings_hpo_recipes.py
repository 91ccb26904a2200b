"""One shared-negative recipe on the HPO split, trained in-process (no export), for iterating on
recipes (issue 14): per-epoch loss and wall time, then filtered MRR on the seeded 5,000-triple
sample of the test split that `kalora embed` evaluates by default.

    .venv/bin/python -m flows.cli ingest hpo --root /tmp/a2 --name hpo
    .venv/bin/python benchmarks/embeddings_hpo_recipes.py --root /tmp/a2 \
        '{"model": "complex", "num_epochs": 3, "slot_bias": true}' [--budget 1000]

The JSON holds EmbeddingConfig fields (training_loop is "shared"). ``--budget`` stops after the
first epoch that ends past that many seconds (the row then says how many epochs ran).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from kg.config import EmbeddingConfig
from kg.embeddings import ensure_splits
from kg.evaluate import filtered_rank_metrics, with_baseline
from kg.ids import load_relation_map
from kg.shared_negatives import BilinearModel, QueryIndex, make_optimizer, train_epoch
from pipelines.artifacts import ArtifactLayout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", help="JSON object of EmbeddingConfig fields")
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--name", default="hpo")
    ap.add_argument("--budget", type=float, default=1e9)
    args = ap.parse_args()
    layout = ArtifactLayout(args.root, args.name)
    splits = {k: v.astype(np.int64) - 1 for k, v in ensure_splits(layout).items()}
    labels = list(load_relation_map(layout).ids)
    n, r = int(max(splits["train"][:, [0, 2]].max(), splits["test"][:, [0, 2]].max())) + 1, len(labels)
    cfg = EmbeddingConfig(**{"training_loop": "shared", **json.loads(args.config)})
    known = np.concatenate([splits["train"], splits["valid"], splits["test"]])
    test = splits["test"]
    test = test[np.sort(np.random.default_rng(cfg.seed).choice(len(test), cfg.eval_max_triples, replace=False))]
    start, cpu = time.time(), time.process_time()
    index = QueryIndex(splits["train"], n, r)
    model = BilinearModel(n, r, cfg.embedding_dim, cfg.model, cfg.init_scale, cfg.seed)
    if cfg.slot_bias:
        model.use_slot_bias(index)
    optimizer = make_optimizer(cfg, model)
    for epoch in range(cfg.num_epochs):
        loss = train_epoch(model, optimizer, index, cfg, np.random.default_rng([cfg.seed, epoch]))
        print(f"epoch {epoch + 1} loss {loss:.4f} at {time.time() - start:.1f} s", flush=True)
        if time.time() - start > args.budget:
            break
    train_s, train_cpu = time.time() - start, time.process_time() - cpu
    t0 = time.time()
    m = filtered_rank_metrics(model, test, known, r, batch_size=cfg.eval_batch_size, relation_labels=labels)
    eval_s = time.time() - t0
    m = with_baseline(m, splits["train"], test, known, r, labels, cfg.eval_batch_size)
    per = sorted(m["per_relation"].items(), key=lambda kv: -kv[1]["count"])[:2]
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"| {args.config} | {epoch + 1} | {m['mrr']:.3f} | {m['hits_at_10']:.3f} | {m['baseline']['mrr']:.3f} | "
          f"{m['baseline_ratio']:.2f} | " + " / ".join(f"{k} {v['mrr']:.3f}" for k, v in per)
          + f" | {train_s:.0f} | {train_cpu:.0f} | {eval_s:.0f} |", flush=True)


if __name__ == "__main__":
    main()
