"""`FCOSLoss`, the criterion: focal loss over all points, GIoU and centerness BCE on positives."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from .config import FCOSConfig
from .targets import assign_targets, centerness_target, pad_targets

LOSS_NAMES = ("final_loss", "cls_loss", "reg_loss", "ctr_loss")   # the keys of FCOSLoss's dict


def giou_loss(pred: Tensor, gt: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - GIoU of boxes [..., 4] x1y1x2y2, elementwise: torchvision.ops.generalized_box_iou_loss's formula
    (same values, tested), written without its boolean-mask indexing, which makes a CUDA step wait for the
    GPU (a data-dependent shape)."""
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = gt.unbind(-1)
    inter_w = (torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0)
    inter = inter_w * (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp(min=0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    hull = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - (hull - union) / (hull + eps))


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

            # Dense over all points, negatives masked: boolean indexing would give data-dependent shapes,
            # and on CUDA every such shape makes the host wait for the GPU.
            gt_labels = torch.gather(labels, 1, matched.clamp(min=0))
            classes = torch.arange(cls_logits.shape[-1], device=cls_logits.device)
            cls_target = ((gt_labels[..., None] == classes) & pos[..., None]).float()
            cls_loss = sigmoid_focal_loss(cls_logits, cls_target, alpha=self.cfg.focal_alpha,
                                          gamma=self.cfg.focal_gamma, reduction="sum") / norm

            # Negatives get a unit-stride box and a zero logit: finite values and gradients whatever the head
            # outputs there, and torch.where gives them exactly zero loss and gradient.
            ltrb = torch.where(pos[..., None], box_reg, 1.0) * point_strides[:, None]   # [B, P, 4]
            pred = torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), dim=-1)
            giou = giou_loss(pred, gt_boxes)
            reg_loss = torch.where(pos, giou, 0.0).sum() / norm

            target_ltrb = torch.cat((points - gt_boxes[..., :2], gt_boxes[..., 2:] - points), dim=-1)
            bce = F.binary_cross_entropy_with_logits(torch.where(pos, ctr_logits, 0.0), centerness_target(target_ltrb),
                                                     reduction="none")
            ctr_loss = torch.where(pos, bce, 0.0).sum() / norm
        return {"cls_loss": cls_loss, "reg_loss": reg_loss, "ctr_loss": ctr_loss,
                "final_loss": cls_loss + reg_loss + ctr_loss}
