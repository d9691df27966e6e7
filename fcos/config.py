"""`FCOSConfig`: every parameter of the detector, as plain types (it travels inside checkpoints)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torchvision

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


@dataclass
class FCOSConfig:
    """Model, assignment, loss and decoding parameters; the defaults follow the FCOS paper."""

    num_classes: int = 20
    backbone: str = "resnet18"
    weights: str | None = None          # None | "imagenet" | path to a local state-dict file
    freeze_bn: bool = False             # FrozenBatchNorm2d in the backbone
    trainable_layers: int = 5           # backbone stages trained, counted from layer4 down to conv1 (0-5)
    fpn_channels: int = 256
    head_convs: int = 4                 # conv3x3 + GroupNorm + ReLU blocks per head tower
    gn_groups: int = 16
    winograd: bool = True               # CPU float32 inference: wide 3x3 convs via Winograd (fcos/winograd.py)
    min_size: int | tuple[int, ...] = 320   # short side; a tuple: random choice per batch in training, the last in eval
    max_size: int = 480
    size_divisible: int = 32
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    # Level i takes points whose max(l, t, r, b) lies in [range_bounds[i], range_bounds[i+1]]; the last is open.
    range_bounds: tuple[float, ...] = (0, 64, 128, 256, 512)
    center_sampling_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_prob: float = 0.01
    score_thresh: float = 0.05
    topk_candidates: int = 1000         # per level, before NMS
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if isinstance(self.min_size, (list, tuple)):
            self.min_size = tuple(int(s) for s in self.min_size)
        for name in ("strides", "range_bounds", "image_mean", "image_std"):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    @property
    def min_sizes(self) -> tuple[int, ...]:
        return self.min_size if isinstance(self.min_size, tuple) else (self.min_size,)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent parameter."""
        if self.backbone not in RESNETS and not hasattr(torchvision.models, self.backbone):
            raise ValueError(f"backbone {self.backbone!r} is not a torchvision ResNet (one of {', '.join(RESNETS)})")
        checks = [
            (self.num_classes >= 1, "num_classes must be >= 1"),
            (0 <= self.trainable_layers <= 5, "trainable_layers must be in 0..5"),
            (self.fpn_channels >= 1 and self.head_convs >= 0, "fpn_channels must be >= 1 and head_convs >= 0"),
            (self.gn_groups >= 1 and self.fpn_channels % self.gn_groups == 0,
             f"fpn_channels ({self.fpn_channels}) must be divisible by gn_groups ({self.gn_groups})"),
            (len(self.strides) == 5, "strides must list the 5 levels P3-P7"),
            (len(self.range_bounds) == len(self.strides), "range_bounds needs one lower bound per level"),
            (list(self.range_bounds) == sorted(self.range_bounds), "range_bounds must be increasing"),
            (all(s > 0 for s in self.min_sizes) and self.max_size >= max(self.min_sizes),
             "min_size must be > 0 and max_size >= min_size"),
            (0 <= self.score_thresh < 1 and 0 < self.nms_thresh <= 1, "score_thresh in [0,1), nms_thresh in (0,1]"),
            (self.topk_candidates >= 1 and self.detections_per_img >= 1, "topk_candidates and detections_per_img >= 1"),
            (self.center_sampling_radius > 0, "center_sampling_radius must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FCOSConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model parameter(s): {', '.join(unknown)}")
        return cls(**d)
