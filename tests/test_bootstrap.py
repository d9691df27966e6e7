"""fcos/bootstrap.py against COCOeval itself: on the full test set its AP, AP50 and per-class AP50 are
faster-coco-eval's and pycocotools' (1e-12); on a resample they are COCOeval's on a dataset holding each
image as many times as it was drawn; and the intervals behave: identical runs give exactly 0, detections
shuffled between images fall far outside, under 2 images or a class without objects give none."""
import numpy as np
import pytest
from bootstrap_data import synthetic

from fcos.bootstrap import (
    A_BETTER,
    WITHIN_NOISE,
    bootstrap,
    gt_hash,
    match_table,
    paired,
    pool,
    resample_counts,
    resample_metrics,
    standard_errors,
)
from fcos.coco_eval import coco_evaluate


def coco_metrics(gt, det, backend):
    m = coco_evaluate(gt, det, backend)
    return {"AP": m["AP"], "AP50": m["AP50"], **{f"AP50/{c}": v for c, v in m["per_class_AP50"].items()}}


def assert_same(ours: dict, theirs: dict, row: int = 0):
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        if v is None:
            assert np.isnan(ours[k][row]), k
        else:
            assert abs(ours[k][row] - v) < 1e-12, (k, ours[k][row], v)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
@pytest.mark.parametrize("case", [{}, {"empty_class": True, "crowd": 0.3}, {"quality": 0.3}, {"per_image": 40}])
def test_full_set_equals_coco_eval(case, backend, capsys):
    """Scores rounded to 2 decimals: ties between images and within them are ordered as COCOeval orders them."""
    gt, det = synthetic(seed=len(case), **case)
    table = match_table(gt, det)
    assert_same(resample_metrics(table, np.ones((1, table.n_images), np.int64)), coco_metrics(gt, det, backend))


def _repeated(gt: dict, det: np.ndarray, counts: np.ndarray) -> tuple[dict, np.ndarray]:
    """The dataset a resample stands for: image i `counts[i]` times (new ids, copies side by side)."""
    images, anns, dets = [], [], []
    for i, img in enumerate(sorted(gt["images"], key=lambda im: im["id"])):
        for copy in range(counts[i]):
            new = 100 * i + copy + 1
            images.append({"id": new})
            for a in gt["annotations"]:
                if a["image_id"] == img["id"]:
                    anns.append({**a, "id": len(anns) + 1, "image_id": new})
            d = det[det[:, 0] == img["id"]].copy()
            d[:, 0] = new
            dets.append(d)
    return {"images": images, "annotations": anns, "categories": gt["categories"]}, np.concatenate(dets)


def test_a_resample_equals_coco_eval_on_the_repeated_images(capsys):
    """Weighted accumulation = COCOeval over the multiset of images (distinct scores: with ties, copies of an
    image are ranked together, which is one valid order among several)."""
    for seed, empty in ((0, False), (1, True)):
        gt, det = synthetic(n_images=24, seed=seed, crowd=0.15, empty_class=empty)
        det[:, 5] += np.random.default_rng(seed).uniform(0, 1e-3, len(det))
        table = match_table(gt, det)
        counts = resample_counts(table.n_images, 4, seed)
        ours = resample_metrics(table, counts)
        for b in range(len(counts)):
            assert_same(ours, coco_metrics(*_repeated(gt, det, counts[b]), "pycocotools"), row=b)


def test_identical_runs_give_exactly_zero_and_shuffled_detections_fall_outside():
    gt, det = synthetic(n_images=120, seed=3)
    a = bootstrap(match_table(gt, det), 500, seed=1)
    same = paired(a, bootstrap(match_table(gt, det.copy()), 500, seed=1))
    for k in ("AP", "AP50", "AP50/a"):
        d = same[k]
        assert (d.diff, d.lo, d.hi, d.se, d.verdict) == (0.0, 0.0, 0.0, 0.0, WITHIN_NOISE)
    shuffled = det.copy()
    ids = np.unique(det[:, 0])
    shuffled[:, 0] = np.random.default_rng(0).permutation(ids)[np.searchsorted(ids, det[:, 0])]
    worse = paired(a, bootstrap(match_table(gt, shuffled), 500, seed=1))
    for k in ("AP", "AP50"):
        d = worse[k]
        assert d.verdict == A_BETTER and d.hi < 0 and d.diff < -10 * d.se, (k, d)
        assert d.lo <= d.diff <= d.hi
    se = standard_errors(a)
    assert 0.005 < se["AP"] < 0.1 and 0.005 < se["AP50"] < 0.1


