"""`PostProcess`: scores, per-level top-k, decoding, clipping and class-wise NMS, batched over images.

`PostProcess.detections` is also the decoding of the exported ONNX graph (fcos/export.py runs it on one image),
so it is tensor code without a Python branch on a data-dependent size; only `forward`'s split into one dict
per image is eager-only.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, nms

from .config import FCOSConfig

# Candidates above which NMS on CUDA runs image by image. Over more boxes than this, batched_nms on CUDA falls back
# to a loop over every (image, class) group, and one NMS over all images' boxes costs the square of their number:
# on an H100, a batch of 8 with ~5,000 candidates per image (an unconfident early model) decoded at 0.81-0.86x
# torchvision's speed in one call. torchvision's FCOS runs one call per image, as this does above the limit.
ONE_CALL_MAX = 5000


def classwise_nms(boxes: Tensor, scores: Tensor, groups: Tensor, thresh: float, ids) -> Tensor:
    """Greedy NMS (IoU > thresh suppresses) within each group, on the boxes as they are: no coordinate offsets,
    so every IoU is the float32 value torchvision's and onnxruntime's NMS kernels both compute. Returns the
    indices kept, by decreasing score, equal scores in candidate order. boxes [N, 4]; scores, groups [N];
    ids: the groups to visit (those present, or every possible one where the values cannot be read)."""
    parts = [groups.new_zeros(0)]
    for g in ids:
        idx = torch.where(groups == g)[0]
        parts.append(idx[nms(boxes[idx], scores[idx], thresh)])
    kept = torch.sort(torch.cat(parts)).values   # candidate order, then a stable sort by score
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def _nms_with_offsets(boxes: Tensor, scores: Tensor, labels: Tensor, img: Tensor, num_classes: int, batch: int,
                      thresh: float) -> Tensor:
    """batched_nms (class-wise by coordinate offsets: one kernel launch, what CUDA needs), all images in one
    call up to ONE_CALL_MAX candidates, image by image above. The same detections as `classwise_nms` but where
    the offsets' float rounding moves an IoU across the threshold. Ordered by image, then by decreasing score."""
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
        """Arguments as `detections`; its detections split into one dict per image."""
        boxes, scores, labels, img = self.detections(cls_logits, box_reg, ctr_logits, points, point_strides,
                                                     level_sizes, image_sizes)
        return split_by_image({"boxes": boxes, "scores": scores, "labels": labels}, img, len(cls_logits))

    @torch.no_grad()
    def detections(self, cls_logits: Tensor, box_reg: Tensor, ctr_logits: Tensor, points: Tensor,
                   point_strides: Tensor, level_sizes: list[int], image_sizes: Tensor):
        """cls_logits [B, P, K], box_reg [B, P, 4] in stride units, ctr_logits [B, P]; points [P, 2];
        point_strides [P]; level_sizes: points per level; image_sizes [B, 2] (h, w). Returns boxes [N, 4]
        (clipped to the image), scores [N], labels [N] and image index [N] of the detections of all images,
        ordered by image, then by decreasing score."""
        cfg = self.cfg
        b, p, k = cls_logits.shape
        scores = torch.sqrt(torch.sigmoid(cls_logits.float()) * torch.sigmoid(ctr_logits.float())[..., None])
        scores = torch.where(scores > cfg.score_thresh, scores, torch.zeros_like(scores))

        # Per-level top-k without a loop over images or levels: pad levels to a common length.
        n_levels, longest = len(level_sizes), functools.reduce(torch.sym_max, level_sizes)
        host = torch.tensor([[0] + level_sizes[:-1], level_sizes])            # sent without waiting for the GPU
        starts, lengths = host.to(scores.device, non_blocking=True)
        starts = starts.cumsum(0)
        slot = torch.arange(longest, device=scores.device)
        point_idx = (starts[:, None] + slot[None]).clamp(max=p - 1)                     # [L, longest]
        inside = slot[None] < lengths[:, None]                                          # [L, longest]
        per_level = scores[:, point_idx] * inside[None, :, :, None]                    # [B, L, longest, K]
        per_level = per_level.flatten(2)
        top_scores, top_idx = per_level.topk(torch.sym_min(cfg.topk_candidates, per_level.shape[-1]), dim=-1)

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

        if boxes.is_cuda:
            kept = _nms_with_offsets(boxes, scores, labels, img, k, b, cfg.nms_thresh)
        else:   # exact, as the exported graph (run on the CPU): every possible group there, none can be read
            groups = img * k + labels
            ids = range(b * k) if torch.compiler.is_exporting() else groups.unique().tolist()
            kept = classwise_nms(boxes, scores, groups, cfg.nms_thresh, ids)
            kept = kept[torch.sort(img[kept], stable=True).indices]
        img = img[kept]
        counts = (img[:, None] == torch.arange(b, device=img.device)).sum(0)    # bincount, which ONNX lacks
        rank = torch.arange(img.shape[0], device=img.device) - (counts.cumsum(0) - counts)[img]
        top = rank < cfg.detections_per_img
        kept, img = kept[top], img[top]
        return boxes[kept], scores[kept], labels[kept], img


def split_by_image(detections: dict[str, Tensor], img: Tensor, batch: int) -> list[dict]:
    """Flat detections (each [N, ...]) ordered by image, img [N] -> one dict per image."""
    counts = torch.bincount(img, minlength=batch).tolist()
    return [dict(zip(detections, parts)) for parts in zip(*(t.split(counts) for t in detections.values()))]
