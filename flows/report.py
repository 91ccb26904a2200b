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
        shown = ", ".join(f"{k}={v}" for k, v in counts.items() if isinstance(v, int) and not _not_kept(k))
        lost = [f"{k}={v}" for k, v in counts.items() if isinstance(v, int) and _not_kept(k) and v]
        if lost:  # every row a reader dropped or skipped, by reason, not only in the JSON
            shown += "\n" + ", ".join(lost)
        m = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                      if k in ("mrr", "hits_at_10", "alias_recall_at_1", "alias_recall_at_10") and v is not None)
        if isinstance(metrics.get("baseline"), dict):
            m += embedding_vs_baseline(metrics)
        if stage == "train":
            m = f"knowledge_loss {metrics['first']['knowledge_loss']:.3f}→{metrics['last']['knowledge_loss']:.3f}"
        elif stage == "train:stage2":
            m = (f"task_loss {metrics['first']['task_loss']:.3f}→{metrics['last']['task_loss']:.3f}, "
                 f"knowledge_loss {metrics['first']['knowledge_loss']:.3f}→{metrics['last']['knowledge_loss']:.3f}")
        elif stage == "train:stage3":
            m = (f"dpo_loss {metrics['first']['dpo_loss']:.3f}→{metrics['last']['dpo_loss']:.3f}, "
                 f"policy prefers chosen {metrics['reference_prefers_chosen']:.3f}→{metrics['policy_prefers_chosen']:.3f} "
                 f"({metrics['eval_split']} pairs)")
        wall = entry.get("wall_time_s")
        seconds = f"{wall:.1f}" if wall is not None else "-"
        rows.append((stage, shown, m, f"cached ({seconds})" if entry.get("cached") else seconds))
    return rows


def _not_kept(key: str) -> bool:
    """Rows a reader dropped or skipped, or merged into an identical one."""
    return key.startswith(("dropped_", "skipped_", "merged_"))


def embedding_vs_baseline(metrics: dict[str, Any]) -> str:
    """Baseline MRR, ratio (with a plain warning under 2×) and MRR per relation of an embed entry."""
    ratio = metrics.get("baseline_ratio")
    out = f", baseline_mrr={metrics['baseline']['mrr']:.3f}, ratio={ratio:.2f}" if ratio is not None else ""
    if ratio is not None and ratio < 2:
        out += " (WARNING: under 2x the popularity baseline: the embedding learned little)"
    per = metrics.get("per_relation") or {}
    if per:
        out += "; per relation MRR: " + ", ".join(f"{k}={v['mrr']:.3f} (n={v['count']})" for k, v in per.items())
    return out


def artifact_key(name: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes; the same KG name always
    gives the same key, so every run adds a version to one artifact's history."""
    import re

    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "kg"
    return re.sub(r"[^a-z0-9]+", "-", f"kalora-{slug}-{what.lower()}").strip("-")


def plots(results: dict[str, dict[str, Any]]) -> dict[str, Path]:
    out = {}
    for stage, entry in results.items():
        base = entry.get("outputs", {})
        if stage == "embed" and "embeddings" in base:
            out["embedding training (loss, validation MRR)"] = Path(base["embeddings"]) / "training.png"
        if stage.startswith("train") and "adapters" in base:
            number = stage.rpartition("stage")[2] or "1"
            out[f"stage {number} loss"] = Path(base["adapters"]) / "loss.png"
    return {k: v.resolve() for k, v in out.items() if v.exists()}


def report_markdown(cfg: BuildConfig, results: dict[str, dict[str, Any]]) -> str:
    layout = ArtifactLayout(cfg.root, cfg.name)
    lines = [f"# kalora build `{cfg.name}`", "", "| stage | status | counts | metrics | seconds |", "|---|---|---|---|---|"]
    for (stage, counts, metrics, seconds), entry in zip(summary_rows(results), results.values()):
        status = "cached" if entry.get("cached") else "ran"
        lines.append(f"| {stage} | {status} | {counts.replace(chr(10), '<br>')} | {metrics} | {seconds} |")
    lines += ["", "## Artifacts", ""]
    for stage, entry in results.items():
        for key, value in entry.get("outputs", {}).items():
            if key != "embedding_version":
                lines.append(f"- {stage} `{key}`: `{Path(value).resolve()}`")
    lines.append(f"- manifest: `{layout.manifest.resolve()}`")
    shown = plots(results)
    if shown:
        lines += ["", "## Plots", ""] + [f"- [{title}]({path.as_uri()})" for title, path in shown.items()]
    return "\n".join(lines) + "\n"


def publish_artifacts(cfg: BuildConfig, results: dict[str, dict[str, Any]]) -> list[str]:
    """Table, markdown and link artifacts of one build, under stable keys; returns the keys."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    table = []
    for (stage, counts, metrics, seconds), entry in zip(summary_rows(results), results.values()):
        outputs = {k: str(Path(v).resolve()) for k, v in entry.get("outputs", {}).items() if k != "embedding_version"}
        table.append({"stage": stage, "status": "cached" if entry.get("cached") else "ran", "counts": counts,
                      "metrics": metrics, "seconds": entry.get("wall_time_s"), "outputs": ", ".join(outputs.values())})
    keys = [artifact_key(cfg.name, "stages"), artifact_key(cfg.name, "report")]
    create_table_artifact(table, key=keys[0], description=f"kalora build '{cfg.name}': one row per stage")
    create_markdown_artifact(report_markdown(cfg, results), key=keys[1],
                             description=f"kalora build '{cfg.name}': counts, metrics, timings, paths, plots")
    for title, path in plots(results).items():
        key = artifact_key(cfg.name, "plot-" + title.split(" (")[0])
        create_link_artifact(path.as_uri(), link_text=path.name, key=key, description=title)
        keys.append(key)
    return keys


def print_summary(results: dict[str, dict[str, Any]], title: str | None = None, stderr: bool = False):
    """The summary table (one row per stage: counts, then dropped/skipped rows by reason)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=stderr)
    table = Table(title=title)
    for col in ("stage", "counts", "metrics", "seconds"):
        table.add_column(col)
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)
    return console


def print_report(cfg: BuildConfig, results: dict[str, dict[str, Any]]) -> None:
    layout = ArtifactLayout(cfg.root, cfg.name)
    console = print_summary(results, title=f"kalora build '{cfg.name}'")
    console.print("[bold]artifacts[/bold]")
    for stage, entry in results.items():
        for key, value in entry.get("outputs", {}).items():
            if key != "embedding_version":
                console.print(f"  {stage:<8} {key:<12} {Path(value).resolve()}")
    console.print(f"  manifest              {layout.manifest.resolve()}")
