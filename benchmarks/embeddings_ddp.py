"""Embeddings trained by 1 vs 2 processes (PyTorch Lightning DDP over gloo, `engine: lightning`)
on a generated power-law graph, side by side in one run (1, 2, 1, 2, ...).

    .venv/bin/python benchmarks/embeddings_ddp.py --entities 1000000 --triples 2000000 --repeats 2

The graph: `--entities` entities, `--relations` relations, `--triples` triples whose heads and tails
are drawn from a Zipf-like law (the degree skew of real KGs: a few hubs, a long tail), seeded.
Training: sLCWA TransE (the loop that scales: its cost grows with triples, not entities × triples),
`--dim`, one epoch, global batch `--batch` (each of N processes takes batch / N a step, so both arms
take the same optimiser steps). Each arm is a full `train_with_lightning` call: process start-up
(spawn, imports, model broadcast) is included, as a user pays it. Prints triples/s per arm, the
median of each, and the median of the paired ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch


def power_law_triples(entities: int, relations: int, triples: int, seed: int = 0, exponent: float = 1.1) -> torch.Tensor:
    """``triples`` distinct-ish (head, relation, tail) rows with Zipf-distributed entity degrees."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, entities + 1) ** exponent
    cdf = np.cumsum(weights / weights.sum())
    ranks = rng.permutation(entities)  # hubs scattered over the id space

    def draw(n: int) -> np.ndarray:
        return ranks[np.minimum(np.searchsorted(cdf, rng.random(n)), entities - 1)]

    rows = np.stack([draw(triples), rng.integers(0, relations, triples), draw(triples)], axis=1)
    return torch.as_tensor(np.unique(rows, axis=0), dtype=torch.long)


def run(devices: int, triples: torch.Tensor, args) -> dict:
    from pykeen.triples import CoreTriplesFactory

    from kg.config import EmbeddingConfig
    from kg.distributed import train_with_lightning

    cfg = EmbeddingConfig(model="transe", engine="lightning", accelerator="cpu", devices=devices,
                          training_loop="slcwa", embedding_dim=args.dim, num_epochs=1, batch_size=args.batch,
                          num_negs_per_pos=args.negatives, seed=args.seed)
    factory = CoreTriplesFactory(triples, num_entities=args.entities, num_relations=args.relations,
                                 create_inverse_triples=False)
    empty = triples[:0]
    start = time.perf_counter()
    _, steps = train_with_lightning(cfg, factory, empty, empty)
    seconds = time.perf_counter() - start
    return {"processes": devices, "seconds": round(seconds, 2), "steps": steps,
            "triples_per_s": round(len(triples) / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--relations", type=int, default=50)
    ap.add_argument("--triples", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    triples = power_law_triples(args.entities, args.relations, args.triples, args.seed)
    print(f"graph: {args.entities:,} entities, {len(triples):,} distinct triples "
          f"({time.perf_counter() - start:.1f} s to generate); {os.cpu_count()} cores; load {os.getloadavg()}")
    rows = []
    for repeat in range(args.repeats):
        for devices in (1, 2):
            rows.append({"repeat": repeat, **run(devices, triples, args)})
            print(json.dumps(rows[-1]), flush=True)
    one = [r["triples_per_s"] for r in rows if r["processes"] == 1]
    two = [r["triples_per_s"] for r in rows if r["processes"] == 2]
    ratios = [b / a for a, b in zip(one, two)]
    print(json.dumps({"median_triples_per_s": {"1": statistics.median(one), "2": statistics.median(two)},
                      "speedup_median_of_pairs": round(statistics.median(ratios), 3),
                      "pairs": [round(r, 3) for r in ratios], "load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
