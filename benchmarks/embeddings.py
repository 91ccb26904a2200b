"""Filtered link-prediction MRR of kalora-kg's tuned TransE/ComplEx configs next to PyKEEN's
defaults, on the datasets PyKEEN ships (no download), measured in one run.

    .venv/bin/python benchmarks/embeddings.py                       # UMLS, Kinships, Nations
    .venv/bin/python benchmarks/embeddings.py --datasets umls --models complex

"ours" trains with kg.training.train_model (the code `kalora embed` runs: 1-N scoring with
reciprocal relations, early stopping on validation MRR, best epoch restored); "pykeen defaults" is
`pipeline(dataset=..., model=..., epochs=50)`. Both are scored by the same filtered, both-sides,
realistic-rank evaluation on the full test split (kg.evaluate, equal to PyKEEN's evaluator).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from kg.config import MODEL_CONFIGS
from kg.evaluate import filtered_rank_metrics
from kg.training import train_model

TARGETS = {("umls", "complex"): 0.80, ("kinships", "complex"): 0.75, ("nations", "complex"): 0.65,
           ("umls", "transe"): 0.70}


def ours(dataset, model: str) -> tuple[float, float, int]:
    from pykeen.triples import CoreTriplesFactory

    config = MODEL_CONFIGS[model](valid_max_triples=None, eval_max_triples=None)
    tr = dataset.training.mapped_triples
    factory = CoreTriplesFactory(tr, num_entities=dataset.num_entities, num_relations=dataset.num_relations,
                                 create_inverse_triples=config.inverse_triples)
    known = torch.cat([tr, dataset.validation.mapped_triples, dataset.testing.mapped_triples]).numpy()
    start = time.perf_counter()
    trained, state, _ = train_model(config, factory, dataset.validation.mapped_triples.numpy(), known,
                                    dataset.num_relations, None, progress=False)
    seconds = time.perf_counter() - start
    mrr = filtered_rank_metrics(trained, dataset.testing.mapped_triples.numpy(), known, dataset.num_relations)["mrr"]
    return mrr, seconds, state.best_epoch


def pykeen_defaults(dataset_name: str, dataset, model: str) -> tuple[float, float]:
    from pykeen.pipeline import pipeline

    start = time.perf_counter()
    result = pipeline(dataset=dataset_name, model=model, epochs=50, random_seed=0, device="cpu",
                      training_kwargs={"use_tqdm": False}, evaluation_kwargs={"use_tqdm": False})
    seconds = time.perf_counter() - start
    known = torch.cat([dataset.training.mapped_triples, dataset.validation.mapped_triples,
                       dataset.testing.mapped_triples]).numpy()
    mrr = filtered_rank_metrics(result.model, dataset.testing.mapped_triples.numpy(), known, dataset.num_relations)["mrr"]
    return mrr, seconds


def main() -> None:
    from pykeen.datasets import get_dataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["umls", "kinships", "nations"])
    ap.add_argument("--models", nargs="+", default=["complex", "transe"])
    ap.add_argument("--skip-pykeen", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print("| dataset | model | ours MRR | ours s (best epoch) | target | PyKEEN defaults MRR | PyKEEN s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets:
        dataset = get_dataset(dataset=name)
        for model in args.models:
            mrr, secs, best = ours(dataset, model)
            ref = ("-", "-") if args.skip_pykeen else tuple(f"{x:.3f}" if i == 0 else f"{x:.0f}"
                                                           for i, x in enumerate(pykeen_defaults(name, dataset, model)))
            target = TARGETS.get((name, model))
            print(f"| {name} | {model} | {mrr:.3f} | {secs:.0f} ({best}) | {'≥ %.2f' % target if target else '-'} | "
                  f"{ref[0]} | {ref[1]} |", flush=True)


if __name__ == "__main__":
    main()
