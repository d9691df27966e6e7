"""The dataset at a glance (written by `prepare`): one figure of six panels comparing the splits, and the
objects per class as CSV for `dvc plots`."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .mpl import plt, save
from .paths import DATASET_PLOTS

COLOURS = {"train": "#3b7dd8", "val": "#e8912d", "test": "#3aa35b"}


def objects_csv(tables: dict[str, dict], classes: list[str], path: Path) -> Path:
    """class, then the object count of each split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", *tables])
        counts = {s: np.bincount(t["label"], minlength=len(classes)) for s, t in tables.items()}
        for k, c in enumerate(classes):
            w.writerow([c, *(int(counts[s][k]) for s in tables)])
    return path


def dataset_figure(tables: dict[str, dict], classes: list[str], path: Path) -> Path:
    """Per split (fcos.data.stats.box_table of each): objects per class, boxes per image, box width against
    height relative to the image, aspect ratio, box centres (all splits), image sizes."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), dpi=90)
    ax = axes[0, 0]
    width = 0.8 / len(tables)
    for i, (split, t) in enumerate(tables.items()):
        share = np.bincount(t["label"], minlength=len(classes)) / max(1, len(t["label"]))
        ax.bar(np.arange(len(classes)) + i * width, share, width, color=COLOURS.get(split), label=split)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=60, ha="right", fontsize=8)
    ax.set(title="objects per class (share of the split)", ylabel="share of objects")

    ax = axes[0, 1]
    top = max([int(t["boxes"].max()) for t in tables.values() if len(t["boxes"])] + [1])
    bins = np.arange(top + 2) - 0.5
    for split, t in ((s, t) for s, t in tables.items() if len(t["boxes"])):   # an empty split has no shares
        ax.hist(t["boxes"], bins=bins, histtype="step", lw=1.5, color=COLOURS.get(split), density=True,
                label=f"{split} (mean {t['boxes'].mean() if len(t['boxes']) else 0:.1f})")
    ax.set(title="boxes per image", xlabel="boxes", ylabel="share of images")

    ax = axes[0, 2]
    for split, t in tables.items():
        ax.scatter(t["rel_width"], t["rel_height"], s=3, alpha=0.3, color=COLOURS.get(split), label=split)
    ax.set(title="box size relative to the image", xlabel="width / image width", ylabel="height / image height",
           xlim=(0, 1.05), ylim=(0, 1.05))

    ax = axes[1, 0]
    aspects = {s: t["width"] / np.maximum(t["height"], 1e-9) for s, t in tables.items()}
    every = np.concatenate(list(aspects.values()))
    lo, hi = (np.log2(every.min()), np.log2(every.max())) if len(every) else (-1, 1)
    bins = 2 ** np.linspace(min(lo, -1), max(hi, 1), 40)
    for split, a in aspects.items():
        ax.hist(a, bins=bins, histtype="step", lw=1.5, color=COLOURS.get(split), label=split,
                weights=np.full(len(a), 1 / max(1, len(a))))
    ax.set_xscale("log", base=2)
    ax.set(title="aspect ratio (width / height)", xlabel="aspect", ylabel="share of boxes")

    ax = axes[1, 1]
    cx = np.concatenate([t["rel_cx"] for t in tables.values()])
    cy = np.concatenate([t["rel_cy"] for t in tables.values()])
    ax.hist2d(cx, cy, bins=25, range=[[0, 1], [0, 1]], cmap="Blues")
    ax.set(title="box centres, all splits (image y down)", xlabel="x / image width", ylabel="y / image height")
    ax.invert_yaxis()

    ax = axes[1, 2]
    for split, t in tables.items():
        ax.scatter(t["image_width"], t["image_height"], s=8, alpha=0.4, color=COLOURS.get(split), label=split)
    distinct = {(w, h) for t in tables.values() for w, h in zip(t["image_width"], t["image_height"], strict=True)}
    ax.set(title=f"image sizes ({len(distinct)} distinct)", xlabel="width (px)", ylabel="height (px)")
    for a in axes.flat:
        if a is not axes[1, 1]:
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
    return save(fig, path)


def write_dataset_outputs(splits: dict[str, list], classes: list[str], folder: Path = DATASET_PLOTS) -> dict:
    """Statistics of each split of records (fcos.data.stats.split_stats), and in `folder` dataset.png and
    objects_per_class.csv. Returns {split: statistics}."""
    from fcos.data.stats import box_table, split_stats
    tables = {s: box_table(records) for s, records in splits.items()}
    dataset_figure(tables, classes, folder / "dataset.png")
    objects_csv(tables, classes, folder / "objects_per_class.csv")
    return {s: split_stats(records, classes) for s, records in splits.items()}
