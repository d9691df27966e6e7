"""Figures of the report: curves of the top runs on shared axes, per-class AP50 side by side."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def label(row) -> str:
    """Run name and short id: runs may share a name."""
    return f"{row.name} ({row.run_id[:8]})"


def curves_figure(rows, metric: str, path: Path) -> Path | None:
    """Per-step final loss (left) and per-epoch validation `metric` when recorded (right), shared by the runs."""
    if not any(r.curves for r in rows):
        return None
    from ..mpl import plt, save
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
    for r in rows:
        loss = r.curves.get("train/final_loss")
        if loss:
            x, y = np.array(loss).T
            win = max(1, len(y) // 40)
            ax1.plot(x[win - 1:], np.convolve(y, np.ones(win) / win, mode="valid"), label=label(r))
        val = r.curves.get(f"val/{metric}")
        if val:
            x, y = np.array(val).T
            ax2.plot(x, y, marker="o", label=label(r))
    ax1.set(xlabel="step", ylabel="final loss (smoothed)", title="training loss")
    ax2.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not any(f"val/{metric}" in r.curves for r in rows):
        ax2.text(0.5, 0.5, "no validation during training\n(train.eval_every: 0)", ha="center", va="center",
                 transform=ax2.transAxes, color="gray")
    return save(fig, path)


def per_class_ap50(row) -> dict[str, float]:
    """{class: AP50} from the run's test/AP50/<class> metrics."""
    return {k.split("/", 2)[2]: v for k, v in row.metrics.items() if k.startswith("test/AP50/")}


def per_class_figure(rows, path: Path) -> Path | None:
    classes = sorted({c for r in rows for c in per_class_ap50(r)})
    if not classes:
        return None
    from ..mpl import plt, save
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(classes) * len(rows) + 2), 3.8), dpi=100)
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        vals = per_class_ap50(r)
        ax.bar(np.arange(len(classes)) + i * width, [vals.get(c, 0) for c in classes], width, label=label(r))
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=45, ha="right")
    ax.set(ylim=(0, 1), ylabel="AP50", title="per-class AP50 of the top runs")
    ax.legend(fontsize=8)
    return save(fig, path)
