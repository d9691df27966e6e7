"""`Transform`: resize, normalise and pad a list of images into one batch; map detections back.

Its code is also the exported ONNX graph's (fcos/export.py), so it has no Python branch on a size: the resized
sizes are computed as float64 tensors (the arithmetic of Python floats, bit for bit) and read back as ints,
which `torch.export` treats as values known only when the graph runs, never as the example's."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FCOSConfig


def resized_sizes(sizes: Tensor, min_size: int, max_size: int, rounding: str) -> Tensor:
    """sizes float64 [B, 2] (h, w) -> int64 [B, 2]: short side min_size, long side <= max_size, each side
    side * scale rounded half to even as Python's round(), or floored as torchvision's interpolate, and >= 1.
    float64 as Python: scale = min(min_size / short, max_size / long), both divisions correctly rounded."""
    lo, hi = sizes.new_tensor(min_size), sizes.new_tensor(max_size)   # not min_size / t: reciprocal(t) * min_size
    scale = torch.minimum(lo / sizes.amin(1, keepdim=True), hi / sizes.amax(1, keepdim=True))
    x = sizes * scale
    return (x.floor() if rounding == "floor" else x.round()).clamp(min=1).long()


def padded_side(n, d: int):
    """n rounded up to a multiple of d; (n + d - 1) // d, not -(-n // d): ONNX's Div truncates negative quotients."""
    return (n + d - 1) // d * d


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
        orig = torch.tensor([tuple(img.shape[-2:]) for img in images], dtype=torch.float64)
        sizes = resized_sizes(orig, self._min_size(), self.cfg.max_size, self.cfg.resize_rounding)
        resized = []
        for img, (nh, nw) in zip(images, sizes.tolist()):  # images differ in size: each is resized on its own
            torch._check(nh >= 1)   # for torch.export: read back, a size is a runtime value (>= 1 by clamp)
            torch._check(nw >= 1)
            x = img[None].to(self.mean.dtype)   # any float dtype (e.g. float64) becomes the model's
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)[0]
            resized.append((x - self.mean) / self.std)
        d = self.cfg.size_divisible
        hp = padded_side(max(x.shape[1] for x in resized), d)
        wp = padded_side(max(x.shape[2] for x in resized), d)
        # Padded copies, stacked: a slice assignment into a zero batch becomes ONNX scatters that cost the graph 9%.
        batch = torch.stack([F.pad(x, (0, wp - x.shape[2], 0, hp - x.shape[1])) for x in resized])
        sizes_t, orig_t = sizes.float(), orig.float()
        if targets is not None:
            ratio = (sizes_t / orig_t).flip(1).repeat(1, 2)  # (sx, sy, sx, sy) per image
            targets = [{**t, "boxes": t["boxes"].float() * r.to(t["boxes"].device, non_blocking=True)}
                       for t, r in zip(targets, ratio, strict=True)]
        return batch, sizes_t.to(batch.device, non_blocking=True), orig_t.to(batch.device, non_blocking=True), targets

    @staticmethod
    def to_input_pixels(boxes: Tensor, img: Tensor, sizes: Tensor, orig: Tensor) -> Tensor:
        """boxes [N, 4] in resized pixels of image img [N] -> in that input image's pixels."""
        return boxes * (orig / sizes).flip(1).repeat(1, 2)[img]
