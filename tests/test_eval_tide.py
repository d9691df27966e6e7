"""fcos.tide against tidecv 1.0.1 (the TIDE paper's own toolbox) on the same ground truth and detections:
hand-made images of each error type, worked-out AP changes, random cases with crowd regions, ties, images
without boxes or detections; and the bad inputs (no detections, a class without ground truth, no images)."""
import numpy as np
import pytest

from fcos.tide import CLS, LOC, MAIN_ERRORS, MISS, SPECIAL_ERRORS, TP, tide, worst_images
from fcos.tide_match import BKG, BOTH, DUPE

tidecv = pytest.importorskip("tidecv")


def tidecv_breakdown(gt: dict, dets: np.ndarray) -> dict:
    """tidecv's numbers (as fractions) on a COCO dict and a [N, 7] array, built through its public Data API
    (its COCO loader needs segmentation fields); per class from its own fix_errors data."""
    from tidecv import TIDE, Data
    from tidecv.errors.main_errors import FalsePositiveError

    truth, preds = Data("gt"), Data("dets")
    for im in gt["images"]:
        truth.add_image(im["id"], str(im["id"]))
    for c in gt["categories"]:
        truth.add_class(c["id"], c["name"])
    for a in gt["annotations"]:
        add = truth.add_ignore_region if a.get("iscrowd") else truth.add_ground_truth
        add(a["image_id"], a["category_id"], list(map(float, a["bbox"])))
    for d in np.asarray(dets).reshape(-1, 7):
        preds.add_detection(int(d[0]), int(d[6]), float(d[5]), list(map(float, d[1:5])))
    t = TIDE()
    run = t.evaluate(truth, preds, mode=TIDE.BOX)

    def per_class(ap_data):
        return {k: o.get_ap() / 100 for k, o in ap_data.objs.items() if not o.is_empty()}

    out = {"ap": run.ap / 100, "per_class_ap": per_class(run.ap_data),
           "main": {k: v / 100 for k, v in t.get_main_errors()["dets"].items()},
           "special": {k: v / 100 for k, v in t.get_special_errors()["dets"].items()},
           "counts": {e.short_name: n for e, n in run.count_errors().items()}, "fixed": {}}
    for error in TIDE._error_types:
        out["fixed"][error.short_name] = per_class(run.fix_errors(lambda e, E=error: isinstance(e, E)))
    out["fixed"]["FalsePos"] = per_class(run.fix_errors(transform=FalsePositiveError.fix))
    out["fixed"]["FalseNeg"] = per_class(run.fix_errors(false_neg_dict=run.false_negatives))
    return out


def assert_same(ours, ref):
    assert ours.ap == pytest.approx(ref["ap"], abs=1e-12)
    for name in MAIN_ERRORS:
        assert ours.main[name] == pytest.approx(ref["main"][name], abs=1e-12), name
        assert ours.counts[name] == ref["counts"][name], name
    for name in SPECIAL_ERRORS:
        assert ours.special[name] == pytest.approx(ref["special"][name], abs=1e-12), name
    for c, ap in ours.per_class_ap.items():
        assert ap == (pytest.approx(ref["per_class_ap"][c], abs=1e-12) if c in ref["per_class_ap"] else None)
    for name in (*MAIN_ERRORS, *SPECIAL_ERRORS):
        fixed = ref["fixed"][name]
        values = ours.per_class_main if name in MAIN_ERRORS else ours.per_class_special
        for c, d in values.items():
            before, after = ref["per_class_ap"].get(c), fixed.get(c)
            if before is None or after is None:
                assert d[name] is None, (name, c)
            else:
                want = max(after - before, 0) if name in MAIN_ERRORS else after - before
                assert d[name] == pytest.approx(want, abs=1e-12), (name, c)


