"""`Transform`: resize, normalise and pad a list of images into one batch; map detections back."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FCOSConfig


class Transform(nn.Module):
    """Short side to min_size (random choice per batch while training), long side <= max_size (resized sides
    rounded, or floored as torchvision does), ImageNet normalisation, zero padding to a multiple of
    size_divisible. Images of any float dtype are converted to the model's (float64 input gives float32
    detections)."""

    def __init__(self, cfg: FCOSConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.image_std).view(3, 1, 1), persistent=False)

    def _min_size(self) -> int:
        sizes = self.cfg.min_sizes
        if self.training and len(sizes) > 1:
            return sizes[int(torch.randint(len(sizes), (1,)))]
        return sizes[-1]

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        """Returns batch [B, 3, H, W], resized sizes [B, 2] (h, w), original sizes [B, 2], and the
        targets with boxes in resized pixels, on the device they came on (new dicts; the caller's are
        untouched). Sizes are built on the host and sent without waiting for the GPU."""
        min_size, max_size = self._min_size(), self.cfg.max_size
        resized, sizes, orig = [], [], []
        for img in images:  # images differ in size: each is resized on its own
            h, w = img.shape[-2:]
            scale = min(min_size / min(h, w), max_size / max(h, w))
            rnd = math.floor if self.cfg.resize_rounding == "floor" else round
            nh, nw = max(1, rnd(h * scale)), max(1, rnd(w * scale))
            x = img[None].to(self.mean.dtype)   # any float dtype (e.g. float64) becomes the model's
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)[0]
            resized.append((x - self.mean) / self.std)
            sizes.append((nh, nw))
            orig.append((h, w))
        d = self.cfg.size_divisible
        hp = -(-max(s[0] for s in sizes) // d) * d
        wp = -(-max(s[1] for s in sizes) // d) * d
        batch = resized[0].new_zeros(len(images), 3, hp, wp)
        for i, x in enumerate(resized):
            batch[i, :, : x.shape[1], : x.shape[2]] = x
        sizes_t = torch.tensor(sizes, dtype=torch.float32)
        orig_t = torch.tensor(orig, dtype=torch.float32)
        if targets is not None:
            ratio = (sizes_t / orig_t).flip(1).repeat(1, 2)  # (sx, sy, sx, sy) per image
            targets = [{**t, "boxes": t["boxes"].float() * r.to(t["boxes"].device, non_blocking=True)}
                       for t, r in zip(targets, ratio, strict=True)]
        return batch, sizes_t.to(batch.device, non_blocking=True), orig_t.to(batch.device, non_blocking=True), targets

    @staticmethod
    def postprocess(detections: list[dict], sizes: Tensor, orig: Tensor) -> list[dict]:
        """Scale boxes from resized pixels back to each input image's pixels."""
        ratio = (orig / sizes).flip(1).repeat(1, 2)
        return [{**d, "boxes": d["boxes"] * r} for d, r in zip(detections, ratio)]
