"""The end-of-run summary: where every artifact went, counts, metrics and timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.config import BuildConfig
from pipelines.artifacts import ArtifactLayout


def summary_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    rows = []
    for stage, entry in results.items():
        counts = entry.get("counts", {})
        metrics = entry.get("metrics", {})
        shown = ", ".join(f"{k}={v}" for k, v in counts.items() if isinstance(v, int))
        m = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k in ("mrr", "hits_at_10"))
        if stage == "train":
            m = f"knowledge_loss {metrics['first']['knowledge_loss']:.3f}→{metrics['last']['knowledge_loss']:.3f}"
        wall = entry.get("wall_time_s")
        rows.append((stage, shown, m, f"{wall:.1f}" if wall is not None else "-"))
    return rows


def print_report(cfg: BuildConfig, results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    layout = ArtifactLayout(cfg.root, cfg.name)
    console = Console()
    table = Table(title=f"kalora build '{cfg.name}'")
    for col in ("stage", "counts", "metrics", "seconds"):
        table.add_column(col)
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)
    console.print("[bold]artifacts[/bold]")
    for stage, entry in results.items():
        for key, value in entry.get("outputs", {}).items():
            if key != "embedding_version":
                console.print(f"  {stage:<8} {key:<12} {Path(value).resolve()}")
    console.print(f"  manifest              {layout.manifest.resolve()}")
