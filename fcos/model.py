"""`FCOS`: transform -> backbone + FPN -> head -> loss (training) or postprocess (evaluation)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbone import Backbone
from .config import FCOSConfig
from .head import FCOSHead
from .loss import FCOSLoss
from .points import make_points
from .postprocess import PostProcess
from .transform import Transform
from .winograd import use_winograd


def _check_inputs(images: list[Tensor], targets: list[dict] | None, num_classes: int) -> None:
    """Raise ValueError naming the image and what is wrong with it."""
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3 or not img.is_floating_point():
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"image {i}: expected a float tensor [3, H, W], got {shape}")
    if targets is None:
        return
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        boxes, labels = t.get("boxes"), t.get("labels")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
            raise ValueError(f"image {i}: boxes must be a float tensor [N, 4], got "
                             f"{tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}")
        if not isinstance(labels, Tensor) or labels.shape != (len(boxes),) or labels.dtype != torch.int64:
            raise ValueError(f"image {i}: labels must be an int64 tensor [{len(boxes)}]")
        if len(boxes):
            bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bad.any():
                j = int(bad.nonzero()[0])
                raise ValueError(f"image {i}: box {j} {boxes[j].tolist()} has x2 <= x1 or y2 <= y1")
            if labels.min() < 0 or labels.max() >= num_classes:
                raise ValueError(f"image {i}: labels must be in [0, {num_classes}), got {labels.tolist()}")


class FCOS(nn.Module):
    """FCOS detector. Training: `model(images, targets)` -> loss dict; evaluation: `model(images)` ->
    list of {"boxes" [K, 4] in input-image pixels, "scores" [K], "labels" [K]}."""

    def __init__(self, num_classes: int = 20, backbone: str = "resnet18", weights: str | None = None,
                 fpn_channels: int = 256, head_convs: int = 4, min_size: int | tuple = 320,
                 max_size: int = 480, **kwargs):
        super().__init__()
        cfg = FCOSConfig(num_classes=num_classes, backbone=backbone, weights=weights, fpn_channels=fpn_channels,
                         head_convs=head_convs, min_size=min_size, max_size=max_size, **kwargs)
        self.config = cfg
        self.transform = Transform(cfg)
        self.backbone = Backbone(cfg)
        self.head = FCOSHead(cfg.fpn_channels, cfg.num_classes, cfg.head_convs, cfg.gn_groups,
                             len(cfg.strides), cfg.prior_prob)
        self.criterion = FCOSLoss(cfg)
        self.postprocess = PostProcess(cfg)
        if cfg.winograd:
            use_winograd(self)

    @classmethod
    def from_config(cls, cfg: FCOSConfig | dict) -> "FCOS":
        d = cfg.to_dict() if isinstance(cfg, FCOSConfig) else dict(cfg)
        return cls(**d)

    def forward(self, images: list[Tensor] | Tensor, targets: list[dict] | None = None):
        images = list(images)
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for detections")
        _check_inputs(images, targets if self.training else None, self.config.num_classes)
        batch, sizes, orig, targets = self.transform(images, targets if self.training else None)
        features = self.backbone(batch)
        cls, box, ctr = self.head(features)
        level_shapes = [tuple(f.shape[-2:]) for f in features]
        points, strides, levels = make_points(level_shapes, self.config.strides, batch.device)
        if self.training:
            return self.criterion(cls, box, ctr, points, strides, levels, targets)
        dets = self.postprocess(cls, box, ctr, points, strides, [h * w for h, w in level_shapes], sizes)
        return self.transform.postprocess(dets, sizes, orig)
