"""Positive/negative assignment of points to boxes, vectorised over the batch, all points and chunks of boxes."""
from __future__ import annotations

import torch
from torch import Tensor


def pad_targets(targets: list[dict], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-image boxes [N_i, 4] and labels [N_i] into boxes [B, M, 4], labels [B, M], valid [B, M] on
    `device`. Padded where the targets are (on the host, from the engine) and sent in one copy per tensor
    that does not wait for the GPU."""
    m = max([len(t["boxes"]) for t in targets] + [1])
    b = len(targets)
    src = targets[0]["boxes"].device if targets else device
    boxes = torch.zeros(b, m, 4, device=src)
    labels = torch.zeros(b, m, dtype=torch.long, device=src)
    valid = torch.zeros(b, m, dtype=torch.bool, device=src)
    for i, t in enumerate(targets):  # the batch's boxes are ragged
        n = len(t["boxes"])
        boxes[i, :n] = t["boxes"]
        labels[i, :n] = t["labels"]
        valid[i, :n] = True
    return tuple(t.to(device, non_blocking=True) for t in (boxes, labels, valid))


MAX_ELEMENTS = 2**22   # points x boxes handled at once (x batch): bounds the assignment's memory


def assign_targets(points: Tensor, point_strides: Tensor, point_lo: Tensor, point_hi: Tensor,
                   boxes: Tensor, valid: Tensor, radius: float, open_ranges: bool = False,
                   max_elements: int = MAX_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Match every point to at most one box.

    A point is positive for a box when it lies strictly inside the box, inside the center region
    (box center +- radius * stride, clipped to the box), and max(l, t, r, b) lies in [lo, hi] of its
    level ((lo, hi) with open_ranges, as torchvision). Among several such boxes the smallest area wins
    (ties: the first).

    points [P, 2] (x, y); point_strides, point_lo, point_hi [P]; boxes [B, M, 4] x1y1x2y2; valid [B, M].
    Boxes are taken in chunks of at most max_elements // (B * P), so memory stays bounded however many
    boxes an image holds; the result does not depend on the chunks.
    Returns matched box index [B, P] (-1: negative) and the matched boxes [B, P, 4].
    """
    b, m = valid.shape
    chunk = max(1, max_elements // max(1, b * len(points)))
    best_area = torch.full((b, len(points)), float("inf"), dtype=boxes.dtype, device=boxes.device)
    best_idx = torch.zeros((b, len(points)), dtype=torch.long, device=boxes.device)
    for start in range(0, m, chunk):
        area = _candidate_areas(points, point_strides, point_lo, point_hi, boxes[:, start:start + chunk],
                                valid[:, start:start + chunk], radius, open_ranges)
        min_area, idx = area.min(dim=-1)                  # ties: the first box of smallest area
        better = min_area < best_area                     # strict: earlier chunks win ties
        best_area = torch.where(better, min_area, best_area)
        best_idx = torch.where(better, idx + start, best_idx)
    matched = torch.where(torch.isfinite(best_area), best_idx, torch.full_like(best_idx, -1))
    matched_boxes = torch.gather(boxes, 1, best_idx[..., None].expand(-1, -1, 4))
    return matched, matched_boxes


def _candidate_areas(points: Tensor, point_strides: Tensor, point_lo: Tensor, point_hi: Tensor,
                     boxes: Tensor, valid: Tensor, radius: float, open_ranges: bool) -> Tensor:
    """[B, P, M]: the area of each box for which the point is a candidate, inf elsewhere."""
    x = points[None, :, None, 0]                          # [1, P, 1]
    y = points[None, :, None, 1]
    x1, y1, x2, y2 = (boxes[:, None, :, k] for k in range(4))  # [B, 1, M]
    ltrb = torch.stack((x - x1, y - y1, x2 - x, y2 - y), dim=-1)  # [B, P, M, 4]
    inside_box = ltrb.amin(dim=-1) > 0

    r = (point_strides * radius)[None, :, None]           # [1, P, 1]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    cl = torch.maximum(cx - r, x1)
    ct = torch.maximum(cy - r, y1)
    cr = torch.minimum(cx + r, x2)
    cb = torch.minimum(cy + r, y2)
    inside_center = (x > cl) & (y > ct) & (x < cr) & (y < cb)

    max_dist = ltrb.amax(dim=-1)
    lo, hi = point_lo[None, :, None], point_hi[None, :, None]
    in_range = (max_dist > lo) & (max_dist < hi) if open_ranges else (max_dist >= lo) & (max_dist <= hi)

    area = ((x2 - x1) * (y2 - y1)).expand_as(max_dist)
    candidate = inside_box & inside_center & in_range & valid[:, None, :]
    return torch.where(candidate, area, torch.full_like(area, float("inf")))


def centerness_target(ltrb: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for ltrb [..., 4] -> [...]."""
    left, top, right, bottom = ltrb.unbind(-1)
    ratio = (torch.minimum(left, right) / torch.maximum(left, right).clamp(min=1e-6)) * \
        (torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp(min=1e-6))
    return ratio.clamp(min=0).sqrt()
