"""Bootstrap over test images: how far a COCO AP could move on another test set drawn like this one, and
whether a difference between two runs on the same images is more than that noise.

Resampling images means recomputing AP on every resample, so the matching is done once:
`match_table` runs pycocotools' COCOeval.evaluate (area range all, 100 detections per image and class),
whose per-image, per-class evaluateImg gives each detection's match at each IoU threshold; it keeps, per
class, the detections in COCOeval's global rank order (score, ties by image then rank in the image) with
their image, true-positive and ignored flags at each IoU threshold, and each image's count of
non-ignored ground truth. A resample is a multiset of images, given as counts [B, I]; `resample_metrics`
then recomputes COCOeval.accumulate with every detection weighted by its image's count: weighted TP and
FP cumulative sums, recall and precision, the precision envelope and the 101-point interpolation, exactly
as COCOeval does (on counts of 1 the results equal COCOeval's AP, AP50 and per-class AP50). Only the
points at true positives are needed: a false positive lowers precision and leaves recall, so it never
sets the envelope nor is the first point at a recall threshold.

Paired: both runs are scored on the same resamples (the same counts), and the interval is the 2.5 and
97.5 percentiles of the resampled differences (percentile bootstrap). Seed repeats (`pool`): per
resample the images are drawn once and the seeds are drawn with replacement from each group's runs, the
group's value being the mean over the drawn seeds (a two-level bootstrap: test images and training
seeds), so an interval of a group holds both sources of noise.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from dataclasses import dataclass, field

import numpy as np

from .coco_eval import _gc_paused, _quiet, _results, load_gt

RESAMPLES = 1000     # resamples of the test images (the percentile interval's 2.5% tails hold 25 each)
SEED = 0
LEVEL = 0.95
MAX_DETS = 100       # COCO's AP: 100 detections per image
WITHIN_NOISE, B_BETTER, A_BETTER = "within noise", "B better", "A better"
_CHUNK = 4_000_000   # resamples x detections (or images) of one class handled at once (bounded memory)


def gt_hash(gt: dict) -> str:
    """sha256 of what COCO box evaluation reads from a ground truth: image ids, each annotation's image,
    category, box, area, iscrowd and ignore, and the categories (file names, annotation ids and order do
    not count)."""
    images = sorted(int(i["id"]) for i in gt["images"])
    anns = sorted([int(a["image_id"]), int(a["category_id"]), [float(v) for v in a["bbox"]],
                   float(a.get("area", -1)), int(bool(a.get("iscrowd", 0))), int(bool(a.get("ignore", 0)))]
                  for a in gt["annotations"])
    cats = sorted([int(c["id"]), str(c["name"])] for c in gt["categories"])
    text = json.dumps({"images": images, "annotations": anns, "categories": cats}, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ClassMatches:
    """One class's detections in COCOeval's rank order: image index [n], true positive [T, n] and
    ignored [T, n] (matched to a crowd or ignored box) at each IoU threshold."""

    image: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray


@dataclass
class MatchTable:
    """What AP needs of one run's detections on one ground truth, per image: image_ids [I] (sorted),
    classes [K] (names, by category id), npig [I, K] non-ignored ground-truth boxes, per class its
    ClassMatches, the IoU and recall thresholds of COCOeval."""

    image_ids: np.ndarray
    classes: list[str]
    npig: np.ndarray
    matches: list[ClassMatches]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.image_ids)


def match_table(gt, detections: np.ndarray) -> MatchTable:
    """gt: a COCO dict, json path or pycocotools COCO; detections [N, 7]: image_id, x, y, w, h, score,
    category_id (as fcos.coco_eval.coco_evaluate takes them)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if isinstance(gt, dict):   # COCOeval writes "ignore" into the annotations: leave the caller's as they are
        gt = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
    with _gc_paused():
        coco_gt = gt if hasattr(gt, "getCatIds") else load_gt(gt, "pycocotools")
        coco_dt = _results(coco_gt, COCO, np.asarray(detections, np.float64).reshape(-1, 7))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        p = ev.params
        p.areaRng, p.areaRngLbl, p.maxDets = p.areaRng[:1], p.areaRngLbl[:1], [MAX_DETS]   # all; 100
        _quiet(ev.evaluate)
    image_ids, cat_ids = np.asarray(p.imgIds), list(p.catIds)
    n_img, n_thr = len(image_ids), len(p.iouThrs)
    names = {c["id"]: c["name"] for c in coco_gt.loadCats(cat_ids)}
    npig = np.zeros((n_img, len(cat_ids)), np.int64)
    matches = []
    for k in range(len(cat_ids)):
        scores, image, tp, ignored = [], [], [], []
        for i, e in enumerate(ev.evalImgs[k * n_img:(k + 1) * n_img]):   # one area range: [K, I] in order
            if e is None:
                continue
            npig[i, k] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            ig = np.asarray(e["dtIgnore"], bool).reshape(n_thr, -1)
            scores.append(np.asarray(e["dtScores"], np.float64))
            image.append(np.full(ig.shape[1], i, np.int64))
            tp.append((np.asarray(e["dtMatches"]).reshape(n_thr, -1) != 0) & ~ig)
            ignored.append(ig)
        if not scores:
            matches.append(ClassMatches(np.zeros(0, np.int64), np.zeros((n_thr, 0), bool), np.zeros((n_thr, 0), bool)))
            continue
        order = np.argsort(-np.concatenate(scores), kind="mergesort")        # COCOeval.accumulate's order
        matches.append(ClassMatches(np.concatenate(image)[order], np.concatenate(tp, 1)[:, order],
                                    np.concatenate(ignored, 1)[:, order]))
    return MatchTable(image_ids, [names[c] for c in cat_ids], npig, matches, np.asarray(p.iouThrs),
                      np.asarray(p.recThrs))


