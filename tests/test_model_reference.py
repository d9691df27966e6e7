"""Our loss and postprocessing against torchvision's own FCOS given the same inputs.

Where the two are defined alike they must agree to float precision:
- loss: torchvision's FCOSHead.compute_loss fed with our assignment (matched box per point) and with
  anchors of side `stride` centred on our points, so that its box coder decodes exactly as we do;
- postprocessing: torchvision's FCOS.postprocess_detections on the same head outputs and anchors.
Where they differ, by design: points sit at (k + 0.5) * stride here and at k * stride in torchvision (the
anchors passed in make up for it); torchvision assigns with anchor-size ranges, we with the paper's
regression ranges (so we pass our assignment in); we drop boxes that are empty after clipping, torchvision
keeps them (the inputs below never produce one).
"""
import torch
from torch import nn
from torchvision.models.detection import FCOS as TVFCOS
from torchvision.models.detection.fcos import FCOSHead as TVHead

from fcos import FCOSConfig
from fcos.loss import FCOSLoss
from fcos.points import make_points
from fcos.postprocess import PostProcess
from fcos.targets import assign_targets, pad_targets

SIZES = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
K = 4


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    points, strides, levels = make_points(SIZES, (8, 16, 32, 64, 128), torch.device("cpu"))
    p = len(points)
    cls = torch.randn(2, p, K, generator=g) * 2 - 2
    box = torch.rand(2, p, 4, generator=g) * 3 + 0.5
    ctr = torch.randn(2, p, generator=g)
    anchors = torch.cat((points - strides[:, None] / 2, points + strides[:, None] / 2), dim=1)
    return points, strides, levels, cls, box, ctr, anchors


def test_loss_equals_torchvision_compute_loss_on_the_same_assignment():
    cfg = FCOSConfig(num_classes=K)
    points, strides, levels, cls, box, ctr, anchors = _inputs()
    targets = [{"boxes": torch.tensor([[10.0, 12, 70, 90], [30, 5, 150, 120], [100, 60, 118, 80]]),
                "labels": torch.tensor([0, 3, 1])},
               {"boxes": torch.tensor([[0.0, 0, 160, 128]]), "labels": torch.tensor([2])}]
    crit = FCOSLoss(cfg)
    ours = crit(cls, box, ctr, points, strides, levels, targets)

    boxes, _, valid = pad_targets(targets, torch.device("cpu"))
    matched, _ = assign_targets(points, strides, crit.lo[levels], crit.hi[levels], boxes, valid, 1.5)
    assert (matched >= 0).sum() > 10
    head = TVHead(in_channels=32, num_anchors=1, num_classes=K)
    ref = head.compute_loss(targets, {"cls_logits": cls, "bbox_regression": box, "bbox_ctrness": ctr[..., None]},
                            [anchors, anchors], list(matched))
    torch.testing.assert_close(ours["cls_loss"], ref["classification"])
    torch.testing.assert_close(ours["reg_loss"], ref["bbox_regression"])
    torch.testing.assert_close(ours["ctr_loss"], ref["bbox_ctrness"])
    torch.testing.assert_close(ours["final_loss"], ours["cls_loss"] + ours["reg_loss"] + ours["ctr_loss"])


def test_loss_with_no_boxes_is_focal_only_and_finite():
    cfg = FCOSConfig(num_classes=K)
    points, strides, levels, cls, box, ctr, _ = _inputs(1)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    out = FCOSLoss(cfg)(cls, box, ctr, points, strides, levels, empty)
    assert out["reg_loss"] == 0 and out["ctr_loss"] == 0 and torch.isfinite(out["cls_loss"]) and out["cls_loss"] > 0


def test_postprocess_equals_torchvision_postprocess_detections():
    cfg = FCOSConfig(num_classes=K, score_thresh=0.2, topk_candidates=50, nms_thresh=0.5, detections_per_img=30)
    points, strides, _, cls, box, ctr, anchors = _inputs(2)
    level_sizes = [h * w for h, w in SIZES]
    image_sizes = torch.tensor([[128.0, 160.0], [128.0, 160.0]])
    ours = PostProcess(cfg)(cls, box, ctr, points, strides, level_sizes, image_sizes)

    backbone = nn.Conv2d(3, 32, 1)
    backbone.out_channels = 32
    tv = TVFCOS(backbone, num_classes=K, score_thresh=0.2, nms_thresh=0.5, detections_per_img=30,
                topk_candidates=50)
    split = {"cls_logits": list(cls.split(level_sizes, 1)), "bbox_regression": list(box.split(level_sizes, 1)),
             "bbox_ctrness": list(ctr[..., None].split(level_sizes, 1))}
    per_level_anchors = list(anchors.split(level_sizes))
    ref = tv.postprocess_detections(split, [per_level_anchors] * 2, [(128, 160)] * 2)
    for o, r in zip(ours, ref):
        assert len(o["scores"]) == len(r["scores"]) > 5
        torch.testing.assert_close(o["scores"], r["scores"])
        torch.testing.assert_close(o["boxes"], r["boxes"])
        assert o["labels"].tolist() == r["labels"].tolist()
