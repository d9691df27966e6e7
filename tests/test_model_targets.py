"""Assignment, centerness and decoding checked on small hand-computed cases."""
import math

import pytest
import torch

from fcos import FCOSConfig
from fcos.points import make_points
from fcos.targets import assign_targets, centerness_target

INF = float("inf")


def assign(points, strides, lo, hi, boxes, radius=1.5):
    boxes = torch.tensor(boxes, dtype=torch.float32)[None]
    valid = torch.ones(boxes.shape[:2], dtype=torch.bool)
    pts = torch.tensor(points, dtype=torch.float32)
    n = len(points)
    full = lambda v: torch.full((n,), float(v))
    return assign_targets(pts, full(strides), full(lo), full(hi), boxes, valid, radius)


def test_points_are_cell_centres_in_xy_order():
    pts, strides, levels = make_points([(2, 3), (1, 2)], (8, 16), torch.device("cpu"))
    assert pts[:6].tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert pts[6:].tolist() == [[8, 8], [24, 8]]
    assert strides.tolist() == [8] * 6 + [16] * 2 and levels.tolist() == [0] * 6 + [1] * 2


def test_point_inside_box_and_center_region_is_positive():
    matched, boxes = assign([[20, 20]], 8, 0, 64, [[0, 0, 40, 40]])
    assert matched.tolist() == [[0]] and boxes[0, 0].tolist() == [0, 0, 40, 40]


def test_point_on_box_border_is_negative():
    # l = 0 at the border: the point is not strictly inside.
    matched, _ = assign([[10, 20]], 8, 0, 64, [[10, 10, 30, 30]], radius=10)
    assert matched.tolist() == [[-1]]


def test_center_radius_limits_positives():
    box = [[0, 0, 200, 200]]          # centre (100, 100); radius 1.5 * 8 = 12
    inside, _ = assign([[111, 100]], 8, 0, INF, box)
    outside, _ = assign([[113, 100]], 8, 0, INF, box)
    assert inside.tolist() == [[0]] and outside.tolist() == [[-1]]


def test_box_too_large_for_level_is_negative():
    # max(l, t, r, b) = 100 at the centre: outside [0, 64], inside [64, 128].
    small, _ = assign([[100, 100]], 8, 0, 64, [[0, 0, 200, 200]], radius=100)
    right, _ = assign([[100, 100]], 16, 64, 128, [[0, 0, 200, 200]], radius=100)
    assert small.tolist() == [[-1]] and right.tolist() == [[0]]


def test_overlapping_boxes_smallest_area_wins():
    matched, boxes = assign([[20, 20]], 8, 0, INF, [[0, 0, 60, 60], [10, 10, 30, 30], [5, 5, 40, 40]], radius=10)
    assert matched.tolist() == [[1]] and boxes[0, 0].tolist() == [10, 10, 30, 30]


def test_padding_boxes_never_match():
    boxes = torch.tensor([[[0, 0, 40, 40], [0, 0, 40, 40]]], dtype=torch.float32)
    valid = torch.tensor([[False, True]])
    m, _ = assign_targets(torch.tensor([[20.0, 20.0]]), torch.tensor([8.0]), torch.tensor([0.0]),
                          torch.tensor([INF]), boxes, valid, 1.5)
    assert m.tolist() == [[1]]


def test_centerness_target_by_hand():
    ltrb = torch.tensor([[10.0, 10, 10, 10], [5, 10, 15, 10], [1, 2, 3, 8]])
    expected = [1.0, math.sqrt(5 / 15), math.sqrt(1 / 3 * 2 / 8)]
    assert centerness_target(ltrb).tolist() == pytest.approx(expected)


def test_regression_targets_round_trip_to_the_same_boxes():
    """Targets from known boxes, fed back as perfect head outputs, decode to those boxes."""
    from fcos.loss import FCOSLoss
    from fcos.postprocess import PostProcess

    cfg = FCOSConfig(num_classes=3, score_thresh=0.5, nms_thresh=0.99)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    points, strides, levels = make_points(sizes, cfg.strides, torch.device("cpu"))
    boxes = torch.tensor([[10.0, 20, 50, 60], [60, 30, 120, 125], [2, 2, 126, 100]])
    labels = torch.tensor([0, 2, 1])
    crit = FCOSLoss(cfg)
    m, gt = assign_targets(points, strides, crit.lo[levels], crit.hi[levels], boxes[None],
                           torch.ones(1, 3, dtype=torch.bool), cfg.center_sampling_radius)
    pos = m[0] >= 0
    assert pos.sum() > 0 and set(m[0][pos].tolist()) == {0, 1, 2}
    ltrb = torch.cat((points - gt[0, :, :2], gt[0, :, 2:] - points), 1) / strides[:, None]
    cls = torch.full((1, len(points), 3), -20.0)
    cls[0, pos, labels[m[0][pos]]] = 20.0
    ctr = torch.full((1, len(points)), 20.0)
    dets = PostProcess(cfg)(cls, ltrb.clamp(min=0)[None], ctr, points, strides, [h * w for h, w in sizes],
                            torch.tensor([[128.0, 128.0]]))[0]
    # After NMS at IoU 0.99, the identical decoded boxes collapse to one per object.
    order = dets["labels"].argsort()
    assert dets["labels"][order].tolist() == [0, 1, 2]
    torch.testing.assert_close(dets["boxes"][order], boxes[[0, 2, 1]], atol=1e-4, rtol=0)


def test_giou_loss_equals_torchvisions():
    from torchvision.ops import generalized_box_iou_loss

    from fcos.loss import giou_loss
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 500, 2, generator=g) * 100
    a = torch.cat((xy, xy + torch.rand(2, 500, 2, generator=g) * 50 + 0.5), -1).requires_grad_()
    xy = torch.rand(2, 500, 2, generator=g) * 100
    b = torch.cat((xy, xy + torch.rand(2, 500, 2, generator=g) * 50 + 0.5), -1)
    mine, theirs = giou_loss(a, b), generalized_box_iou_loss(a, b, reduction="none")
    assert ((mine > 1).sum() > 0) and ((mine < 1).sum() > 0)   # disjoint and overlapping pairs both met
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    ga, = torch.autograd.grad(mine.sum(), a)
    gb, = torch.autograd.grad(theirs.sum(), a)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
