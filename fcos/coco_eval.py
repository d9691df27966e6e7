"""COCO-style box evaluation with faster-coco-eval (default) or pycocotools: the same 12 stats."""
from __future__ import annotations

import contextlib
import gc
import io
from pathlib import Path

import numpy as np

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _apis(backend: str):
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster
        return COCO, COCOeval_faster
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return COCO, COCOeval
    raise ValueError(f"unknown COCO evaluation backend {backend!r} (faster or pycocotools)")


def load_gt(gt: dict | str | Path, backend: str = "faster"):
    """A COCO ground-truth object from a dict or a json path."""
    COCO, _ = _apis(backend)
    if isinstance(gt, (str, Path)):
        return COCO(str(gt))
    coco = COCO()
    coco.dataset = {k: v for k, v in gt.items() if k in ("images", "annotations", "categories", "info")}
    _quiet(coco.createIndex)
    return coco


def coco_evaluate(gt, detections: np.ndarray, backend: str = "faster") -> dict:
    """detections [N, 7]: image_id, x, y, w, h, score, category_id (COCO results as an array).

    Returns the 12 stats as fractions (None where the ground truth has no such object, COCO's -1),
    per_class_AP and per_class_AP50 keyed by category name, and COCOeval's own arrays for curves
    (fcos/pr_curves.py): "precision" and "scores" [T=10 IoUs, R=101 recalls, K classes, A=4 areas,
    M=3 maxDets], "iou_thresholds" [T] and "classes" (the K names, by category id)."""
    with _gc_paused():
        return _evaluate(gt, np.asarray(detections, dtype=np.float64), backend)


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic GC rescans the millions of young dicts, lists and floats the COCO APIs build (none
    in a cycle) again and again: pausing it makes the evaluation ~2x faster on 300k detections."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _evaluate(gt, detections: np.ndarray, backend: str) -> dict:
    COCO, COCOeval = _apis(backend)
    coco_gt = gt if hasattr(gt, "getCatIds") else load_gt(gt, backend)
    cat_ids = sorted(coco_gt.getCatIds())
    names = {c["id"]: c["name"] for c in coco_gt.loadCats(cat_ids)}
    if len(detections) == 0:   # COCOeval needs a detection: every stat with ground truth is 0, the others None
        return _nothing_detected(coco_gt, cat_ids, names)
    coco_dt = _results(coco_gt, COCO, detections)
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    _quiet(ev.summarize)
    stats = {n: (float(v) if v >= 0 else None) for n, v in zip(STAT_NAMES, ev.stats[:12])}
    precision = np.asarray(ev.eval["precision"])  # [T iou, R recall, K class, A area, M max dets]
    per_ap, per_ap50 = {}, {}
    for k, c in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_ap[names[c]] = float(p[p > -1].mean()) if (p > -1).any() else None
        p50 = precision[0, :, k, 0, -1]
        per_ap50[names[c]] = float(p50[p50 > -1].mean()) if (p50 > -1).any() else None
    return {**stats, "per_class_AP": per_ap, "per_class_AP50": per_ap50, "precision": precision,
            "scores": np.asarray(ev.eval["scores"]), "iou_thresholds": np.asarray(ev.params.iouThrs),
            "classes": [names[c] for c in ev.params.catIds]}


AREAS = ((0, 1e10), (0, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, 1e10))   # COCOeval's all, small, medium, large


def _nothing_detected(coco_gt, cat_ids: list[int], names: dict) -> dict:
    """What COCOeval would report for no detections at all: 0 where the ground truth holds objects (of that
    class and area range, crowd boxes aside), None (COCO's -1) where it holds none; never a made-up 0."""
    anns = [a for a in coco_gt.loadAnns(coco_gt.getAnnIds()) if not a.get("iscrowd", 0)]
    has = np.array([[any(a["category_id"] == c and lo <= a["area"] < hi for a in anns) for lo, hi in AREAS]
                    for c in cat_ids], dtype=bool).reshape(len(cat_ids), len(AREAS))     # [K, A]
    area = has.any(axis=0)                                                             # [A]
    by_stat = [area[0], area[0], area[0], area[1], area[2], area[3], area[0], area[0], area[0], *area[1:]]
    stats = {n: (0.0 if present else None) for n, present in zip(STAT_NAMES, by_stat)}
    per_class = {names[c]: (0.0 if has[k, 0] else None) for k, c in enumerate(cat_ids)}
    arrays = np.where(has[None, None, :, :, None], 0.0, -1.0) * np.ones((10, 101, len(cat_ids), 4, 3))
    return {**stats, "per_class_AP": per_class, "per_class_AP50": dict(per_class), "precision": arrays,
            "scores": np.zeros_like(arrays), "iou_thresholds": np.linspace(0.5, 0.95, 10),
            "classes": [names[c] for c in cat_ids]}


def _results(coco_gt, COCO, det: np.ndarray):
    """The detections as a COCO results object, built in one pass.

    Not `coco_gt.loadRes`: both libraries convert the array element by element and add a polygon per box
    that box evaluation never reads; that took 45% of the whole evaluation on 300k detections. The
    fields (bbox, score, area = w * h, iscrowd 0, ids from 1) are those loadRes sets for boxes."""
    if det.ndim != 2 or det.shape[1] != 7:
        raise ValueError(f"detections must be an array [N, 7], got shape {det.shape}")
    unknown = np.setdiff1d(det[:, 0].astype(np.int64), np.asarray(coco_gt.getImgIds(), dtype=np.int64))
    if len(unknown):
        raise ValueError(f"detections name image ids absent from the ground truth: {unknown[:5].tolist()}")
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                       "annotations": [{"id": i, "image_id": int(r[0]), "bbox": r[1:5], "score": r[5],
                                        "category_id": int(r[6]), "area": r[3] * r[4], "iscrowd": 0}
                                       for i, r in enumerate(det.tolist(), 1)]}
    _quiet(coco_dt.createIndex)
    return coco_dt


def _quiet(fn):
    """fn() with stdout swallowed: pycocotools prints progress and its summary table; the caller prints its own."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()
