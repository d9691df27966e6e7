"""Detection confusion matrix: classes + background, at one IoU and a score threshold.

Per image, the detections scored >= score_thresh (one for all classes, or one per class) are taken best
first; each claims the still unclaimed ground-truth box it overlaps most, of any class, if that IoU >=
iou_thresh: cell [predicted, true] += 1.
A detection claiming nothing is a false positive, [predicted, background]; a box nobody claimed is missed,
[background, true]. Rows are predicted classes, columns true classes, the last of each is background.
Crowd boxes (and difficult ones the evaluation ignores) are neither missed nor do they make the detections
on them false positives.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torchvision.ops import box_iou


def match_image(gt_boxes, gt_labels, det_boxes, det_scores, det_labels, num_classes: int,
                iou_thresh: float = 0.5, score_thresh=0.25, ignore_boxes=None) -> np.ndarray:
    """The confusion counts of one image, int64 [K + 1, K + 1]. Boxes x1y1x2y2: gt [G, 4], det [D, 4];
    labels in [0, K); score_thresh: one number or one per class [K]; ignore_boxes [I, 4] (crowd regions)."""
    m = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    gt_boxes = torch.as_tensor(np.asarray(gt_boxes, np.float64).reshape(-1, 4))
    det_boxes = torch.as_tensor(np.asarray(det_boxes, np.float64).reshape(-1, 4))
    gt_labels, det_labels = np.asarray(gt_labels, np.int64), np.asarray(det_labels, np.int64)
    det_scores = np.asarray(det_scores, np.float64)
    passed = det_scores >= np.broadcast_to(np.asarray(score_thresh, np.float64), (num_classes,))[det_labels]
    order = [i for i in np.argsort(-det_scores, kind="stable") if passed[i]]
    iou = box_iou(det_boxes, gt_boxes).numpy()                                        # [D, G]
    ignore = np.zeros(len(det_boxes), bool)
    if ignore_boxes is not None and len(ignore_boxes):
        ignore_t = torch.as_tensor(np.asarray(ignore_boxes, np.float64).reshape(-1, 4))
        ignore = (box_iou(det_boxes, ignore_t).numpy() >= iou_thresh).any(1)
    claimed = np.zeros(len(gt_boxes), bool)
    for d in order:
        overlap = np.where(claimed, -1.0, iou[d]) if len(gt_boxes) else np.zeros(0)
        g = int(np.argmax(overlap)) if len(overlap) else -1
        if g >= 0 and overlap[g] >= iou_thresh:
            claimed[g] = True
            m[det_labels[d], gt_labels[g]] += 1
        elif not ignore[d]:
            m[det_labels[d], num_classes] += 1
    np.add.at(m[num_classes], gt_labels[~claimed], 1)
    return m


def confusion_from_coco(gt: dict, detections: np.ndarray, iou_thresh: float = 0.5,
                        score_thresh=0.25) -> np.ndarray:
    """The matrix [K + 1, K + 1] over a COCO ground truth dict (classes in category-id order; boxes with
    iscrowd or ignore set are ignore regions) and detections [N, 7]: image_id, x, y, w, h, score, category_id."""
    cat_ids = sorted(c["id"] for c in gt["categories"])
    label = {c: k for k, c in enumerate(cat_ids)}
    xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]
    truth, ignore = defaultdict(list), defaultdict(list)
    for a in gt["annotations"]:
        (ignore if a.get("iscrowd") or a.get("ignore") else truth)[a["image_id"]].append(a)
    det = np.asarray(detections, np.float64).reshape(-1, 7)
    det = det[np.argsort(det[:, 0], kind="stable")]
    ids, starts = np.unique(det[:, 0].astype(np.int64), return_index=True)
    per_image = dict(zip(ids.tolist(), np.split(det, starts[1:]), strict=True)) if len(det) else {}
    m = np.zeros((len(cat_ids) + 1, len(cat_ids) + 1), np.int64)
    for image in gt["images"]:
        i = image["id"]
        d = per_image.get(i, np.zeros((0, 7)))
        g = truth[i]
        m += match_image([xyxy(a["bbox"]) for a in g], [label[a["category_id"]] for a in g],
                         np.column_stack((d[:, 1:3], d[:, 1:3] + d[:, 3:5])), d[:, 5],
                         [label[int(c)] for c in d[:, 6]], len(cat_ids), iou_thresh, score_thresh,
                         [xyxy(a["bbox"]) for a in ignore[i]])
    return m


def normalise(matrix: np.ndarray) -> np.ndarray:
    """Each column (true class) divided by its total: the share of that class's objects predicted as each
    row; background's column by the false positives' total. Empty columns stay 0."""
    totals = matrix.sum(axis=0, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
