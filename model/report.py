"""Stage metrics: first/last values, gate statistics, loss-curve PNGs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def summarize(history: list[dict[str, float]], keys: list[str], tail: int = 10) -> dict[str, Any]:
    """``first``/``last`` step rows (restricted to ``keys``) and the mean of the last ``tail`` steps."""
    pick = lambda row: {k: row[k] for k in ["step", *keys] if k in row}  # noqa: E731
    return {"first": pick(history[0]), "last": pick(history[-1]),
            f"mean_last_{tail}": {k: _mean([h.get(k, float("nan")) for h in history[-tail:]]) for k in keys}}


def gate_stats(history: list[dict[str, float]], tail: int = 10) -> dict[str, float]:
    """Mean injection gate on linked and other tokens over the last steps (and at the start)."""
    return {"gate_mean_linked_tokens": _mean([h.get("gate_linked", float("nan")) for h in history[-tail:]]),
            "gate_mean_other_tokens": _mean([h.get("gate_other", float("nan")) for h in history[-tail:]]),
            "gate_mean_linked_tokens_first": history[0].get("gate_linked", float("nan"))}


def plot_history(history: list[dict[str, float]], keys: list[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in h for h in history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    steps = [h["step"] for h in history]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [h.get(key, float("nan")) for h in history])
        ax.set_title(key)
        ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
