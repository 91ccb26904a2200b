"""Stage 3 (DPO) on a finished build: does the learning rate / step count / beta move held-out preferences?

    .venv/bin/python benchmarks/dpo_stage3_sweep.py --root artifacts --name hpo

Copies ``<root>/<name>`` to a temporary directory (the build itself is not touched), then trains
stage 3 from the saved stage 2 once per setting (the reference log-probs are computed once and
reused) and prints, per setting, on the held-out (``valid``) alignment pairs: the share where the
reference (stage 2) and the policy give the chosen answer the higher summed log-probability, and
DPO's reward accuracy (the policy moved the chosen answer up relative to the rejected one,
against the reference); on the training pairs, the DPO loss first → last. Also printed: how
often the chosen answer is the shorter string (summed log-probabilities favour shorter answers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

SETTINGS = [(1e-4, 30, 0.1), (1e-3, 30, 0.1), (5e-3, 30, 0.1), (1e-3, 120, 0.1), (5e-3, 120, 0.1),
            (1e-3, 120, 0.5), (5e-3, 120, 0.5)]


def main() -> None:
    import pyarrow.parquet as pq

    from model.config import STAGE_DEFAULTS
    from model.trainer import train_stage3
    from pipelines.artifacts import ArtifactLayout

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--name", default="hpo")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dpo-sweep-"))
    shutil.copytree(args.root / args.name, tmp / args.name)
    layout = ArtifactLayout(tmp, args.name)
    rows = [r for f in sorted((layout.shards / "alignment").glob("part-*.parquet"))
            for r in pq.read_table(f, columns=["chosen", "rejected", "split"]).to_pylist()]
    for split in ("train", "valid"):
        rs = [r for r in rows if r["split"] == split]
        if rs:
            print(f"{split}: {len(rs)} pairs, chosen shorter in {sum(len(r['chosen']) < len(r['rejected']) for r in rs) / len(rs):.3f}")
    try:
        for lr, steps, beta in SETTINGS:
            start = time.perf_counter()
            cfg = replace(STAGE_DEFAULTS["stage3"], learning_rate=lr, max_steps=steps, dpo_beta=beta,
                          warmup_steps=max(2, steps // 15))
            m = train_stage3(layout, cfg)["metrics"]
            print(json.dumps({"lr": lr, "steps": steps, "beta": beta,
                              "reference_prefers_chosen": round(m["reference_prefers_chosen"], 3),
                              "policy_prefers_chosen": round(m["policy_prefers_chosen"], 3),
                              "eval_reward_accuracy": round(m["eval_reward_accuracy"], 3),
                              "dpo_loss": [round(m["first"]["dpo_loss"], 3), round(m["last"]["dpo_loss"], 3)],
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
