"""TIDE error breakdown of box detections at IoU 0.5 (Bolya et al., "TIDE: A General Toolbox for Identifying
Object Detection Errors", ECCV 2020): how much AP50 each kind of error costs, overall, per class and per image.

The definitions are tidecv 1.0.1's, reproduced exactly (tests/test_eval_errors.py compares both on hand-made
cases and on a trained model's detections); tidecv itself is pure Python, minutes on 5,000 images, so this
is vectorised with numpy (fcos/tide_match.py: matching runs one detection rank at a time over many
images at once; here: the AP of each fix).

Per image, the `max_dets` best-scored detections are matched greedily, best score first, each to the still
unmatched ground-truth box of its class with the highest IoU >= 0.5 (ties: the first box). Crowd boxes
(`iscrowd`) are ignore regions: an unmatched detection covering one of its class (intersection over the
detection's area > 0.5) is neither a true nor a false positive. Every unmatched detection is then, first
rule that applies:
  Loc   its best IoU with a box of its class is in [0.1, 0.5]: right class, loose box;
  Cls   IoU >= 0.5 with a box of another class: wrong class;
  Dupe  IoU >= 0.5 with a box of its class that another detection matched: duplicate;
  Bkg   IoU <= 0.1 with every box (or the image has none): background;
  Both  otherwise: wrong class and loose box;
and every unmatched box that no Cls or Loc error points at is Miss.
Fixing one type (each alone, from the original; dAP = AP50 after - before, clipped at 0): Cls and Loc
errors become true positives (for each unmatched box only the best-scored Cls or Loc error pointing at it;
the others, and those pointing at matched boxes, are removed); Both, Dupe and Bkg detections are removed;
Miss boxes leave the ground truth. Special errors: FalsePos scores every true positive above every false
positive; FalseNeg removes every unmatched box from the ground truth.
AP50 is tidecv's: 101-point interpolation as COCOeval, averaged over the classes that have ground truth or
detections; unlike COCOeval, a class with detections but no ground truth counts as AP 0 in that mean.
Values here are fractions (tidecv prints them x100).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tide_match import (
    BG_THRESH,
    CLS,
    LOC,
    MAIN_ERRORS,
    MISS,
    NOT_EVALUATED,
    POS_THRESH,
    TP,
    Matches,
    Truth,
    match_all,
    positions,
)

SPECIAL_ERRORS = ("FalsePos", "FalseNeg")
MAX_DETS = 100
RECALLS = np.arange(101) / 100                # tidecv's x / 100 (COCOeval: np.linspace, a few ulps apart)


@dataclass
class TideResult:
    """The breakdown; AP values are fractions, None where undefined (no class with ground truth or
    detections). Per-class dicts are keyed by category id. Per-image arrays follow gt["images"]; per-
    detection arrays the rows of the detections given; per-box arrays gt["annotations"]."""

    ap: float | None                      # tidecv's AP50 before fixing
    main: dict[str, float | None]         # dAP of each main error type
    special: dict[str, float | None]      # dAP of FalsePos, FalseNeg
    counts: dict[str, int]                # errors of each main type (tidecv's count_errors)
    per_class_ap: dict[int, float | None]
    per_class_main: dict[int, dict[str, float | None]]
    per_class_special: dict[int, dict[str, float | None]]
    image_ids: np.ndarray                 # [I]
    image_counts: np.ndarray              # [I, 6] errors of each main type in each image
    image_loss: np.ndarray                # [I] estimated AP50 lost in each image (`image_losses`)
    det_code: np.ndarray                  # [N] TP, NOT_EVALUATED or the error code
    det_ignored: np.ndarray               # [N] on a crowd region: neither true nor false positive
    det_gt: np.ndarray                    # [N] annotation index it matched (TP) or points at (Cls, Loc); -1
    gt_missed: np.ndarray                 # [A] a Miss error
    gt_found: np.ndarray                  # [A] matched by a detection


def tide(gt: dict, detections: np.ndarray, max_dets: int = MAX_DETS, pos_thresh: float = POS_THRESH,
         bg_thresh: float = BG_THRESH) -> TideResult:
    """The breakdown of `detections` [N, 7] (image_id, x, y, w, h, score, category_id) against a COCO ground
    truth dict (images, annotations with bbox xywh, category_id, iscrowd; categories). Detections on images
    the ground truth lacks are not evaluated (tidecv walks the ground truth's images)."""
    g = Truth(gt)
    det = np.asarray(detections, np.float64).reshape(-1, 7)
    n = len(det)
    d_img = positions(g.image_ids, det[:, 0])
    d_cls = positions(g.cat_ids, det[:, 6])
    known = (d_img >= 0) & (d_cls >= 0)
    # Image order, then score (descending), then input order: tidecv's stable sort of each image's list.
    order = _stable(-det[:, 5], np.flatnonzero(known))
    order = _stable(d_img, order)
    s_img = d_img[order]
    first = np.searchsorted(s_img, np.arange(len(g.image_ids) + 1))
    rank = np.arange(len(order)) - first[s_img]
    order, s_img, rank = order[rank < max_dets], s_img[rank < max_dets], rank[rank < max_dets]
    m = Matches(len(order))
    match_all(det[order], d_cls[order], s_img, g, m, pos_thresh, bg_thresh)

    # Cls and Loc errors on unmatched boxes: the best-scored one per box is fixable (tidecv's BestGTMatch).
    found = g.used_by(m)
    free = ((m.code == CLS) | (m.code == LOC)) & (m.gt >= 0)
    free[free] = ~found[m.gt[free]]
    targets = m.gt[free]
    rows = np.flatnonzero(free)
    best = np.full(len(g.cls), len(order))
    np.minimum.at(best, targets, rows)
    fixable = np.zeros(len(order), bool)
    fixable[rows[best[targets] == rows]] = True
    usable = np.zeros(len(g.cls), bool)
    usable[targets] = True
    missed = ~g.crowd & ~found & ~usable

    res = _Scenarios(g, det[order, 5], d_cls[order], m, fixable, missed, found)
    ap, aps = res.original()
    main, per_class_main = {}, {}
    for code, name in enumerate(MAIN_ERRORS):
        fixed_ap, fixed_aps = res.fixed(code)
        main[name] = None if ap is None or fixed_ap is None else max(fixed_ap - ap, 0.0)
        per_class_main[name] = np.maximum(fixed_aps - aps, 0.0)
    special, per_class_special = {}, {}
    for name in SPECIAL_ERRORS:
        fixed_ap, fixed_aps = res.special(name)
        special[name] = None if ap is None or fixed_ap is None else fixed_ap - ap
        per_class_special[name] = fixed_aps - aps

    det_code = np.full(n, NOT_EVALUATED, np.int8)
    det_code[order] = m.code
    det_ignored = np.zeros(n, bool)
    det_ignored[order] = m.ignored
    det_gt = np.full(n, -1, np.int64)
    det_gt[order] = _take(g.ann_index, m.gt)
    counts = np.zeros((len(g.image_ids), len(MAIN_ERRORS)), np.int64)
    errs = m.code >= 0
    np.add.at(counts, (s_img[errs], m.code[errs]), 1)
    np.add.at(counts, (g.img[missed], MISS), 1)
    gt_missed, gt_found = np.zeros(len(gt["annotations"]), bool), np.zeros(len(gt["annotations"]), bool)
    gt_missed[g.ann_index[missed]] = True
    gt_found[g.ann_index[found]] = True
    k_ids = g.cat_ids.tolist()
    nan_none = lambda v: None if np.isnan(v) else float(v)
    result = TideResult(
        ap=ap, main=main, special=special,
        counts={name: int(counts[:, c].sum()) for c, name in enumerate(MAIN_ERRORS)},
        per_class_ap={c: nan_none(aps[k]) for k, c in enumerate(k_ids)},
        per_class_main={c: {e: nan_none(per_class_main[e][k]) for e in MAIN_ERRORS} for k, c in enumerate(k_ids)},
        per_class_special={c: {e: nan_none(per_class_special[e][k]) for e in SPECIAL_ERRORS}
                           for k, c in enumerate(k_ids)},
        image_ids=g.image_ids, image_counts=counts, image_loss=np.zeros(len(g.image_ids)),
        det_code=det_code, det_ignored=det_ignored, det_gt=det_gt, gt_missed=gt_missed, gt_found=gt_found)
    result.image_loss = image_losses(result, det[:, 5], d_img)
    return result


def image_losses(result: TideResult, scores: np.ndarray, det_image: np.ndarray) -> np.ndarray:
    """[I] the AP50 each image loses, estimated: each main type's dAP shared among its errors, a missed box
    an equal share of Miss's dAP, a detection error a share proportional to its score (a false positive
    lowers the precision of every true positive scored below it: at a low score it costs almost nothing).
    Errors on crowd regions cost nothing. det_image [N]: each detection's image position (-1: unknown)."""
    loss = np.zeros(len(result.image_ids))
    code = result.det_code
    for c, name in enumerate(MAIN_ERRORS[:MISS]):
        sel = (code == c) & ~result.det_ignored
        total = scores[sel].sum()
        if result.main[name] and total > 0:
            np.add.at(loss, det_image[sel], result.main[name] * scores[sel] / total)
    n_miss = result.image_counts[:, MISS].sum()
    if result.main["Miss"] and n_miss:
        loss += result.main["Miss"] * result.image_counts[:, MISS] / n_miss
    return loss


def worst_images(result: TideResult, n: int) -> np.ndarray:
    """Positions of the `n` images losing the most (image_loss, then more errors, then the ground truth's
    order); images without any error are never listed."""
    errors = result.image_counts.sum(1)
    order = np.lexsort((np.arange(len(errors)), -errors, -result.image_loss))
    return order[errors[order] > 0][:n]


class _Scenarios:
    """AP50 per class of the original detections and of each fix, with tidecv's order of equal scores: its
    lists run image by image, best score first, and a fixed list holds the error-derived points before the
    correct ones (tidecv's fix_errors). Points: every counted detection as it is, then every fixable Cls or
    Loc error as the true positive it becomes; each scenario takes a subset of them in one of two orders."""

    def __init__(self, g: Truth, score, cls, m: Matches, fixable, missed, found):
        self.g = g
        counted = (m.code != NOT_EVALUATED) & ~m.ignored      # the points tidecv's AP data holds
        gt_cls = _take(g.cls, m.gt)
        fixed_cls = np.where(m.code == CLS, gt_cls, cls)        # where a fixed Cls error lands
        orig, alt = np.flatnonzero(counted), np.flatnonzero(fixable)
        both = np.concatenate((orig, alt))
        merged = np.argsort(both, kind="stable")     # both runs hold detections in image, then rank order
        both, is_alt = both[merged], (np.arange(len(both)) >= len(orig))[merged]
        self.alt = is_alt
        self.cls = np.where(is_alt, fixed_cls[both], cls[both]).astype(_small_int(g.num_classes))
        self.tp = is_alt | (m.code[both] == TP)
        self.code = m.code[both]
        minus_s = -score[both]
        self.by_score = _stable(minus_s, np.flatnonzero(~is_alt))
        correct = self.tp & ~is_alt                             # after the error-derived points of equal score
        self.by_group = _stable(minus_s, np.argsort(correct, kind="stable"))
        k = g.num_classes
        self.n_missed = np.bincount(g.cls[missed], minlength=k)
        self.n_unfound = np.bincount(g.cls[~g.crowd & ~found], minlength=k)

    def original(self):
        return self._ap(self.by_score, self.g.n_gt)

    def fixed(self, code: int):
        """Errors of type `code` fixed: Cls/Loc as true positives where fixable, the rest removed."""
        o = self.by_group
        keep = ~self.alt[o] & (self.code[o] != code) | self.alt[o] & (self.code[o] == code)
        return self._ap(o[keep], self.g.n_gt - (self.n_missed if code == MISS else 0))

    def special(self, name: str):
        o = self.by_group[~self.alt[self.by_group]]
        if name == "FalsePos":      # true positives scored 1, false positives 0: only their count matters
            o = o[np.argsort(~self.tp[o], kind="stable")]
            return self._ap(o, self.g.n_gt)
        return self._ap(o, self.g.n_gt - self.n_unfound)

    def _ap(self, points, n_gt):
        """(mean AP or None, [K] AP per class with NaN for a class without ground truth or points) of the
        points in the given order."""
        points = points[np.argsort(self.cls[points], kind="stable")]
        cls, tp = self.cls[points], self.tp[points]
        k = self.g.num_classes
        bounds = np.searchsorted(cls, np.arange(k + 1))
        aps = np.full(k, np.nan)
        for c in range(k):
            t = tp[bounds[c]:bounds[c + 1]]
            if n_gt[c] > 0:
                aps[c] = _ap101(t, n_gt[c])
            elif len(t):
                aps[c] = 0.0
        present = ~np.isnan(aps)
        return (float(aps[present].mean()) if present.any() else None), aps


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """values[rows] where rows >= 0, else -1 (values may be empty: a ground truth without boxes)."""
    out = np.full(len(rows), -1, np.int64)
    out[rows >= 0] = values[rows[rows >= 0]]
    return out


def _stable(key: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """rows stably sorted by key[rows]."""
    return rows[np.argsort(key[rows], kind="stable")]


def _small_int(n: int):
    """The narrowest integer type for labels < n: numpy sorts 16-bit ones by radix."""
    return np.int16 if n < 2**15 else np.int64


def _ap101(tp: np.ndarray, n_gt: int) -> float:
    """tidecv's AP of one class: tp [P] flags best score first, n_gt > 0 boxes."""
    if not len(tp):
        return 0.0
    hits = np.cumsum(tp)
    precision = hits / np.arange(1, len(tp) + 1)
    recall = hits / n_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALLS, side="left")
    return float(np.where(at < len(tp), precision[np.minimum(at, len(tp) - 1)], 0.0).sum() / len(RECALLS))