def coco(images: dict, categories=(1, 2, 3)) -> dict:
    """images: {image_id: [(x, y, w, h, category_id[, iscrowd]), ...]}."""
    anns = [{"id": n, "image_id": i, "category_id": b[4], "bbox": list(b[:4]), "iscrowd": int(len(b) > 5 and b[5])}
            for n, (i, b) in enumerate(((i, b) for i, bs in images.items() for b in bs), 1)]
    return {"images": [{"id": i} for i in images], "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


def test_each_error_type_on_its_own_image():
    """Each image holds a class-1 box and a class-2 box, the latter detected right. Image 1: the class-1 box
    detected as class 3 (Cls). 2: as class 1 but 20 px off, IoU 1/3 (Loc). 3: found, plus a class-3
    detection 18 px off, IoU 0.38 (Both). 4: found twice (Dupe). 5: found, plus a detection far from any box
    (Bkg). 6: not detected (Miss)."""
    gt = coco({i: [(10, 10, 40, 40, 1), (100, 100, 40, 40, 2)] for i in range(1, 7)})
    right = lambda i: [i, 100, 100, 40, 40, 0.95, 2]
    hit = lambda i, score: [i, 10, 10, 40, 40, score, 1]
    dets = np.array([
        right(1), [1, 10, 10, 40, 40, 0.9, 3],
        right(2), [2, 30, 10, 40, 40, 0.8, 1],
        right(3), hit(3, 0.85), [3, 28, 10, 40, 40, 0.7, 3],
        right(4), hit(4, 0.9), [4, 11, 10, 40, 40, 0.6, 1],
        right(5), hit(5, 0.85), [5, 150, 10, 30, 30, 0.5, 1],
        right(6)])
    r = tide(gt, dets)
    assert r.det_code.tolist() == [TP, CLS, TP, LOC, TP, TP, BOTH, TP, TP, DUPE, TP, TP, BKG, TP]
    assert r.det_gt[[1, 3, 6, 8]].tolist() == [0, 2, -1, 6]          # the boxes they point at or matched
    assert r.gt_missed.tolist() == [False] * 10 + [True, False]       # image 6's class-1 box
    assert r.gt_found.tolist() == [False, True, False, True] + [True] * 6 + [False, True]
    expected = np.zeros((6, 6), int)
    for img, err in enumerate((CLS, LOC, BOTH, DUPE, BKG, MISS)):
        expected[img, err] = 1
    np.testing.assert_array_equal(r.image_counts, expected)
    assert r.counts == dict.fromkeys(MAIN_ERRORS, 1)
    assert_same(r, tidecv_breakdown(gt, dets))


def test_fixing_changes_ap_as_worked_out_by_hand():
    """One class, two boxes in one image. A: a hit at 0.9, a background detection at 0.8, box B missed:
    precision 1 up to recall 0.5 and nothing beyond, AP = 51/101 (recall points 0, 0.01, ..., 0.5). Removing
    the background detection changes nothing (it comes after the hit); fixing the miss (one box fewer)
    gives recall 1 at precision 1: +50/101; FalseNeg the same; FalsePos nothing.
    B: the background detection at 0.95, above the hit: precision 0.5 up to recall 0.5, AP = 25.5/101; fixing
    Bkg brings back 51/101."""
    gt = coco({1: [(0, 0, 20, 20, 1), (50, 50, 20, 20, 1)]}, categories=(1,))
    a = tide(gt, np.array([[1, 0, 0, 20, 20, 0.9, 1], [1, 100, 0, 20, 20, 0.8, 1]]))
    assert a.ap == pytest.approx(51 / 101)
    assert a.main == pytest.approx({"Cls": 0, "Loc": 0, "Both": 0, "Dupe": 0, "Bkg": 0, "Miss": 50 / 101})
    assert a.special == pytest.approx({"FalsePos": 0, "FalseNeg": 50 / 101})
    assert a.per_class_main[1]["Miss"] == pytest.approx(50 / 101)
    b = tide(gt, np.array([[1, 0, 0, 20, 20, 0.9, 1], [1, 100, 0, 20, 20, 0.95, 1]]))
    assert b.ap == pytest.approx(25.5 / 101)
    assert b.main["Bkg"] == pytest.approx(25.5 / 101) and b.special["FalsePos"] == pytest.approx(25.5 / 101)
    assert b.image_loss[0] == pytest.approx(b.main["Bkg"] + b.main["Miss"])   # the only image loses it all
    for r, dets in ((a, [[1, 0, 0, 20, 20, 0.9, 1], [1, 100, 0, 20, 20, 0.8, 1]]),
                    (b, [[1, 0, 0, 20, 20, 0.9, 1], [1, 100, 0, 20, 20, 0.95, 1]])):
        assert_same(r, tidecv_breakdown(gt, np.array(dets)))


def test_a_fixed_error_goes_to_the_best_scored_detection_of_its_box():
    """Image 1: two loose class-1 detections (0.7, 0.6) and a class-2 one at 0.8 on one unmatched box: all
    three point at it, and only the best-scored, the Cls error, would become a hit (tidecv's BestGTMatch,
    shared by Cls and Loc), so fixing Loc gains nothing. Image 2: a Loc error on a box already matched is
    removed when fixed."""
    gt = coco({1: [(0, 0, 40, 40, 1)], 2: [(0, 0, 40, 40, 1)]}, categories=(1, 2))
    dets = np.array([[1, 15, 0, 40, 40, 0.7, 1], [1, 0, 15, 40, 40, 0.6, 1], [1, 0, 0, 40, 40, 0.8, 2],
                     [2, 0, 0, 40, 40, 0.9, 1], [2, 15, 15, 40, 40, 0.5, 1]])
    r = tide(gt, dets)
    assert r.det_code.tolist() == [LOC, LOC, CLS, TP, LOC]
    assert r.main["Loc"] == 0 and r.main["Cls"] > 0 and r.counts["Miss"] == 0
    assert_same(r, tidecv_breakdown(gt, dets))


def random_case(seed: int, n_images: int = 60):
    """Boxes of 3 classes (class 4: detections only), some crowd regions, images without boxes and images
    without detections, scores rounded to 2 digits (many ties), one image with 130 detections (max_dets)."""
    rng = np.random.default_rng(seed)
    images, dets = {}, []
    for i in range(1, n_images + 1):
        boxes = []
        for _ in range(rng.integers(0, 6)):
            x, y, w, h = *rng.uniform(0, 150, 2), *rng.uniform(8, 60, 2)
            boxes.append((x, y, w, h, int(rng.integers(1, 4)), int(rng.random() < 0.08)))
        images[i] = boxes
        if i % 11 == 0:
            continue                                        # an image without detections
        for x, y, w, h, c, _ in boxes:
            for _ in range(rng.integers(0, 3)):             # found, loose, duplicated, relabelled
                j = rng.normal(0, rng.choice([2, 8]), 4)
                dets.append([i, x + j[0], y + j[1], max(2, w + j[2]), max(2, h + j[3]), round(rng.random(), 2),
                             c if rng.random() > 0.15 else int(rng.integers(1, 5))])
        for _ in range(130 if i == 7 else rng.integers(0, 6)):
            dets.append([i, *rng.uniform(0, 180, 2), *rng.uniform(5, 50, 2), round(rng.random() * 0.6, 2),
                         int(rng.integers(1, 5))])
    return coco(images, categories=(1, 2, 3, 4)), np.array(dets)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_equal_tidecv(seed):
    gt, dets = random_case(seed)
    r = tide(gt, dets)
    assert r.ap is not None and 0.05 < r.ap < 0.95
    assert all(r.counts[e] > 0 for e in MAIN_ERRORS)                 # every type occurs
    assert r.per_class_ap[4] == 0.0                                   # detections without ground truth: tidecv's 0
    assert_same(r, tidecv_breakdown(gt, dets))
    assert (r.det_code == -2).sum() == (dets[:, 0] == 7).sum() - 100  # image 7's beyond max_dets
    np.testing.assert_array_equal(r.image_counts.sum(0), [r.counts[e] for e in MAIN_ERRORS])
    # The estimated losses share out the main dAPs over the images.
    assert r.image_loss.sum() == pytest.approx(sum(v for v in r.main.values() if v))


def test_worst_images_rank_by_loss_then_error_count():
    gt, dets = random_case(0)
    r = tide(gt, dets)
    worst = worst_images(r, 5)
    assert len(worst) == 5
    assert list(r.image_loss[worst]) == sorted(r.image_loss[worst], reverse=True)
    assert r.image_loss[worst[-1]] >= np.sort(r.image_loss)[-5]
    clean = coco({1: [(0, 0, 20, 20, 1)]}, categories=(1,))
    assert len(worst_images(tide(clean, np.array([[1, 0, 0, 20, 20, 0.9, 1]])), 5)) == 0   # no error: none


def test_no_detections_at_all_every_box_missed():
    gt, _ = random_case(0)
    r = tide(gt, np.zeros((0, 7)))
    assert r.ap == 0.0 and r.counts["Miss"] == sum(not a["iscrowd"] for a in gt["annotations"])
    assert r.main["Miss"] is None            # fixing every miss leaves no class to average: undefined, not 0
    assert r.main["Cls"] == 0 and r.special["FalseNeg"] is None


def test_a_class_without_ground_truth_or_detections_has_no_values():
    gt = coco({1: [(0, 0, 20, 20, 1)]}, categories=(1, 2))
    r = tide(gt, np.array([[1, 0, 0, 20, 20, 0.9, 1]]))
    assert r.ap == 1.0 and r.per_class_ap == {1: 1.0, 2: None}
    assert set(r.per_class_main[2].values()) == {None} and set(r.per_class_special[2].values()) == {None}


def test_no_images_gives_no_values():
    r = tide(coco({}), np.zeros((0, 7)))
    assert r.ap is None and set(r.main.values()) == {None} and r.counts == dict.fromkeys(MAIN_ERRORS, 0)
    assert len(r.image_ids) == 0 and len(worst_images(r, 3)) == 0


def test_no_boxes_at_all_every_detection_is_background():
    """Images without any box (tidecv itself divides by zero here, fixing Bkg leaving no class to average)."""
    dets = np.array([[1, 0, 0, 20, 20, 0.9, 1], [2, 5, 5, 10, 10, 0.4, 2]])
    r = tide(coco({1: [], 2: []}), dets)
    assert r.ap == 0.0 and r.counts["Bkg"] == 2 and r.main["Bkg"] is None and r.main["Cls"] == 0
    assert list(r.det_code) == [BKG, BKG] and list(r.det_gt) == [-1, -1]
