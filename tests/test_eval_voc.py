"""VOC's metric (fcos.voc_eval): one hand-checked case per rule, and object-detection-metrics (podm, the
"Object Detection Metrics" reference) on the same detections for both interpolations."""
import numpy as np
import pytest

from fcos.coco_eval import coco_evaluate
from fcos.voc_eval import voc_evaluate


def coco(images: dict, categories=(1, 2)) -> dict:
    """images: {image_id: [(x, y, w, h, category_id[, difficult]), ...]}."""
    boxes = [(i, b) for i, bs in images.items() for b in bs]
    anns = [{"id": n, "image_id": i, "category_id": b[4], "bbox": list(b[:4]), "area": b[2] * b[3], "iscrowd": 0,
             "difficult": int(len(b) > 5 and b[5])} for n, (i, b) in enumerate(boxes, 1)]
    return {"images": [{"id": i, "width": 300, "height": 300} for i in images], "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


BOTH = pytest.mark.parametrize("interpolation", ["voc07", "voc"])


@BOTH
def test_a_detection_on_a_difficult_box_is_neither_true_nor_false(interpolation):
    """A difficult box D and an ordinary box A. The best detection sits on D, the next on A: ignoring the
    first leaves one hit out of one counted box, AP 1. D, never found otherwise, is no miss either."""
    gt = coco({1: [(0, 0, 50, 50, 1, 1), (100, 100, 50, 50, 1)]}, categories=(1,))
    dets = np.array([[1, 0, 0, 50, 50, 0.9, 1], [1, 100, 100, 50, 50, 0.8, 1]])
    r = voc_evaluate(gt, dets, interpolation)
    assert r["per_class_AP"] == {1: 1.0} and r["num_gt"] == {1: 1} and r["mAP"] == 1.0
    assert voc_evaluate(gt, dets[1:], interpolation)["mAP"] == 1.0           # D missed: not counted
    counted = coco({1: [(0, 0, 50, 50, 1), (100, 100, 50, 50, 1)]}, categories=(1,))
    assert voc_evaluate(counted, dets[:1], interpolation)["mAP"] == pytest.approx(
        6 / 11 if interpolation == "voc07" else 0.5)                         # the same box, not difficult


def test_duplicates_are_false_positives_and_the_interpolations_differ():
    """Boxes A and B; detections: A (0.9, hit), A again (0.8, duplicate), B (0.7, hit): precision 1, 1/2, 2/3
    at recall 1/2, 1/2, 1. 11-point: recall thresholds 0-0.5 give 1, 0.6-1 give 2/3: (6 + 5 * 2/3) / 11 =
    28/33. All-point: 1/2 * 1 + 1/2 * 2/3 = 5/6."""
    gt = coco({1: [(0, 0, 50, 50, 1), (100, 100, 50, 50, 1)]}, categories=(1,))
    dets = np.array([[1, 0, 0, 50, 50, 0.9, 1], [1, 2, 0, 50, 50, 0.8, 1], [1, 100, 100, 50, 50, 0.7, 1]])
    assert voc_evaluate(gt, dets, "voc07")["mAP"] == pytest.approx(28 / 33)
    assert voc_evaluate(gt, dets, "voc")["mAP"] == pytest.approx(5 / 6)


def test_a_detection_takes_its_best_box_even_when_taken_unlike_cocoeval():
    """Boxes A (0,0)-(100,100) and B shifted 20 px (IoU 0.67). The first detection hits A; the second
    overlaps A (0.90) more than B (0.74): VOC counts it a duplicate of A (precision 1/2 at recall 1/2,
    11-point AP 6/11), COCOeval matches it to B (AP50 1)."""
    gt = coco({1: [(0, 0, 100, 100, 1), (20, 0, 100, 100, 1)]}, categories=(1,))
    dets = np.array([[1, 0, 0, 100, 100, 0.9, 1], [1, 5, 0, 100, 100, 0.8, 1]])
    assert voc_evaluate(gt, dets, "voc07")["mAP"] == pytest.approx(6 / 11)
    assert voc_evaluate(gt, dets, "voc")["mAP"] == pytest.approx(0.5)
    assert coco_evaluate(gt, dets)["AP50"] == pytest.approx(1.0)


@BOTH
def test_iou_of_exactly_half_is_a_hit(interpolation):
    gt = coco({1: [(0, 0, 10, 10, 1)]}, categories=(1,))
    assert voc_evaluate(gt, np.array([[1, 0, 0, 10, 20, 0.9, 1]]), interpolation)["mAP"] == 1.0   # IoU 100/200
    assert voc_evaluate(gt, np.array([[1, 0, 0, 10, 20.01, 0.9, 1]]), interpolation)["mAP"] == 0.0


@BOTH
def test_bad_inputs_give_none_not_zero(interpolation):
    gt = coco({1: [(0, 0, 10, 10, 1)], 2: []}, categories=(1, 2))
    r = voc_evaluate(gt, np.array([[2, 0, 0, 10, 10, 0.9, 2]]), interpolation)   # class 2: no ground truth
    assert r["per_class_AP"] == {1: 0.0, 2: None} and r["mAP"] == 0.0
    assert voc_evaluate(gt, np.zeros((0, 7)), interpolation)["per_class_AP"] == {1: 0.0, 2: None}
    only_difficult = coco({1: [(0, 0, 10, 10, 1, 1)]}, categories=(1,))
    assert voc_evaluate(only_difficult, np.zeros((0, 7)), interpolation)["mAP"] is None
    assert voc_evaluate(coco({}), np.zeros((0, 7)), interpolation)["mAP"] is None
    with pytest.raises(ValueError, match="voc07, voc"):
        voc_evaluate(gt, np.zeros((0, 7)), "voc12")


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_object_detection_metrics(seed):
    podm = pytest.importorskip("podm.metrics")
    rng = np.random.default_rng(seed)
    images, dets = {}, []
    for i in range(1, 80):
        images[i] = [(*rng.uniform(0, 200, 2), *rng.uniform(10, 80, 2), int(rng.integers(1, 4)))
                     for _ in range(rng.integers(0, 5))]
        for x, y, w, h, c in images[i]:
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, 6, 4)
                dets.append([i, x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3]), round(rng.random(), 2),
                             c if rng.random() > 0.1 else int(rng.integers(1, 4))])
        for _ in range(rng.integers(0, 8)):
            dets.append([i, *rng.uniform(0, 250, 2), *rng.uniform(5, 60, 2), round(rng.random() * 0.7, 2),
                         int(rng.integers(1, 5))])
    gt, dets = coco(images, categories=(1, 2, 3, 4)), np.array(dets)      # class 4: no ground truth
    golds = [podm.BoundingBox.of_bbox(a["image_id"], a["category_id"], a["bbox"][0], a["bbox"][1],
                                      a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
             for a in gt["annotations"]]
    preds = [podm.BoundingBox.of_bbox(int(d[0]), int(d[6]), d[1], d[2], d[1] + d[3], d[2] + d[4], d[5])
             for d in dets]
    methods = {"voc07": podm.MethodAveragePrecision.ElevenPointsInterpolation,
               "voc": podm.MethodAveragePrecision.AllPointsInterpolation}
    for interpolation, method in methods.items():
        ref = podm.get_pascal_voc_metrics(golds, preds, 0.5, method)
        ours = voc_evaluate(gt, dets, interpolation)
        assert 0.2 < ours["mAP"] < 0.95
        assert ours["mAP"] == pytest.approx(podm.MetricPerClass.mAP(ref), abs=1e-12)
        for c in (1, 2, 3):
            assert ours["per_class_AP"][c] == pytest.approx(ref[c].ap, abs=1e-12)
        assert ours["per_class_AP"][4] is None and ref[4].num_groundtruth == 0
