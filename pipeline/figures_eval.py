"""Evaluation figures (matplotlib): precision-recall and F1-confidence curves at IoU .5, confusion matrices."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .mpl import plt, save


def _legend(ax, n: int, title: str) -> None:
    ax.legend(fontsize=7 if n <= 12 else 5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
              title=title, title_fontsize=8)


def pr_figure(curves, path: Path) -> Path:
    """Precision against recall per class (thin, AP in the legend) and for all classes (thick, mAP), with the
    F1-optimal point of each class marked."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    f1 = curves.f1
    for k, name in enumerate(curves.classes):
        if curves.present[k]:
            line, = ax.plot(curves.recall, curves.precision[:, k], lw=1, label=f"{name} {curves.ap[k]:.3f}")
            r = int(np.argmax(f1[:, k]))
            ax.plot(curves.recall[r], curves.precision[r, k], "o", ms=3, color=line.get_color())
    mean = curves.mean_precision()
    ax.plot(curves.recall, mean, lw=3, color="#1f3b73", label=f"all classes {mean.mean():.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"precision-recall at IoU {curves.iou:.2f} (dots: F1-optimal)")
    ax.grid(alpha=0.3)
    _legend(ax, len(curves.classes) + 1, "AP50")
    return save(fig, path)


def f1_figure(curves, thresholds: dict, path: Path) -> Path:
    """F1 against the score threshold per class and averaged, the chosen all-classes threshold marked."""
    from fcos.pr_curves import CONFIDENCE
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    f1 = curves.f1_at()
    for k, name in enumerate(curves.classes):
        t = thresholds["per_class"][name]["threshold"]
        if curves.present[k]:
            ax.plot(CONFIDENCE, f1[:, k], lw=1, label=name + (f" {t:.2f}" if t is not None else ""))
    best = thresholds["all"]
    at = "" if best["threshold"] is None else f" {best['threshold']:.2f}"
    ax.plot(CONFIDENCE, np.nanmean(f1, axis=1) if curves.present.any() else np.zeros_like(CONFIDENCE), lw=3,
            color="#1f3b73", label=f"all classes{at} (F1 {best['f1']:.2f})")
    if best["threshold"] is not None:
        ax.axvline(best["threshold"], color="#1f3b73", ls=":", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="F1",
           title=f"F1 against the score threshold at IoU {curves.iou:.2f}")
    ax.grid(alpha=0.3)
    _legend(ax, len(curves.classes) + 1, "F1-optimal threshold")
    return save(fig, path)


def confusion_figure(matrix: np.ndarray, classes: list[str], path: Path, normalised: bool, note: str) -> Path:
    """The matrix as a heat map, rows predicted, columns true, background last; each cell annotated."""
    from fcos.confusion import normalise
    names = [*classes, "background"]
    values = normalise(matrix) if normalised else matrix
    n = len(names)
    size = max(4.5, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalised else max(1, values.max()))
    if n <= 30:
        for (i, j), v in np.ndenumerate(values):
            if v:
                text = f"{v:.2f}" if normalised else str(int(v))
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if v > 0.6 * (1 if normalised else values.max()) else "black")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set(xlabel="true", ylabel="predicted",
           title=("confusion matrix, normalised by true class" if normalised else "confusion matrix (counts)")
           + f"\n{note}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save(fig, path)
