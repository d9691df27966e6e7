"""`FCOS`: transform -> backbone + FPN -> head -> loss (training) or postprocess (evaluation)."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from . import interop
from .backbone import Backbone
from .config import DECODE_KEYS, FCOSConfig
from .errors import InputError
from .head import FCOSHead
from .loss import FCOSLoss
from .points import make_points
from .postprocess import PostProcess, split_by_image
from .transform import Transform


def _check_inputs(images: list[Tensor], targets: list[dict] | None, num_classes: int) -> None:
    """Raise ValueError naming the image and what is wrong with it."""
    if not images:
        raise InputError("no images: expected a list of float tensors [3, H, W]")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3 or not img.is_floating_point():
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise InputError(f"image {i}: expected a float tensor [3, H, W], got {shape}")
        if img.shape[1] == 0 or img.shape[2] == 0:
            raise InputError(f"image {i}: has no pixels (shape {tuple(img.shape)})")
    if targets is None:
        return
    if len(targets) != len(images):
        raise InputError(f"{len(images)} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        if not isinstance(t, dict):
            raise InputError(f"image {i}: target must be a dict with boxes and labels, got {type(t).__name__}")
        boxes, labels = t.get("boxes"), t.get("labels")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
            raise InputError(f"image {i}: boxes must be a float tensor [N, 4], got "
                             f"{tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}")
        if not isinstance(labels, Tensor) or labels.shape != (len(boxes),) or labels.dtype != torch.int64:
            raise InputError(f"image {i}: labels must be an int64 tensor [{len(boxes)}]")
        if len(boxes):
            if not torch.isfinite(boxes).all():
                j = int((~torch.isfinite(boxes)).any(dim=1).nonzero()[0])
                raise InputError(f"image {i}: box {j} {boxes[j].tolist()} is not finite")
            bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bad.any():
                j = int(bad.nonzero()[0])
                raise InputError(f"image {i}: box {j} {boxes[j].tolist()} has x2 <= x1 or y2 <= y1")
            if labels.min() < 0 or labels.max() >= num_classes:
                raise InputError(f"image {i}: labels must be in [0, {num_classes}), got {labels.tolist()}")


class FCOS(nn.Module):
    """FCOS detector. Training: `model(images, targets)` -> loss dict; evaluation: `model(images)` ->
    list of {"boxes" [K, 4] in input-image pixels, "scores" [K], "labels" [K]}."""

    def __init__(self, config: FCOSConfig | None = None, **kwargs):
        """`FCOS(config)` or `FCOS(num_classes=20, backbone="resnet18", ...)`: keywords are FCOSConfig fields
        (the one set of defaults), applied over `config` when both are given."""
        super().__init__()
        if config is not None and not isinstance(config, FCOSConfig):
            raise TypeError(f"config must be an FCOSConfig, got {type(config).__name__}")
        if config is None or kwargs:
            config = FCOSConfig(**{**(config.to_dict() if config else {}), **kwargs})
        self.config = cfg = config
        detector = interop.read_torchvision_weights(cfg.weights)   # a torchvision FCOS checkpoint, else None
        self.transform = Transform(cfg)
        self.backbone = Backbone(cfg if detector is None else replace(cfg, weights=None))
        self.head = FCOSHead(cfg.fpn_channels, cfg.num_classes, cfg.head_convs, cfg.gn_groups,
                             len(cfg.strides), cfg.prior_prob, cfg.level_scales)
        self.criterion = FCOSLoss(cfg)
        self.postprocess = PostProcess(cfg)
        if detector is not None:
            interop.load_torchvision_weights(self, detector, cfg.weights)

    def set_decoding(self, **values) -> FCOS:
        """Change how detections are decoded (score_thresh, nms_thresh, topk_candidates, detections_per_img)
        without touching the weights; returns the model."""
        problems = [f"{k}: not a decoding setting" for k in values if k not in DECODE_KEYS]
        problems += FCOSConfig.check(values)
        if problems:
            raise InputError(problems[0])
        for key, value in values.items():
            setattr(self.config, key, value)   # PostProcess reads the shared config at every call
        return self

    @classmethod
    def from_torchvision(cls, tv_model: nn.Module) -> FCOS:
        """The FCOS with the configuration and weights of a torchvision FCOS (ResNet-FPN backbone): same
        detections and losses (fcos/interop.py)."""
        model = cls(interop.config_from_torchvision(tv_model))
        model.load_state_dict(interop.from_torchvision_state(tv_model.state_dict()))
        return model.to(next(tv_model.parameters()).device).train(tv_model.training)

    def to_torchvision(self) -> nn.Module:
        """A torchvision FCOS with this model's configuration and weights (fcos/interop.py)."""
        return interop.to_torchvision(self)

    def forward(self, images: list[Tensor] | Tensor, targets: list[dict] | None = None):
        images = list(images)
        if self.training and targets is None:
            raise InputError("training mode needs targets; call model.eval() for detections")
        _check_inputs(images, targets if self.training else None, self.config.num_classes)
        batch, sizes, orig, targets = self.transform(images, targets if self.training else None)
        cls, box, ctr, points, strides, levels, level_sizes = self.dense_outputs(batch)
        if self.training:
            return self.criterion(cls, box, ctr, points, strides, levels, targets)
        boxes, scores, labels, img = self.postprocess.detections(cls, box, ctr, points, strides, level_sizes, sizes)
        boxes = self.transform.to_input_pixels(boxes, img, sizes, orig)
        return split_by_image({"boxes": boxes, "scores": scores, "labels": labels}, img, len(images))

    def dense_outputs(self, batch: Tensor):
        """batch [B, 3, H, W] (the transform's) -> head outputs cls [B, P, K], box [B, P, 4], ctr [B, P], points
        [P, 2], point strides [P], levels [P] and points per level: what training and decoding (here and in
        the exported graph, fcos/export.py) start from."""
        features = self.backbone(batch)
        cls, box, ctr = self.head(features)
        level_shapes = [tuple(f.shape[-2:]) for f in features]
        cfg = self.config
        padded = tuple(batch.shape[-2:]) if cfg.point_spacing == "padded" else None
        points, strides, levels = make_points(level_shapes, cfg.strides, batch.device, cfg.point_offset, padded)
        return cls, box, ctr, points, strides, levels, [h * w for h, w in level_shapes]
