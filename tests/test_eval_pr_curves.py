"""PR and F1 curves: read from COCOeval's own precision array, checked against pycocotools run the documented
way, and F1-optimal thresholds worked out by hand."""
import numpy as np
import pytest

from fcos.coco_eval import _quiet, coco_evaluate, load_gt
from fcos.pr_curves import f1_thresholds, pr_curves


def _gt(boxes_per_image: dict[int, list], categories=(1, 2, 3)) -> dict:
    """boxes_per_image: {image_id: [(x, y, w, h, category_id), ...]}."""
    boxes = [(img, b) for img, bs in boxes_per_image.items() for b in bs]
    anns = [{"id": i, "image_id": img, "category_id": c, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            for i, (img, (x, y, w, h, c)) in enumerate(boxes, 1)]
    return {"images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in boxes_per_image],
            "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


def _random_case(seed=0, n_images=30):
    rng = np.random.default_rng(seed)
    boxes, dets = {}, []
    for i in range(1, n_images + 1):
        boxes[i] = []
        for _ in range(rng.integers(1, 5)):
            x, y = rng.uniform(0, 120, 2)
            w, h = rng.uniform(20, 80, 2)
            c = int(rng.integers(1, 3))        # category 3 has no ground truth
            boxes[i].append((x, y, w, h, c))
            jitter = rng.normal(0, 6, 4)
            dets.append([i, x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3], rng.uniform(0.2, 1),
                         c if rng.random() > 0.2 else 3 - c])
        for _ in range(3):
            dets.append([i, *rng.uniform(0, 150, 2), *rng.uniform(10, 50, 2), rng.uniform(0, 0.6), rng.integers(1, 4)])
    return _gt(boxes), np.array(dets)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_curves_are_pycocotools_precision_at_iou_50_area_all_100_dets(backend):
    from pycocotools.cocoeval import COCOeval
    gt, dets = _random_case()
    m = coco_evaluate(gt, dets, backend)
    coco_gt = load_gt(gt, "pycocotools")
    ev = COCOeval(coco_gt, _quiet(lambda: coco_gt.loadRes(dets)), "bbox")
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    ref_p, ref_s = ev.eval["precision"][0, :, :, 0, 2], ev.eval["scores"][0, :, :, 0, 2]   # [101, K]

    curves = pr_curves(m["precision"], m["scores"], m["classes"], 0.5, m["iou_thresholds"])
    assert curves.classes == ["c1", "c2", "c3"] and curves.iou == 0.5
    np.testing.assert_allclose(curves.precision[:, :2], ref_p[:, :2], atol=1e-12)
    np.testing.assert_allclose(curves.scores[:, :2], ref_s[:, :2], atol=1e-12)
    assert (ref_p[:, 2] == -1).all() and np.isnan(curves.precision[:, 2]).all()      # no ground truth: absent
    assert curves.present.tolist() == [True, True, False]
    for k, name in enumerate(["c1", "c2"]):
        assert curves.ap[k] == pytest.approx(m["per_class_AP50"][name], abs=1e-12)
    assert curves.mean_precision().mean() == pytest.approx(m["AP50"], abs=1e-12)
    assert 0.3 < m["AP50"] < 0.95       # a case with real misses and false positives

    best = f1_thresholds(curves)
    for k, name in enumerate(["c1", "c2"]):
        f1 = 2 * ref_p[:, k] * curves.recall / np.maximum(ref_p[:, k] + curves.recall, 1e-12)
        r = int(np.argmax(f1))
        assert best["per_class"][name]["f1"] == pytest.approx(f1[r])
        assert best["per_class"][name]["threshold"] == pytest.approx(ref_s[r, k])
        assert best["per_class"][name]["recall"] == pytest.approx(r / 100)
    assert best["per_class"]["c3"] == {"f1": None, "threshold": None, "precision": None, "recall": None, "AP": None}


def test_f1_optimal_threshold_of_a_hand_made_case():
    """Class c1 has two objects; detections: hit (0.9), miss (0.8), hit (0.7). Keeping >= 0.9: P 1, R 0.5,
    F1 0.667; keeping >= 0.7: P 2/3, R 1, F1 0.8: the threshold is 0.7. Class c2: one object, found at 0.6
    after two false positives (0.95, 0.85); F1 1/2 at threshold 0.6."""
    gt = _gt({1: [(10, 10, 50, 50, 1), (100, 100, 40, 40, 2)], 2: [(20, 20, 60, 60, 1)]}, categories=(1, 2))
    dets = np.array([[1, 10, 10, 50, 50, 0.9, 1], [2, 150, 150, 30, 30, 0.8, 1], [2, 20, 21, 60, 60, 0.7, 1],
                     [1, 0, 150, 30, 30, 0.95, 2], [2, 0, 150, 30, 30, 0.85, 2], [1, 100, 100, 40, 41, 0.6, 2]])
    m = coco_evaluate(gt, dets)
    curves = pr_curves(m["precision"], m["scores"], m["classes"])
    best = f1_thresholds(curves)
    c1, c2 = best["per_class"]["c1"], best["per_class"]["c2"]
    assert c1["f1"] == pytest.approx(0.8) and c1["threshold"] == pytest.approx(0.7)
    assert c1["precision"] == pytest.approx(2 / 3) and c1["recall"] == pytest.approx(1.0)
    assert c2["f1"] == pytest.approx(0.5) and c2["threshold"] == pytest.approx(0.6)

    f1 = curves.f1_at(np.array([0.0, 0.65, 0.75, 0.9, 0.96]))   # F1 when keeping scores >= each value
    np.testing.assert_allclose(f1[:, 0], [0.8, 0.8, 2 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(f1[:, 1], [0.5, 0.0, 0.0, 0.0, 0.0])
    # One threshold for all: mean F1 (0.8 + 0.5) / 2 for any threshold up to 0.6; the highest is kept.
    assert best["all"]["f1"] == pytest.approx(0.65) and best["all"]["threshold"] == 0.6


def test_no_true_positive_gives_no_threshold():
    gt = _gt({1: [(10, 10, 50, 50, 1)]}, categories=(1,))
    m = coco_evaluate(gt, np.array([[1, 120, 120, 30, 30, 0.9, 1]]))
    best = f1_thresholds(pr_curves(m["precision"], m["scores"], m["classes"]))
    assert best["per_class"]["c1"]["f1"] == 0 and best["per_class"]["c1"]["threshold"] is None
    assert best["all"] == {"f1": 0.0, "threshold": None}


def test_empty_detections_give_zero_curves():
    gt = _gt({1: [(10, 10, 50, 50, 1)]}, categories=(1, 2))
    m = coco_evaluate(gt, np.zeros((0, 7)))
    curves = pr_curves(m["precision"], m["scores"], m["classes"])
    assert (curves.precision[:, 0] == 0).all() and curves.present.tolist() == [True, False]
