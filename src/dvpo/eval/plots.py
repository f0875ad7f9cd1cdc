"""Learning-curve PNGs from a metrics JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_metrics(metrics_path: Path, keys: tuple[str, ...], out_png: Path) -> Path | None:
    """One panel per key that appears in the log; returns None when none does."""
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    present = [k for k in keys if any(k in r for r in records)]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points])
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_runs(runs: dict[str, Path], key: str, out_png: Path, title: str = "") -> Path | None:
    """One curve per run (e.g. DVPO vs PPO) of the same metric; runs without it are left out."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    drawn = 0
    for label, path in runs.items():
        if not Path(path).exists():
            continue
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("RL step")
    ax.set_ylabel(key)
    ax.set_title(title or key)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
