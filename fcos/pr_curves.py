"""Precision-recall and F1 curves read from the COCO evaluation's own arrays (no second matcher).

`coco_evaluate` returns COCOeval's `precision` and `scores` arrays [T, R, K, A, M] (IoU thresholds .50:.95,
101 recall points, classes, areas all/small/medium/large, maxDets 1/10/100). At recall point r of class k,
precision is COCO's interpolated precision (the best precision at any recall >= r; 0 where r is never
reached, -1 for a class without ground truth) and scores is the score of the detection with which the
recall first reaches r. Keeping the detections with score >= scores[r] therefore gives recall >= r, and
F1 = 2PR / (P + R) over the recall points gives each class its F1-optimal score threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = np.arange(1001) / 1000     # the score grid of the F1-confidence curves (0.6 is exactly 0.6)


@dataclass
class PRCurves:
    """Curves of K classes at one IoU threshold (area all, the largest maxDets)."""

    classes: list[str]
    iou: float
    recall: np.ndarray     # [R] recall points 0, 0.01, ..., 1
    precision: np.ndarray  # [R, K] interpolated precision; NaN for a class without ground truth
    scores: np.ndarray     # [R, K] score threshold reaching that recall (0 where it is never reached)

    @property
    def present(self) -> np.ndarray:
        """[K] bool: classes with ground truth."""
        return ~np.isnan(self.precision[0])

    @property
    def ap(self) -> np.ndarray:
        """[K] AP at this IoU (COCO's mean over the 101 points); NaN without ground truth."""
        return self.precision.mean(axis=0)

    @property
    def f1(self) -> np.ndarray:
        """[R, K] F1 at each recall point."""
        p, r = self.precision, self.recall[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(p + r > 0, 2 * p * r / (p + r), 0.0) * np.where(np.isnan(p), np.nan, 1)

    def f1_at(self, confidence: np.ndarray = CONFIDENCE) -> np.ndarray:
        """[C, K] F1 when keeping the detections scored >= each confidence: that of the highest recall point
        still reached (0 when none is); NaN for classes without ground truth. A reached point has precision > 0
        (it holds a true positive); the others carry score 0."""
        reached = (self.scores[None] >= confidence[:, None, None]) & (self.precision[None] > 0)   # [C, R, K]
        last = np.where(reached.any(1), reached.shape[1] - 1 - reached[:, ::-1].argmax(1), -1)   # [C, K]
        f1 = np.take_along_axis(self.f1, np.clip(last, 0, None), axis=0)
        return np.where(last >= 0, f1, np.where(self.present, 0.0, np.nan))

    def mean_precision(self) -> np.ndarray:
        """[R] the all-classes curve: precision averaged over the classes with ground truth."""
        return np.nanmean(self.precision, axis=1) if self.present.any() else np.zeros_like(self.recall)


def pr_curves(precision: np.ndarray, scores: np.ndarray, classes: list[str], iou: float = 0.5,
              iou_thresholds: np.ndarray | None = None) -> PRCurves:
    """The curves at IoU `iou` from COCOeval's eval["precision"] and eval["scores"] [T, R, K, A, M]."""
    ious = np.linspace(0.5, 0.95, 10) if iou_thresholds is None else np.asarray(iou_thresholds)
    t = int(np.argmin(np.abs(ious - iou)))
    if abs(ious[t] - iou) > 1e-6:
        raise ValueError(f"IoU {iou} is not one of the evaluated thresholds {ious.tolist()}")
    p = np.asarray(precision, dtype=np.float64)[t, :, :, 0, -1]
    s = np.asarray(scores, dtype=np.float64)[t, :, :, 0, -1]
    if p.shape[1] != len(classes):
        raise ValueError(f"precision has {p.shape[1]} classes, {len(classes)} names given")
    return PRCurves(list(classes), float(ious[t]), np.linspace(0, 1, p.shape[0]), np.where(p < 0, np.nan, p),
                    np.where(p < 0, 0.0, s))


def f1_thresholds(curves: PRCurves) -> dict:
    """Per class {"f1", "threshold", "precision", "recall", "AP"} at the F1-optimal recall point (all None for
    a class without ground truth; threshold None when F1 is 0 everywhere), and "all": the single threshold
    maximising the mean F1 of the classes on the confidence grid, with that mean F1 (threshold None when
    no class has a true positive)."""
    f1, out = curves.f1, {}
    for k, name in enumerate(curves.classes):
        if not curves.present[k]:
            out[name] = {"f1": None, "threshold": None, "precision": None, "recall": None, "AP": None}
            continue
        r = int(np.argmax(f1[:, k]))   # the first (highest-threshold) of equal maxima
        best = float(f1[r, k])
        out[name] = {"f1": best, "threshold": float(curves.scores[r, k]) if best > 0 else None,
                     "precision": float(curves.precision[r, k]), "recall": round(float(curves.recall[r]), 2),
                     "AP": float(curves.ap[k])}
    mean_f1 = np.nanmean(curves.f1_at(), axis=1) if curves.present.any() else np.zeros_like(CONFIDENCE)
    c = len(mean_f1) - 1 - int(np.argmax(mean_f1[::-1]))   # the highest of equal maxima: fewest detections
    return {"per_class": out, "all": {"f1": float(mean_f1[c]),
                                      "threshold": float(CONFIDENCE[c]) if mean_f1[c] > 0 else None}}
