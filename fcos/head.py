"""`FCOSHead`: classification and regression towers shared across the FPN levels.

The towers run layer by layer over all levels (not level by level), so that each convolution sees its five
maps in one `conv_levels` call: in training on a CPU that is one Winograd call for the five levels, and for the
first layers of both towers, which read the same maps, one for the two (fcos/winograd_train.py)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .winograd_train import conv_levels


def _tower(channels: int, num_convs: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Per level: class logits, (l, t, r, b) / stride through ReLU (after a learnable per-level scale, or
    none with level_scales=False as in torchvision), centerness logit on the regression tower."""

    def __init__(self, channels: int, num_classes: int, num_convs: int, gn_groups: int,
                 num_levels: int = 5, prior_prob: float = 0.01, level_scales: bool = True):
        super().__init__()
        self.cls_tower = _tower(channels, num_convs, gn_groups)
        self.reg_tower = _tower(channels, num_convs, gn_groups)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.ctr_logits = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(num_levels)) if level_scales else None   # FCOS paper: one per level
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def _towers(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Both towers over all levels, layer by layer: per level the same modules on the same maps as
        `self.cls_tower(f)`, `self.reg_tower(f)`."""
        cls, reg = features, features
        for i in range(0, len(self.cls_tower), 3):
            (cconv, cnorm, crelu), (rconv, rnorm, rrelu) = self.cls_tower[i:i + 3], self.reg_tower[i:i + 3]
            if i == 0:   # both read the FPN's maps
                cls, reg = conv_levels([cconv, rconv], features)
            else:
                (cls,), (reg,) = conv_levels([cconv], cls), conv_levels([rconv], reg)
            cls, reg = [crelu(cnorm(y)) for y in cls], [rrelu(rnorm(y)) for y in reg]
        return cls, reg

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """features: [B, C, H_l, W_l] per level -> cls [B, P, K], box [B, P, 4], ctr [B, P] (P over all levels)."""
        cls_feats, reg_feats = self._towers(features)
        cls_out, box_out, ctr_out = [], [], []
        for level, (c, r) in enumerate(zip(cls_feats, reg_feats, strict=True)):
            cls_out.append(self.cls_logits(c).flatten(2))
            box = self.box_reg(r)
            box_out.append(torch.relu(box if self.scales is None else box * self.scales[level]).flatten(2))
            ctr_out.append(self.ctr_logits(r).flatten(2))
        cls = torch.cat(cls_out, dim=2).transpose(1, 2)
        box = torch.cat(box_out, dim=2).transpose(1, 2)
        ctr = torch.cat(ctr_out, dim=2)[:, 0]
        return cls, box, ctr
