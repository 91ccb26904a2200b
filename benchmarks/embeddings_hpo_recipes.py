"""Shared-negative recipes on the HPO split, trained in one process on one loaded split (no export),
beside the popularity baseline, the old demo TransE and PyKEEN's ``pipeline()`` defaults: the
issue-14 table, every row scored by the same filtered evaluation on the same seeded 5,000 test
triples that `kalora embed` evaluates by default.

    .venv/bin/python -m flows.cli ingest hpo --root /tmp/a2 --name hpo     # or any finished demo root
    .venv/bin/python benchmarks/embeddings_hpo_recipes.py --root /tmp/a2 \\
        'default={}' 'typed={"type_constraints": true, "type_negative_fraction": 1.0}' \\
        [--old-demo] [--pykeen-epochs 5] [--budget 1000]

Each recipe is ``name=JSON`` (EmbeddingConfig fields over the default). ``--budget`` stops a recipe
after the first epoch that ends past that many seconds (the row then says how many epochs ran).
Columns: train wall and process CPU seconds (on a busy machine CPU / 2 estimates a quiet 2-core
wall time), eval wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kg.config import EmbeddingConfig
from kg.embeddings import ensure_splits, load_entity_types, train_embeddings
from kg.evaluate import filtered_rank_metrics, with_baseline
from kg.ids import load_relation_map
from kg.rules import mine_path_rules
from kg.shared_negatives import build, make_optimizer, train_epoch
from pipelines.artifacts import ArtifactLayout

RULE_CONFIDENCE = 0.8  # the "not rule-implied" column: test triples no rule this confident implies
OLD_DEMO = {"model": "transe", "training_loop": "slcwa", "inverse_triples": False, "learning_rate": 0.01,
            "embedding_dim": 64, "num_epochs": 5, "batch_size": 4096, "eval_max_triples": 5000}


def _row(name: str, epochs, m: dict, plain: dict, train_s: float, cpu_s: float, eval_s: float) -> str:
    per = sorted(m["per_relation"].items(), key=lambda kv: -kv[1]["count"])[:2]
    return (f"| {name} | {epochs} | {m['mrr']:.3f} | {m['hits_at_10']:.3f} | {m['mrr_head']:.3f} / "
            f"{m['mrr_tail']:.3f} | " + " | ".join(f"{v['mrr']:.3f}" for _, v in per)
            + f" | {plain['mrr']:.3f} | {train_s:.0f} / {cpu_s:.0f} | {eval_s:.0f} |")


def _pykeen_model(config: EmbeddingConfig, model_file: Path, num_entities: int, num_relations: int):
    """The PyKEEN model `kalora embed` exported to ``model_file``, rebuilt to be evaluated again."""
    from pykeen.triples import CoreTriplesFactory
    from safetensors.torch import load_file

    from kg.training import build_model

    factory = CoreTriplesFactory(torch.zeros((1, 3), dtype=torch.long), num_entities=num_entities,
                                 num_relations=num_relations, create_inverse_triples=config.inverse_triples)
    model = build_model(config, factory)
    model.load_state_dict(load_file(str(model_file)))
    return model


class Bench:
    """The loaded split, its seeded test sample and the relation labels."""

    def __init__(self, layout: ArtifactLayout) -> None:
        self.layout = layout
        self.splits = {k: v.astype(np.int64) - 1 for k, v in ensure_splits(layout).items()}
        self.labels = list(load_relation_map(layout).ids)
        self.n = int(max(s[:, [0, 2]].max() for s in self.splits.values())) + 1
        self.known = np.concatenate([self.splits["train"], self.splits["valid"], self.splits["test"]])
        test = self.splits["test"]
        self.test = test[np.sort(np.random.default_rng(42).choice(len(test), 5000, replace=False))]
        self.types = load_entity_types(layout, self.n)
        _, implied = mine_path_rules(self.splits["train"], self.n, len(self.labels), RULE_CONFIDENCE)
        key = lambda a: (a[:, 0] * len(self.labels) + a[:, 1]) * self.n + a[:, 2]  # noqa: E731
        self.plain = self.test[~np.isin(key(self.test), key(implied))]  # test triples no rule implies

    def evaluate(self, model) -> tuple[dict, dict, float]:
        """Metrics on the sample, on its part that no rule implies, and the seconds of the first."""
        start = time.time()
        m = filtered_rank_metrics(model, self.test, self.known, len(self.labels), relation_labels=self.labels)
        seconds = time.time() - start
        return m, filtered_rank_metrics(model, self.plain, self.known, len(self.labels)), seconds

    def recipe(self, name: str, cfg: EmbeddingConfig, budget: float) -> str:
        start, cpu = time.time(), time.process_time()
        index, model, _ = build(cfg, self.splits["train"], self.n, len(self.labels), self.types, self.labels)
        optimizer = make_optimizer(cfg, model)
        for epoch in range(cfg.num_epochs):
            loss = train_epoch(model, optimizer, index, cfg, np.random.default_rng([cfg.seed, epoch]))
            print(f"  {name}: epoch {epoch + 1} loss {loss:.4f} at {time.time() - start:.1f} s", flush=True)
            if time.time() - start > budget:
                break
        train_s, cpu_s = time.time() - start, time.process_time() - cpu
        m, plain, eval_s = self.evaluate(model)
        return _row(name, epoch + 1, m, plain, train_s, cpu_s, eval_s)

    def baseline(self) -> str:
        start = time.time()
        m = with_baseline({"mrr": 0.0, "num_entities": self.n}, self.splits["train"], self.test, self.known,
                          len(self.labels), self.labels)["baseline"]
        seconds = time.time() - start
        plain = with_baseline({"mrr": 0.0, "num_entities": self.n}, self.splits["train"], self.plain, self.known,
                              len(self.labels))["baseline"]
        return _row("popularity baseline (no learning)", "–", m, plain, 0, 0, seconds)

    def old_demo(self) -> str:
        """The old demo's TransE through `kalora embed`'s code path, on a copy of the KG."""
        with tempfile.TemporaryDirectory() as tmp:
            layout = ArtifactLayout(Path(tmp), self.layout.name)
            shutil.copytree(self.layout.kg, layout.kg)
            cpu = time.process_time()
            config = EmbeddingConfig(**OLD_DEMO)
            m = train_embeddings(layout, config, progress=False)["metrics"]
            model_file = layout.embeddings("transe") / "model.safetensors"
            plain = self.evaluate(_pykeen_model(config, model_file, self.n, len(self.labels)))[1]
        return _row("old demo: PyKEEN sLCWA TransE dim 64, lr 0.01, batch 4096", m["epochs"], m, plain,
                    m["train_seconds"], m["train_cpu_seconds"], m["eval_seconds"])

    def pykeen_defaults(self, epochs: int) -> str:
        """``pipeline(model="TransE")`` with every default but the epochs; PyKEEN's own test pass
        runs on a one-triple placeholder and the row is scored by our evaluator like the others."""
        from pykeen.pipeline import pipeline
        from pykeen.triples import CoreTriplesFactory

        n, r = self.n, len(self.labels)
        train = CoreTriplesFactory(torch.as_tensor(self.splits["train"]), num_entities=n, num_relations=r)
        probe = CoreTriplesFactory(torch.as_tensor(self.test[:1]), num_entities=n, num_relations=r)
        start, cpu = time.time(), time.process_time()
        result = pipeline(training=train, testing=probe, model="TransE", epochs=epochs, random_seed=42, device="cpu",
                          training_kwargs={"use_tqdm": False}, evaluation_kwargs={"use_tqdm": False})
        train_s, cpu_s = time.time() - start, time.process_time() - cpu
        m, plain, eval_s = self.evaluate(result.model)
        return _row("PyKEEN `pipeline(model=\"TransE\")` defaults", epochs, m, plain, train_s, cpu_s, eval_s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipes", nargs="*", help="name=JSON object of EmbeddingConfig fields")
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--name", default="hpo")
    ap.add_argument("--budget", type=float, default=1e9)
    ap.add_argument("--old-demo", action="store_true", help="add the old demo TransE row")
    ap.add_argument("--pykeen-epochs", type=int, default=0, help="add PyKEEN's pipeline() defaults row")
    args = ap.parse_args()
    bench = Bench(ArtifactLayout(args.root, args.name))
    print(f"load average at start {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    print("| recipe | epochs | MRR | Hits@10 | MRR head / tail | gene→phenotype | has_phenotype | "
          "MRR, test triples no rule implies | train s wall / CPU | eval s |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = [bench.baseline()]
    print(rows[-1], flush=True)
    for spec in args.recipes:
        name, _, data = spec.partition("=")
        rows.append(bench.recipe(name, EmbeddingConfig(**json.loads(data or "{}")), args.budget))
        print(rows[-1], f"(load {os.getloadavg()[0]:.1f})", flush=True)
    if args.old_demo:
        print(bench.old_demo(), f"(load {os.getloadavg()[0]:.1f})", flush=True)
    if args.pykeen_epochs:
        print(bench.pykeen_defaults(args.pykeen_epochs), f"(load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