def test_under_two_images_and_classes_without_objects_give_no_interval():
    gt, det = synthetic(n_images=1, seed=5, empty_class=True)
    one = bootstrap(match_table(gt, det), 100)
    assert one.values is None and all(v is None for v in standard_errors(one).values())
    d = paired(one, one)["AP"]
    assert d.diff == 0.0 and (d.lo, d.hi, d.se, d.verdict) == (None, None, None, None)
    gt, det = synthetic(n_images=30, seed=5, empty_class=True)
    r = bootstrap(match_table(gt, det), 100)
    assert r.full["AP50/d"] is None and np.isnan(r.values["AP50/d"]).all()
    d = paired(r, r)["AP50/d"]
    assert (d.diff, d.lo, d.verdict) == (None, None, None)
    nothing = bootstrap(match_table(gt, np.zeros((0, 7))), 100)            # no detection at all: AP 0, as COCO
    assert nothing.full["AP"] == coco_evaluate(gt, np.zeros((0, 7)))["AP"] == 0.0 and nothing.full["AP50/d"] is None


def test_pooled_seeds():
    """Copies of one run pool to that run; two different runs pool to their mean, with a wider interval
    than either alone would have around it."""
    gt, det = synthetic(n_images=80, seed=7)
    _, other = synthetic(n_images=80, seed=7, quality=0.5)
    a = bootstrap(match_table(gt, det), 300)
    b = bootstrap(match_table(gt, other), 300)
    same = pool([a, a, a], seed=4)
    assert same.full == pytest.approx(a.full, abs=1e-15)
    assert all(np.allclose(same.values[k], a.values[k], rtol=0, atol=1e-15, equal_nan=True) for k in a.values)
    both = pool([a, b], seed=4)
    assert both.full["AP"] == pytest.approx((a.full["AP"] + b.full["AP"]) / 2) and len(both.members) == 2
    assert standard_errors(both)["AP"] > max(standard_errors(a)["AP"], standard_errors(b)["AP"])
    with pytest.raises(ValueError, match="resampled alike"):
        pool([a, bootstrap(match_table(gt, det), 300, seed=1)], seed=0)


def test_resample_counts_and_gt_hash():
    counts = resample_counts(50, 200, seed=3)
    assert counts.shape == (200, 50) and (counts.sum(1) == 50).all()
    assert np.array_equal(counts, resample_counts(50, 200, 3))
    gt, det = synthetic(n_images=10, seed=2, crowd=0.5)
    before = gt_hash(gt)
    match_table(gt, det)                                    # COCOeval marks crowd boxes "ignore": not in gt
    assert gt_hash(gt) == before
    reordered = {"categories": gt["categories"][::-1], "images": [{**i, "file_name": "x"} for i in gt["images"][::-1]],
                 "annotations": [{**a, "id": 1000 + n} for n, a in enumerate(gt["annotations"][::-1])]}
    assert gt_hash(reordered) == gt_hash(gt)
    moved = {**gt, "annotations": [{**gt["annotations"][0], "bbox": [0, 0, 1, 1]}, *gt["annotations"][1:]]}
    crowd = {**gt, "annotations": [{**a, "iscrowd": 1 - a["iscrowd"]} for a in gt["annotations"]]}
    fewer = {**gt, "images": gt["images"][1:]}
    assert len({gt_hash(gt), gt_hash(moved), gt_hash(crowd), gt_hash(fewer)}) == 4
