"""`FCOSHead`: classification and regression towers shared across the FPN levels."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


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

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """features: [B, C, H_l, W_l] per level -> cls [B, P, K], box [B, P, 4], ctr [B, P] (P over all levels)."""
        cls_out, box_out, ctr_out = [], [], []
        for level, f in enumerate(features):  # 5 levels; the convs dominate, the loop costs nothing
            c = self.cls_tower(f)
            r = self.reg_tower(f)
            cls_out.append(self.cls_logits(c).flatten(2))
            box = self.box_reg(r)
            box_out.append(torch.relu(box if self.scales is None else box * self.scales[level]).flatten(2))
            ctr_out.append(self.ctr_logits(r).flatten(2))
        cls = torch.cat(cls_out, dim=2).transpose(1, 2)
        box = torch.cat(box_out, dim=2).transpose(1, 2)
        ctr = torch.cat(ctr_out, dim=2)[:, 0]
        return cls, box, ctr
