"""The grid of points FCOS classifies: one per feature-map cell, at ((k + 0.5) * stride), in (x, y) order."""
from __future__ import annotations

import torch


def make_points(sizes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device):
    """Points of all levels, concatenated level after level, row-major inside a level.

    sizes: (H_l, W_l) per level. Returns points [P, 2] (x, y) in pixels of the padded batch,
    point_strides [P] and level index [P] (int64).
    """
    pts, strd, lvl = [], [], []
    for level, ((h, w), s) in enumerate(zip(sizes, strides)):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1))
        strd.append(torch.full((h * w,), float(s), device=device))
        lvl.append(torch.full((h * w,), level, device=device, dtype=torch.long))
    return torch.cat(pts), torch.cat(strd), torch.cat(lvl)
