"""Dataset statistics of a split: objects per class, boxes per image, box sizes and aspects, image sizes."""
from __future__ import annotations

from collections import Counter

import numpy as np

from .dataset import Record


def box_table(records: list[Record]) -> dict[str, np.ndarray]:
    """One entry per box [N]: label, width and height in pixels, width / height and centre relative to its
    image (in [0, 1] for boxes inside it), area in pixels; and one per image [I]: image_width, image_height,
    boxes (count)."""
    boxes = np.concatenate([r.boxes.reshape(-1, 4) for r in records]) if records else np.zeros((0, 4))
    size = np.concatenate([np.tile([r.width, r.height], (len(r.boxes), 1)) for r in records]
                          + [np.zeros((0, 2))]).astype(np.float64)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return {"label": np.concatenate([r.labels for r in records] + [np.zeros(0, np.int64)]),
            "width": w, "height": h, "rel_width": w / size[:, 0], "rel_height": h / size[:, 1],
            "rel_cx": (boxes[:, 0] + w / 2) / size[:, 0], "rel_cy": (boxes[:, 1] + h / 2) / size[:, 1],
            "area": w * h,
            "image_width": np.array([r.width for r in records], np.float64),
            "image_height": np.array([r.height for r in records], np.float64),
            "boxes": np.array([len(r.boxes) for r in records], np.int64)}


def _spread(x: np.ndarray, digits: int = 3) -> dict | None:
    if len(x) == 0:
        return None
    q = np.percentile(x, [0, 5, 50, 95, 100])
    return {k: round(float(v), digits) for k, v in zip(("min", "p5", "median", "p95", "max"), q, strict=True)}


def split_stats(records: list[Record], classes: list[str]) -> dict:
    """The numbers a person checks before training: images (and how many have no box), objects per class,
    boxes per image, box width/height in pixels, relative size sqrt(box area / image area), aspect
    width / height, COCO size groups (area < 32^2 small, < 96^2 medium, else large: APs/APm/APl), difficult
    and crowd counts, and the 10 most common image sizes "WxH"."""
    t = box_table(records)
    counts = np.bincount(t["label"], minlength=len(classes))
    relative = np.sqrt(t["area"] / np.maximum(1, np.repeat(t["image_width"] * t["image_height"], t["boxes"])))
    sizes = Counter(f"{w:.0f}x{h:.0f}" for w, h in zip(t["image_width"], t["image_height"], strict=True))
    return {"images": len(records), "images_without_boxes": int((t["boxes"] == 0).sum()), "objects": len(t["label"]),
            "objects_per_class": {c: int(n) for c, n in zip(classes, counts, strict=True)},
            "boxes_per_image": _spread(t["boxes"]), "box_width": _spread(t["width"], 1),
            "box_height": _spread(t["height"], 1), "relative_size": _spread(relative),
            "aspect_ratio": _spread(t["width"] / np.maximum(t["height"], 1e-9)),
            "size_groups": {"small": int((t["area"] < 32 ** 2).sum()),
                            "medium": int(((t["area"] >= 32 ** 2) & (t["area"] < 96 ** 2)).sum()),
                            "large": int((t["area"] >= 96 ** 2).sum())},
            "difficult": int(sum(r.difficult.sum() for r in records)),
            "crowd": int(sum(r.iscrowd.sum() for r in records)),
            "image_sizes": dict(sizes.most_common(10))}
