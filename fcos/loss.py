"""`FCOSLoss`, the criterion: focal loss over all points, GIoU and centerness BCE on positives."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .config import FCOSConfig
from .targets import assign_targets, centerness_target, pad_targets

LOSS_NAMES = ("final_loss", "cls_loss", "reg_loss", "ctr_loss")   # the keys of FCOSLoss's dict


def _positives_normaliser(num_pos: Tensor) -> Tensor:
    """max(1, positives per rank): under DDP the mean over ranks, so every rank divides by the same number."""
    if dist.is_available() and dist.is_initialized():
        num_pos = num_pos.clone()
        dist.all_reduce(num_pos)
        num_pos = num_pos / dist.get_world_size()
    return num_pos.clamp(min=1.0)


class FCOSLoss(nn.Module):
    """Assigns targets and computes {"cls_loss", "reg_loss", "ctr_loss", "final_loss"}."""

    def __init__(self, cfg: FCOSConfig):
        super().__init__()
        self.cfg = cfg
        bounds = list(cfg.range_bounds) + [float("inf")]
        self.register_buffer("lo", torch.tensor(bounds[:-1], dtype=torch.float32), persistent=False)
        self.register_buffer("hi", torch.tensor(bounds[1:], dtype=torch.float32), persistent=False)

    def forward(self, cls_logits: Tensor, box_reg: Tensor, ctr_logits: Tensor, points: Tensor,
                point_strides: Tensor, point_levels: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """cls_logits [B, P, K], box_reg [B, P, 4] (l, t, r, b) / stride, ctr_logits [B, P];
        points [P, 2], point_strides [P], point_levels [P]; targets with boxes in padded-batch pixels."""
        # Losses in float32 whatever autocast does around them (GIoU and BCE overflow in fp16).
        with torch.autocast(device_type=cls_logits.device.type, enabled=False):
            cls_logits, box_reg, ctr_logits = cls_logits.float(), box_reg.float(), ctr_logits.float()
            boxes, labels, valid = pad_targets(targets, cls_logits.device)
            matched, gt_boxes = assign_targets(points, point_strides, self.lo[point_levels],
                                               self.hi[point_levels], boxes, valid,
                                               self.cfg.center_sampling_radius, self.cfg.open_ranges)
            pos = matched >= 0                                   # [B, P]
            norm = _positives_normaliser(pos.sum().float())

            gt_labels = torch.gather(labels, 1, matched.clamp(min=0))
            cls_target = torch.zeros_like(cls_logits)
            cls_target[pos, gt_labels[pos]] = 1.0
            cls_loss = sigmoid_focal_loss(cls_logits, cls_target, alpha=self.cfg.focal_alpha,
                                          gamma=self.cfg.focal_gamma, reduction="sum") / norm

            pos_points = points.expand(len(targets), -1, -1)[pos]            # [N, 2]
            pos_strides = point_strides.expand(len(targets), -1)[pos, None]  # [N, 1]
            ltrb = box_reg[pos] * pos_strides
            pred = torch.cat((pos_points - ltrb[:, :2], pos_points + ltrb[:, 2:]), dim=1)
            target = gt_boxes[pos]
            reg_loss = generalized_box_iou_loss(pred, target, reduction="sum") / norm

            target_ltrb = torch.cat((pos_points - target[:, :2], target[:, 2:] - pos_points), dim=1)
            ctr_loss = F.binary_cross_entropy_with_logits(
                ctr_logits[pos], centerness_target(target_ltrb), reduction="sum") / norm
        return {"cls_loss": cls_loss, "reg_loss": reg_loss, "ctr_loss": ctr_loss,
                "final_loss": cls_loss + reg_loss + ctr_loss}
