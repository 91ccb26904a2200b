"""The linker figure a build reports: recall of the built linker's ``candidates()`` on a seeded
sample of the KG's own synonyms, abbreviations and other non-label names.

The sampled names are in the linker's alias table, so this measures ranking among entities sharing
a name plus normalisation, not generalisation to unseen wording; ``benchmarks/linker_hpo.py``
holds synonyms out for that. It is cheap (one ``candidates()`` call) and catches a linker that was
built from the wrong tables or lost its aliases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipelines.artifacts import ArtifactLayout, Timer, record_stage


@dataclass(frozen=True)
class AliasRecallConfig:
    sample: int = 500   # non-label aliases linked (a seeded sample beyond this)
    k: int = 10         # recall@k is reported next to recall@1
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def linker_alias_recall(layout: ArtifactLayout, config: AliasRecallConfig = AliasRecallConfig()) -> dict[str, Any]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from linking.build import load_linker

    sample, k, seed = config.sample, config.k, config.seed
    with Timer() as timer:
        aliases = pq.read_table(layout.require(layout.aliases, "ingest"), columns=["alias", "entity_id", "kind"])
        aliases = aliases.filter(pc.not_equal(aliases.column("kind"), "label"))
        rows = np.arange(aliases.num_rows)
        if len(rows) > sample:
            rows = np.sort(np.random.default_rng(seed).choice(len(rows), sample, replace=False))
        mentions = [aliases.column("alias")[int(i)].as_py() for i in rows]
        gold = [aliases.column("entity_id")[int(i)].as_py() for i in rows]
        linker = load_linker(layout).get_pipe("kg_linker")
        ranked = linker.candidates(mentions, k) if mentions else []
        found = [[linker.entity_ids[r.entity_index - 1] for r in rs] for rs in ranked]
    hits1 = sum(bool(f) and f[0] == g for f, g in zip(found, gold))
    hitsk = sum(g in f for f, g in zip(found, gold))
    n = len(mentions)
    metrics = {"alias_recall_at_1": hits1 / n if n else None, f"alias_recall_at_{k}": hitsk / n if n else None,
               "queries": n}
    return record_stage(layout, "eval:linker", parameters=config.to_dict(),
                        counts={"queries": n}, metrics=metrics, wall_time_s=timer.seconds)