def resample_counts(n_images: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[B, I] int: how often each image is drawn in each resample (I draws with replacement). The same
    (n_images, resamples, seed) give the same counts, which is what pairs two runs."""
    draws = np.random.default_rng(seed).integers(0, n_images, size=(resamples, n_images))
    offsets = np.arange(resamples)[:, None] * n_images
    return np.bincount((draws + offsets).ravel(), minlength=resamples * n_images).reshape(resamples, n_images)


def _min_counts(npig: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[b, R]: the least integer m with float(m / npig) >= threshold, i.e. the TP count at which COCOeval's
    recall (tp / npig, in floating point) first reaches each recall threshold."""
    base = np.floor(thresholds[None, :] * npig[:, None])
    cands = np.maximum(base[..., None] + np.arange(-2, 3), 0)                       # [b, R, 5], ascending
    ok = cands / np.maximum(npig, 1)[:, None, None] >= thresholds[None, :, None]
    return np.take_along_axis(cands, ok.argmax(-1)[..., None], -1)[..., 0].astype(np.int64)


def _prefix(counts: np.ndarray, image: np.ndarray, upto: np.ndarray) -> np.ndarray:
    """[b, U] int: per resample, how many detections (each counted as often as its image was drawn) are
    ranked at or before each position of `upto` (ascending): a matmul with per-image counts [I, U] where that
    is cheaper, else a cumulative sum over the detections up to the last position."""
    n_images = counts.shape[1]
    if n_images * len(upto) <= 4 * (upto[-1] + 1):
        segment = np.searchsorted(upto, np.arange(upto[-1] + 1))          # the first position at or after each
        per_image = np.bincount(image[:upto[-1] + 1] * len(upto) + segment,
                                minlength=n_images * len(upto)).reshape(n_images, len(upto))
        return np.cumsum(counts @ per_image, axis=1)
    return np.cumsum(counts[:, image[:upto[-1] + 1]], axis=1)[:, upto]


def _class_ap(m: ClassMatches, counts: np.ndarray, npig: np.ndarray, recall_thr: np.ndarray) -> np.ndarray:
    """[b, T]: the class's precision averaged over the recall thresholds at each IoU threshold, every
    detection counted as often as its image is in the resample (counts [b, I]); NaN where npig [b] is 0
    (COCOeval's -1). Only the true positives' points are computed (see the module's docstring)."""
    b, n_thr = len(counts), m.tp.shape[0]
    out = np.zeros((b, n_thr))
    out[npig == 0] = np.nan
    points = np.flatnonzero(m.tp.any(axis=0))                      # true positives at some IoU threshold
    if len(points) == 0:
        return out                                                 # precision 0 wherever there are objects
    ranked = _prefix(counts, m.image, points)                      # [b, U]: detections up to each point
    unique, inverse = np.unique(npig, return_inverse=True)
    need = _min_counts(unique, recall_thr)[inverse]                # [b, R]
    rows = np.arange(b)[:, None]
    span = int(npig.max()) + 2
    for t in range(n_thr):
        pos = np.flatnonzero(m.tp[t])
        if len(pos) == 0:
            continue                                               # no TP: precision 0
        tp = np.cumsum(counts[:, m.image[pos]], axis=1)            # [b, P]
        fp = ranked[:, np.searchsorted(points, pos)] - tp
        ig_pos = np.flatnonzero(m.ignored[t][:pos[-1] + 1])
        if len(ig_pos):                                            # matched to crowd / ignored boxes: neither
            ig = np.concatenate([np.zeros((b, 1), counts.dtype), np.cumsum(counts[:, m.image[ig_pos]], axis=1)], 1)
            fp -= ig[:, np.searchsorted(ig_pos, pos)]
        tp_f = tp.astype(np.float64)
        precision = tp_f / (fp.astype(np.float64) + tp_f + np.spacing(1))
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        # the first point whose tp count reaches `need` (searchsorted, side left) = the number of points below
        # it: counted from a histogram of the tp counts per row (tp <= npig < span)
        below = np.zeros((b, span + 1), np.int64)
        below[:, 1:] = np.cumsum(np.bincount((tp + rows * span).ravel(), minlength=b * span).reshape(b, span), 1)
        idx = np.take_along_axis(below, np.minimum(need, span), axis=1)
        q = np.where(idx < tp.shape[1], envelope[rows, np.minimum(idx, tp.shape[1] - 1)], 0.0)
        out[:, t] = np.where(npig > 0, q.mean(axis=1), np.nan)
    return out


def resample_metrics(table: MatchTable, counts: np.ndarray) -> dict[str, np.ndarray]:
    """AP, AP50 and "AP50/<class>" for each row of counts [B, I] (NaN where undefined: a class without
    ground truth in that resample, as COCOeval leaves it out of the means)."""
    counts = np.asarray(counts, np.int64)
    n_thr = len(table.iou_thresholds)
    per_class = np.full((len(counts), len(table.classes), n_thr), np.nan)
    for k, m in enumerate(table.matches):
        npig = counts @ table.npig[:, k]
        step = max(1, _CHUNK // max(1, len(m.image), table.n_images))
        for s in range(0, len(counts), step):
            per_class[s:s + step, k] = _class_ap(m, counts[s:s + step], npig[s:s + step], table.recall_thresholds)
    with _no_empty_warning():
        out = {"AP": np.nanmean(per_class.mean(axis=2), axis=1), "AP50": np.nanmean(per_class[:, :, 0], axis=1)}
    out.update({f"AP50/{c}": per_class[:, k, 0] for k, c in enumerate(table.classes)})
    return out


@contextlib.contextmanager
def _no_empty_warning():
    """nanmean over nothing (a class absent from a resample, a resample without ground truth) is NaN, quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


@dataclass
class Replicates:
    """A run (or a pooled group of seed repeats) on one test set: `full` the metrics on the test set as it
    is, `values` the same metrics on each resample ([B] each; None with fewer than 2 images), `members`
    the full metrics of each run pooled (one for a single run)."""

    full: dict[str, float]
    values: dict[str, np.ndarray] | None
    n_images: int
    resamples: int
    seed: int
    members: list[dict[str, float]] = field(default_factory=list)


def bootstrap(table: MatchTable, resamples: int = RESAMPLES, seed: int = SEED) -> Replicates:
    full = {k: _float(v[0]) for k, v in resample_metrics(table, np.ones((1, table.n_images), np.int64)).items()}
    values = None
    if table.n_images >= 2:
        values = resample_metrics(table, resample_counts(table.n_images, resamples, seed))
    return Replicates(full, values, table.n_images, resamples, seed, [full])


def pool(runs: list[Replicates], seed) -> Replicates:
    """Seed repeats (runs on the same resamples) as one: per resample, the mean over n seeds drawn with
    replacement from the runs (numpy Generator `seed`: an int or a sequence of ints). `full` is the mean
    over the runs; `members` their full metrics."""
    first = runs[0]
    if any((r.n_images, r.resamples, r.seed) != (first.n_images, first.resamples, first.seed) for r in runs):
        raise ValueError("pooled runs must be resampled alike (the same images, resamples and seed)")
    with _no_empty_warning():
        full = {k: _float(np.nanmean([np.nan if r.full[k] is None else r.full[k] for r in runs])) for k in first.full}
    values = None
    if first.values is not None:
        pick = np.random.default_rng(seed).integers(0, len(runs), size=(first.resamples, len(runs)))
        rows = np.arange(first.resamples)[:, None]
        with _no_empty_warning():
            values = {k: np.nanmean(np.stack([r.values[k] for r in runs])[pick, rows], axis=1) for k in first.values}
    return Replicates(full, values, first.n_images, first.resamples, first.seed, [r.full for r in runs])


@dataclass
class Difference:
    """B - A of one metric: `diff` on the full test set, the percentile interval [lo, hi] at `level`
    and the standard error of the resampled differences; interval and se are None where undefined."""

    diff: float | None
    lo: float | None
    hi: float | None
    se: float | None

    @property
    def verdict(self) -> str | None:
        if self.lo is None:
            return None
        return B_BETTER if self.lo > 0 else A_BETTER if self.hi < 0 else WITHIN_NOISE


def interval(values: np.ndarray | None, level: float = LEVEL) -> tuple[float | None, float | None, float | None]:
    """(lo, hi, se) of resampled values: percentiles and standard deviation over the resamples where the
    metric is defined; Nones with fewer than 2 of them."""
    if values is None:
        return None, None, None
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return None, None, None
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi), float(v.std(ddof=1))


def paired(a: Replicates, b: Replicates, level: float = LEVEL) -> dict[str, Difference]:
    """B - A for each metric both have, over the same resamples of the same images."""
    if (a.n_images, a.resamples, a.seed) != (b.n_images, b.resamples, b.seed):
        raise ValueError("paired runs must be resampled alike (the same images, resamples and seed)")
    out = {}
    for k in a.full:
        if k not in b.full:
            continue
        diff = None if a.full[k] is None or b.full[k] is None else b.full[k] - a.full[k]
        lo, hi, se = interval(None if a.values is None or diff is None else b.values[k] - a.values[k], level)
        out[k] = Difference(diff, lo, hi, se)
    return out


def standard_errors(r: Replicates) -> dict[str, float | None]:
    """The bootstrap standard error of each metric over test images (None with fewer than 2 images)."""
    return {k: None if r.values is None else interval(r.values[k])[2] for k in r.full}


def _float(v) -> float | None:
    return None if v is None or np.isnan(v) else float(v)
