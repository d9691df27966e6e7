"""The confusion matrix on hand-made boxes: every cell worked out by hand."""
import numpy as np

from fcos.confusion import confusion_from_coco, match_image, normalise

K = 3   # classes 0, 1, 2; row/column 3 is background


def test_hits_confusions_false_positives_and_misses():
    gt = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]
    gt_labels = [0, 1, 2, 2]
    det = [[0, 0, 10, 10],      # class 0 on the class-0 box: hit
           [20, 0, 30, 11],     # class 2 on the class-1 box (IoU 0.91): confused
           [40, 0, 50, 10],     # class 2 on the class-2 box: hit
           [41, 0, 51, 10],     # class 2 again on it, lower score: the box is taken -> false positive
           [100, 0, 110, 10],   # class 1 on nothing: false positive
           [60, 0, 66, 10],     # class 2 on the last box at IoU 0.6 but score 0.1: below the threshold
           ]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]
    labels = [0, 2, 2, 2, 1, 2]
    m = match_image(gt, gt_labels, det, scores, labels, K, iou_thresh=0.5, score_thresh=0.25)
    expected = np.zeros((K + 1, K + 1), int)
    expected[0, 0] = 1          # predicted 0, true 0
    expected[2, 1] = 1          # predicted 2, true 1
    expected[2, 2] = 1
    expected[2, 3] = 1          # duplicate: background column
    expected[1, 3] = 1          # false positive
    expected[3, 2] = 1          # the last class-2 box was missed
    np.testing.assert_array_equal(m, expected)
    assert m.sum(axis=0)[:K].tolist() == [1, 1, 2]          # every true box counted once

    # The same with the low detection kept: the class-2 box is found.
    m = match_image(gt, gt_labels, det, scores, labels, K, 0.5, score_thresh=0.05)
    assert m[2, 2] == 2 and m[3, 2] == 0
    # Per-class thresholds: class 2 needs 0.75, so its 0.7 hit goes, its 0.8 confusion stays.
    m = match_image(gt, gt_labels, det, scores, labels, K, 0.5, score_thresh=np.array([0.25, 0.25, 0.75]))
    assert m[2, 1] == 1 and m[2, 2] == 0 and m[3, 2] == 2 and m[2, 3] == 0


def test_best_scored_detection_claims_the_box_with_the_highest_iou():
    gt, gt_labels = [[0, 0, 10, 10], [5, 0, 15, 10]], [0, 1]
    det, scores, labels = [[4, 0, 14, 10]], [0.9], [1]   # IoU 0.43 with box 0, 0.82 with box 1
    m = match_image(gt, gt_labels, det, scores, labels, 2, 0.5, 0.25)
    assert m[1, 1] == 1 and m[2, 0] == 1 and m.sum() == 2
    # Below the IoU threshold a detection is a false positive and the box is missed.
    m = match_image([[0, 0, 10, 10]], [0], [[6, 0, 16, 10]], [0.9], [0], 2, 0.5, 0.25)   # IoU 0.25
    assert m[0, 2] == 1 and m[2, 0] == 1 and m.sum() == 2


def test_crowd_regions_are_ignored_and_empty_images_work():
    m = match_image([], [], [[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.9], [0, 1], 2, 0.5, 0.25,
                    ignore_boxes=[[0, 0, 10, 11]])
    assert m[0, 2] == 0 and m[1, 2] == 1 and m.sum() == 1
    assert match_image([], [], [], [], [], 2).sum() == 0


def test_from_coco_groups_by_image_and_maps_category_ids():
    gt = {"images": [{"id": 7}, {"id": 9}, {"id": 11}],
          "categories": [{"id": 5, "name": "b"}, {"id": 2, "name": "a"}],     # by id: a (2) then b (5)
          "annotations": [{"image_id": 7, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 0},
                          {"image_id": 9, "category_id": 5, "bbox": [0, 0, 10, 10], "iscrowd": 0},
                          {"image_id": 9, "category_id": 5, "bbox": [30, 30, 10, 10], "iscrowd": 1},
                          {"image_id": 11, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 0}]}
    dets = np.array([[9, 0, 0, 10, 10, 0.8, 2],      # a on the b box
                     [7, 0, 0, 10, 10, 0.9, 2],      # a on the a box
                     [9, 30, 30, 10, 10, 0.9, 2],    # on the crowd region: ignored
                     [7, 50, 50, 10, 10, 0.9, 5]])   # b on nothing
    m = confusion_from_coco(gt, dets, 0.5, 0.25)
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 0, 1], [1, 0, 0]])   # image 11's a box missed
    np.testing.assert_allclose(normalise(m), [[0.5, 1, 0], [0, 0, 1], [0.5, 0, 0]])
