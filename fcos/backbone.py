"""ResNet C3-C5 (torchvision) + FPN with P6/P7 -> P3..P7."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from .config import FCOSConfig
from .errors import InputError
from .winograd_train import use_winograd_in_training

_STAGES = ["layer4", "layer3", "layer2", "layer1", "conv1"]  # trained first to last


def freeze_stages(net: nn.Module, trainable_layers: int) -> None:
    """requires_grad off for the ResNet stages not trained (and bn1 unless all 5 are), as torchvision does."""
    for name in _STAGES[trainable_layers:]:
        for p in getattr(net, name).parameters():
            p.requires_grad_(False)
    if trainable_layers < 5:
        net.bn1.requires_grad_(False)


def _resnet(cfg: FCOSConfig) -> nn.Module:
    norm = FrozenBatchNorm2d if cfg.freeze_bn else nn.BatchNorm2d
    builder = getattr(torchvision.models, cfg.backbone)
    if cfg.weights == "imagenet":
        weights = torchvision.models.get_model_weights(builder).DEFAULT
        try:
            return builder(weights=weights, norm_layer=norm)
        except (OSError, RuntimeError) as e:   # urllib's URLError is an OSError; a torn download a RuntimeError
            raise InputError(f"model.weights imagenet: torchvision could not download {weights} "
                             f"({type(e).__name__}: {str(e)[:80]}); offline, download it elsewhere and set "
                             f"model.weights to the path of that {cfg.backbone} state dict (.pth)") from None
    net = builder(weights=None, norm_layer=norm)
    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            raise InputError(f"{path}: backbone weights file not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise InputError(f"{path}: not a {cfg.backbone} state dict "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net


class Backbone(nn.Module):
    """images [B, 3, H, W] -> [P3, P4, P5, P6, P7], each [B, fpn_channels, H / stride, W / stride]."""

    def __init__(self, cfg: FCOSConfig):
        super().__init__()
        net = _resnet(cfg)
        freeze_stages(net, cfg.trainable_layers)
        expansion = type(net.layer1[0]).expansion
        self.body = create_feature_extractor(net, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
        c = cfg.fpn_channels
        # P6 from P5 (in_channels == out_channels selects P5 in LastLevelP6P7), P7 from ReLU(P6).
        self.fpn = FeaturePyramidNetwork([128 * expansion, 256 * expansion, 512 * expansion], c,
                                         extra_blocks=LastLevelP6P7(c, c))
        use_winograd_in_training(self)   # the same modules and state_dict; Winograd only inside its `training`

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.fpn(self.body(x)).values())
