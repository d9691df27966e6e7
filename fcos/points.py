"""The grid of points FCOS classifies: one per feature-map cell, at ((k + offset) * step), in (x, y) order."""
from __future__ import annotations

import torch


def make_points(sizes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device,
                offset: float = 0.5, padded_size: tuple[int, int] | None = None):
    """Points of all levels, concatenated level after level, row-major inside a level.

    sizes: (H_l, W_l) per level. A point sits at (k + offset) * step; step is the level's stride, or with
    padded_size (H, W of the padded batch) padded_size // (H_l, W_l) per axis, as torchvision's AnchorGenerator.
    Returns points [P, 2] (x, y) in pixels of the padded batch, point_strides [P] (always the level's stride:
    it scales regression and assignment) and level index [P] (int64).
    """
    pts, strd, lvl = [], [], []
    for level, ((h, w), s) in enumerate(zip(sizes, strides)):
        sy, sx = (padded_size[0] // h, padded_size[1] // w) if padded_size else (s, s)
        ys = (torch.arange(h, device=device, dtype=torch.float32) + offset) * sy
        xs = (torch.arange(w, device=device, dtype=torch.float32) + offset) * sx
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1))
        strd.append(torch.full((h * w,), float(s), device=device))
        lvl.append(torch.full((h * w,), level, device=device, dtype=torch.long))
    return torch.cat(pts), torch.cat(strd), torch.cat(lvl)
