"""The matching half of the TIDE breakdown (fcos/tide.py holds the definitions and the AP of each fix): each
image's detections matched greedily to its ground truth, best score first, and every unmatched detection
given its error type, vectorised over blocks of images of similar box counts."""
from __future__ import annotations

import numpy as np

MAIN_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
CLS, LOC, BOTH, DUPE, BKG, MISS = range(6)   # error codes: indices into MAIN_ERRORS
TP, NOT_EVALUATED = -1, -2                    # det_code of a matched detection, of one beyond max_dets
POS_THRESH, BG_THRESH = 0.5, 0.1
CHUNK_ELEMENTS = 1_000_000                    # detections x boxes per vectorised block of images


def box_iou(d: np.ndarray, g: np.ndarray, crowd: bool = False) -> np.ndarray:
    """IoU of xywh boxes d [..., 4] and g [..., 4] (broadcast), as pycocotools computes it (tidecv calls
    pycocotools): a box pair without overlap is 0; crowd: intersection over d's area."""
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    da = d[..., 2] * d[..., 3]
    union = np.broadcast_to(da, inter.shape) if crowd else da + g[..., 2] * g[..., 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


class Truth:
    """The ground truth as arrays: non-crowd boxes sorted by image (annotation order kept), crowd apart."""

    def __init__(self, gt: dict):
        self.image_ids = np.array([im["id"] for im in gt["images"]], np.int64)   # in the ground truth's order
        self.cat_ids = np.array(sorted(c["id"] for c in gt["categories"]), np.int64)
        anns = gt["annotations"]
        img = positions(self.image_ids, np.array([a["image_id"] for a in anns], np.float64))
        cls = positions(self.cat_ids, np.array([a["category_id"] for a in anns], np.float64))
        box = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        keep = (img >= 0) & (cls >= 0)
        index = np.flatnonzero(keep)
        index = index[np.argsort(img[index], kind="stable")]
        self.ann_index, self.img, self.cls, self.box, self.crowd = index, img[index], cls[index], box[index], \
            crowd[index]
        self.num_classes = len(self.cat_ids)
        n_img = len(self.image_ids)
        real = ~self.crowd
        self.real_start, self.real_count = _runs(self.img[real], n_img)
        self.real_rows = np.flatnonzero(real)
        self.crowd_start, self.crowd_count = _runs(self.img[self.crowd], n_img)
        self.crowd_rows = np.flatnonzero(self.crowd)
        self.n_gt = np.bincount(self.cls[real], minlength=self.num_classes)

    def used_by(self, m: Matches) -> np.ndarray:
        used = np.zeros(len(self.cls), bool)
        used[m.gt[m.code == TP]] = True
        return used


class Matches:
    """Per evaluated detection (sorted): code (TP or error), ignored, gt row (matched or pointed at)."""

    def __init__(self, n: int):
        self.code = np.full(n, BKG, np.int8)
        self.ignored = np.zeros(n, bool)
        self.gt = np.full(n, -1, np.int64)


def positions(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in sorted_ids (or in an unsorted id list through its sort), -1 where absent."""
    order = np.argsort(sorted_ids, kind="stable")
    ids = sorted_ids[order]
    v = np.asarray(values, np.float64)
    at = np.clip(np.searchsorted(ids, v), 0, max(len(ids) - 1, 0))
    ok = (len(ids) > 0) & (ids[at] == v) if len(ids) else np.zeros(len(v), bool)
    return np.where(ok, order[at] if len(ids) else 0, -1)


def _runs(sorted_img: np.ndarray, n_img: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.searchsorted(sorted_img, np.arange(n_img))
    end = np.searchsorted(sorted_img, np.arange(n_img), side="right")
    return start, end - start


def match_all(det, cls, img, g: Truth, m: Matches, pos: float, bg: float) -> None:
    """Matching and error types of every image holding detections, in blocks of images of similar box
    counts (little padding)."""
    d_start, d_count = _runs(img, len(g.image_ids))
    with_dets = np.flatnonzero(d_count)
    with_dets = with_dets[np.argsort(g.real_count[with_dets], kind="stable")]
    n_d, n_g = d_count[with_dets].tolist(), np.maximum(g.real_count, g.crowd_count)[with_dets].tolist()
    start, most_d, most_g = 0, 0, 0
    for j in range(len(with_dets) + 1):
        if j < len(with_dets):
            d, gg = max(most_d, n_d[j]), max(most_g, n_g[j], 1)
            if j == start or (j + 1 - start) * d * gg <= CHUNK_ELEMENTS:
                most_d, most_g = d, gg
                continue
        if j > start:
            _match_block(with_dets[start:j], det, cls, d_start, d_count, g, m, pos, bg)
        start, most_d, most_g = j, n_d[j] if j < len(n_d) else 0, max(n_g[j], 1) if j < len(n_g) else 0


def _gather(start, count, width):
    """[B, width] row indices (0 where padded) and the validity mask of per-image runs."""
    cols = np.arange(width)
    valid = cols[None, :] < count[:, None]
    return np.where(valid, start[:, None] + cols[None, :], 0), valid


def _match_block(images, det, cls, d_start, d_count, g: Truth, m: Matches, pos: float, bg: float) -> None:
    n = len(images)
    rows, dvalid = _gather(d_start[images], d_count[images], int(d_count[images].max()))   # [B, D]
    dbox, dcls = det[rows, 1:5], cls[rows]
    width_g = int(g.real_count[images].max())
    code = np.full(rows.shape, BKG, np.int8)
    match = np.full(rows.shape, -1, np.int64)
    target = np.full(rows.shape, -1, np.int64)
    if width_g:
        gi, gvalid = _gather(g.real_start[images], g.real_count[images], width_g)          # [B, G]
        grow = g.real_rows[gi]
        iou = np.where(gvalid[:, None, :], box_iou(dbox[:, :, None, :], g.box[grow][:, None, :, :]), 0.0)
        same = (dcls[:, :, None] == g.cls[grow][:, None, :]) & gvalid[:, None, :]
        cls_iou = iou * same
        used = np.zeros((n, width_g), bool)
        ar = np.arange(n)
        for r in range(rows.shape[1]):
            row = np.where(used, 0.0, cls_iou[:, r, :])
            best = row.argmax(1)
            hit = (row[ar, best] >= pos) & dvalid[:, r]
            match[hit, r] = best[hit]
            used[ar[hit], best[hit]] = True
    ignored = _ignored(images, dbox, dcls, match < 0, g, pos)
    if width_g:
        has_gt = (g.real_count[images] > 0)[:, None]
        a_idx = cls_iou.argmax(2)
        a = np.take_along_axis(cls_iou, a_idx[..., None], 2)[..., 0]
        noncls = iou * ~same
        b_idx = noncls.argmax(2)
        b = np.take_along_axis(noncls, b_idx[..., None], 2)[..., 0]
        c = (cls_iou * used[:, None, :]).max(2)
        d = iou.max(2)
        loc = has_gt & (a >= bg) & (a <= pos)
        wrong = has_gt & ~loc & (b >= pos)
        dupe = has_gt & ~loc & ~wrong & (c >= pos)
        other = has_gt & ~loc & ~wrong & ~dupe & (d > bg)
        code[loc], code[wrong], code[dupe], code[other] = LOC, CLS, DUPE, BOTH
        target = np.where(loc, a_idx, np.where(wrong, b_idx, -1))
        code[match >= 0] = TP
        to_row = lambda local: np.where(local >= 0, g.real_rows[gi[np.arange(n)[:, None], np.maximum(local, 0)]], -1)
        match, target = to_row(match), to_row(target)
    ok = dvalid
    m.code[rows[ok]] = code[ok]
    m.ignored[rows[ok]] = ignored[ok]
    m.gt[rows[ok]] = np.where(match >= 0, match, target)[ok]


def _ignored(images, dbox, dcls, unmatched, g: Truth, pos: float) -> np.ndarray:
    """[B, D] unmatched detections on a crowd region of their class (intersection / detection area > pos)."""
    width = int(g.crowd_count[images].max())
    if not width:
        return np.zeros(dbox.shape[:2], bool)
    ci, cvalid = _gather(g.crowd_start[images], g.crowd_count[images], width)
    crow = g.crowd_rows[ci]
    cover = box_iou(dbox[:, :, None, :], g.box[crow][:, None, :, :], crowd=True)
    same = (dcls[:, :, None] == g.cls[crow][:, None, :]) & cvalid[:, None, :]
    return unmatched & ((cover > pos) & same).any(2)
