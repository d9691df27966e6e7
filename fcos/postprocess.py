"""`PostProcess`: scores, per-level top-k, decoding, clipping and class-wise NMS, batched over images."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .config import FCOSConfig

# Candidates above which NMS runs image by image. Over more boxes than this, batched_nms on CUDA falls back to a
# loop over every (image, class) group, and one NMS over all images' boxes costs the square of their number: on
# an H100, a batch of 8 with ~5,000 candidates per image (an unconfident early model) decoded at 0.81-0.86x
# torchvision's speed in one call. torchvision's FCOS runs one call per image, as this does above the limit.
ONE_CALL_MAX = 5000


def _classwise_nms(boxes: Tensor, scores: Tensor, labels: Tensor, img: Tensor, num_classes: int, batch: int,
                   thresh: float) -> Tensor:
    """Indices kept by class-wise NMS within each image, ordered by image, then by decreasing score.
    boxes [N, 4]; scores, labels, img [N], with img sorted (candidates come image by image)."""
    if len(boxes) <= ONE_CALL_MAX:   # all images at once: the group id separates images and classes
        kept = batched_nms(boxes, scores, img * num_classes + labels, thresh)
        return kept[torch.sort(img[kept], stable=True).indices]
    kept, start = [], 0
    for n in torch.bincount(img, minlength=batch).tolist():
        part = slice(start, start + n)
        kept.append(start + batched_nms(boxes[part], scores[part], labels[part], thresh))
        start += n
    return torch.cat(kept)


class PostProcess(nn.Module):
    """Head outputs -> per image {"boxes" [K, 4], "scores" [K], "labels" [K]} in resized-image pixels."""

    def __init__(self, cfg: FCOSConfig):
        super().__init__()
        self.cfg = cfg

    @torch.no_grad()
    def forward(self, cls_logits: Tensor, box_reg: Tensor, ctr_logits: Tensor, points: Tensor,
                point_strides: Tensor, level_sizes: list[int], image_sizes: Tensor) -> list[dict]:
        """cls_logits [B, P, K], box_reg [B, P, 4] in stride units, ctr_logits [B, P]; points [P, 2];
        point_strides [P]; level_sizes: points per level; image_sizes [B, 2] (h, w)."""
        cfg = self.cfg
        b, p, k = cls_logits.shape
        scores = torch.sqrt(torch.sigmoid(cls_logits.float()) * torch.sigmoid(ctr_logits.float())[..., None])
        scores = torch.where(scores > cfg.score_thresh, scores, torch.zeros_like(scores))

        # Per-level top-k without a loop over images or levels: pad levels to a common length.
        n_levels, longest = len(level_sizes), max(level_sizes)
        host = torch.tensor([[0] + level_sizes[:-1], level_sizes])            # sent without waiting for the GPU
        starts, lengths = host.to(scores.device, non_blocking=True)
        starts = starts.cumsum(0)
        slot = torch.arange(longest, device=scores.device)
        point_idx = (starts[:, None] + slot[None]).clamp(max=p - 1)                     # [L, longest]
        inside = slot[None] < lengths[:, None]                                          # [L, longest]
        per_level = scores[:, point_idx] * inside[None, :, :, None]                    # [B, L, longest, K]
        per_level = per_level.flatten(2)
        top_scores, top_idx = per_level.topk(min(cfg.topk_candidates, per_level.shape[-1]), dim=-1)   # [B, L, n]

        # Decode every candidate, then keep the scored, non-empty ones in one step (one wait for the GPU).
        pt = point_idx[torch.arange(n_levels, device=scores.device)[:, None], top_idx // k]           # [B, L, n]
        labels = top_idx % k
        ltrb = box_reg[torch.arange(b, device=scores.device)[:, None, None], pt].float() * point_strides[pt, None]
        xy = points[pt]
        boxes = torch.cat((xy - ltrb[..., :2], xy + ltrb[..., 2:]), dim=-1)
        boxes = torch.minimum(boxes.clamp(min=0), image_sizes.flip(1).repeat(1, 2)[:, None, None])
        ok = top_scores > 0
        if cfg.drop_empty_boxes:
            ok = ok & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        img, lvl, j = ok.nonzero().unbind(1)
        boxes, scores, labels = boxes[img, lvl, j], top_scores[img, lvl, j], labels[img, lvl, j]

        kept = _classwise_nms(boxes, scores, labels, img, k, b, cfg.nms_thresh)   # by score within an image
        img = img[kept]
        counts = torch.bincount(img, minlength=b)
        first = counts.cumsum(0) - counts
        rank = torch.arange(len(img), device=img.device) - first[img]
        top = rank < cfg.detections_per_img
        kept, counts = kept[top], counts.clamp(max=cfg.detections_per_img)
        return [{"boxes": bx, "scores": sc, "labels": lb} for bx, sc, lb in
                zip(*(t[kept].split(counts.tolist()) for t in (boxes, scores, labels)))]
