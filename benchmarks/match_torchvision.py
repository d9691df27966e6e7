"""`FCOS.from_torchvision` against torchvision's FCOS on real photos at torchvision's own resize (800 / 1333):
the share of torchvision's detections that fcos-exp gives too (same label, IoU >= 0.98, score within 2e-3,
paired one to one), the largest score difference among those pairs, what the unmatched ones are, and the
losses of training steps on the same batches.

The model is torchvision's COCO architecture (ResNet-50-FPN, FrozenBatchNorm2d, 3 trainable stages, 91
classes) with random weights, since nothing is downloaded; its final layers are re-drawn so that scores and
boxes spread (a random head scores every point alike and regresses half its boxes to zero width).

    python benchmarks/match_torchvision.py [--root VOCdevkit/VOC2007] [--num 8] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torchvision
from common import cpu_label
from torchvision.models.detection import FCOS as TVFCOS
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fcos import FCOS
from fcos.data.voc import VOCDataset
from fcos.interop import match_to_reference

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/voc2007-sample/VOCdevkit/VOC2007"


def coco_architecture() -> TVFCOS:
    """fcos_resnet50_fpn(weights=COCO_V1)'s network without its weights."""
    net = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(net, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    tv = TVFCOS(backbone, 91)
    g = torch.Generator().manual_seed(0)
    h = tv.head
    with torch.no_grad():
        for conv, bias in ((h.classification_head.cls_logits, -1.0), (h.regression_head.bbox_reg, 2.0),
                           (h.regression_head.bbox_ctrness, 0.0)):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
            conv.bias.fill_(bias)
    return tv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(SAMPLE), help="a VOCdevkit/VOC2007 folder")
    ap.add_argument("--num", type=int, default=8, help="images (detections: one at a time; losses: pairs)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False   # float32 on GPUs too
    torch.manual_seed(0)
    device = torch.device(args.device)
    tv = coco_architecture().to(device)
    ours = FCOS.from_torchvision(tv)
    ds = VOCDataset(args.root, "trainval")
    items = [ds[i] for i in range(min(args.num, len(ds)))]
    total = matched = empty = 0
    worst = 0.0
    tv.eval(), ours.eval()
    with torch.no_grad():
        for image, _ in items:
            ref, out = tv([image.to(device)])[0], ours([image.to(device)])[0]
            cpu = [{k: v.cpu() for k, v in d.items()} for d in (ref, out)]
            unmatched, w = match_to_reference(*cpu)
            total += len(ref["scores"])
            matched += len(ref["scores"]) - len(unmatched)
            worst = max(worst, w)
            empty += int(((unmatched[:, 2] <= unmatched[:, 0]) | (unmatched[:, 3] <= unmatched[:, 1])).sum())
    tv.train(), ours.train()
    losses = []
    for k in range(0, len(items) - 1, 2):
        images = [im.to(device) for im, _ in items[k:k + 2]]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for _, t in items[k:k + 2]]
        with torch.no_grad():
            ref, out = tv(images, targets), ours(images, targets)
        losses.append({b: [float(ref[a]), float(out[b])] for a, b in (("classification", "cls_loss"),
                       ("bbox_regression", "reg_loss"), ("bbox_ctrness", "ctr_loss"))})
    worst_loss = max(abs(o - r) / abs(r) for step in losses for r, o in step.values())
    print(json.dumps({"device": str(device), "cpu": cpu_label(), "images": len(items), "torchvision_detections": total,
                      "matched": matched, "match_rate": matched / max(1, total),
                      "unmatched_empty_boxes": empty, "max_score_difference": worst,
                      "loss_steps": losses, "max_relative_loss_difference": worst_loss}, indent=1))


if __name__ == "__main__":
    main()
