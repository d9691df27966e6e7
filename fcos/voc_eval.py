"""PASCAL VOC's detection metric: per-class AP at IoU 0.5 and its mean, by the VOC devkit's rules.

Per class, detections are taken best score first (ties: input order). Each is compared with every box of
its class in its image and takes the one it overlaps most (ties: the first), whatever that box's state:
IoU >= 0.5 with a box flagged difficult (or crowd): ignored, neither true nor false positive; IoU >= 0.5 with
a box no earlier detection took: true positive; with a box already taken: false positive (a duplicate;
unlike COCOeval, no fallback to the next box); below 0.5: false positive. Recall is over the boxes not
flagged difficult. AP: `voc07` 11-point interpolation (the mean over t in 0, 0.1, ..., 1 of the best precision
at recall >= t; thresholds np.arange(0, 1.1, 0.1) as the Python ports of the devkit); `voc` (VOC2010 on)
the area under the precision envelope at every recall step. No limit of detections per image. IoU is that of
continuous boxes: on VOC's 1-based pixel boxes converted as fcos.data.voc does (x1 = xmin - 1, x2 = xmax),
it equals the devkit's "+1" IoU of the original pixel coordinates.
A class without a non-difficult box has no AP (None) and stays out of the mean (the devkit divides by zero).
"""
from __future__ import annotations

import numpy as np

INTERPOLATIONS = {"voc07": "11-point", "voc": "all-point"}
IOU = 0.5


def voc_evaluate(gt: dict, detections: np.ndarray, interpolation: str = "voc07", iou: float = IOU) -> dict:
    """VOC AP of `detections` [N, 7] (image_id, x, y, w, h, score, category_id) against a COCO ground truth
    dict whose annotations carry `difficult` (VOC) or `iscrowd` flags. Returns {"mAP": float | None,
    "per_class_AP": {category_id: float | None}, "num_gt": {category_id: boxes counted}}."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    cat_ids = sorted(c["id"] for c in gt["categories"])
    anns = gt["annotations"]
    g_img = np.array([a["image_id"] for a in anns], np.int64)
    g_cat = np.array([a["category_id"] for a in anns], np.int64)
    g_box = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    g_ignore = np.array([bool(a.get("difficult", 0) or a.get("iscrowd", 0)) for a in anns], bool)
    det = np.asarray(detections, np.float64).reshape(-1, 7)
    per_class, num_gt = {}, {}
    for c in cat_ids:
        g = g_cat == c
        num_gt[c] = int((g & ~g_ignore).sum())
        d = det[det[:, 6] == c]
        per_class[c] = None if num_gt[c] == 0 else _class_ap(
            d[np.argsort(-d[:, 5], kind="stable")], g_img[g], g_box[g], g_ignore[g], num_gt[c], interpolation, iou)
    aps = [v for v in per_class.values() if v is not None]
    return {"mAP": float(np.mean(aps)) if aps else None, "per_class_AP": per_class, "num_gt": num_gt}


def _class_ap(det, g_img, g_box, g_ignore, n_pos: int, interpolation: str, iou_thresh: float) -> float:
    """AP of one class: det [D, 7] best score first; its boxes [G] (any image order, annotation order kept)."""
    best, overlap = _best_boxes(det, g_img, g_box)                    # [D] box index (-1: none), its IoU
    hit = overlap >= iou_thresh
    ignored = hit & g_ignore[np.maximum(best, 0)]
    claim = hit & ~ignored
    # A true positive is the first (best-scored) detection claiming its box; later claims are duplicates.
    first = np.zeros(len(det), bool)
    rows = np.flatnonzero(claim)
    _, at = np.unique(best[rows], return_index=True)
    first[rows[at]] = True
    counted = ~ignored
    tp = first[counted]
    hits = np.cumsum(tp)
    recall = hits / n_pos
    precision = hits / np.arange(1, len(tp) + 1)
    return _voc07(recall, precision) if interpolation == "voc07" else _all_point(recall, precision)


def _best_boxes(det, g_img, g_box):
    """For each detection, the box of its image it overlaps most (first on ties) and that IoU (0, box -1
    where its image has none)."""
    best, overlap = np.full(len(det), -1, np.int64), np.zeros(len(det))
    if not len(det) or not len(g_img):
        return best, overlap
    order = np.argsort(g_img, kind="stable")
    ids = g_img[order]
    d_img = det[:, 0].astype(np.int64)
    start, end = np.searchsorted(ids, d_img), np.searchsorted(ids, d_img, side="right")
    count = end - start
    pair_det = np.repeat(np.arange(len(det)), count)
    within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    pair_box = order[np.repeat(start, count) + within]
    iou = _iou(det[pair_det, 1:5], g_box[pair_box])
    pick = np.lexsort((within, -iou, pair_det))                        # per detection: highest IoU, first box
    pair_det, pair_box, iou = pair_det[pick], pair_box[pick], iou[pick]
    lead = np.ones(len(pair_det), bool)
    lead[1:] = pair_det[1:] != pair_det[:-1]
    best[pair_det[lead]] = pair_box[lead]
    overlap[pair_det[lead]] = iou[lead]
    return best, overlap


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh box pairs a [P, 4], b [P, 4]."""
    w = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _voc07(recall: np.ndarray, precision: np.ndarray) -> float:
    best = [precision[recall >= t].max(initial=0.0) for t in np.arange(0.0, 1.1, 0.1)]
    return float(sum(best) / 11)


def _all_point(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]))
