"""torchvision's FCOS <-> fcos.FCOS: configuration, state-dict names and torchvision FCOS checkpoints.

The networks are the same (ResNet C3-C5, FPN with P6/P7 from P5, two towers, centerness on the regression
tower); torchvision differs in names (`head.classification_head.conv` for `head.cls_tower`, ...) and in a few
conventions, each an FCOSConfig field: points at k * step (point_offset 0) with the AnchorGenerator's step,
padded side // map side (point_spacing "padded"); no per-level scales (level_scales False); GroupNorm(32) in
the head; the resized side floored (resize_rounding "floor"); regression ranges without their bounds
(open_ranges); boxes empty after clipping kept (drop_empty_boxes False). It also normalises images before
resizing them (here: after), which moves the input by float rounding.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FCOS as TVFCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead as TVHead
from torchvision.ops import FrozenBatchNorm2d, box_iou
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from .backbone import freeze_stages
from .config import RESNETS, FCOSConfig
from .errors import InputError

TV_GN_GROUPS = 32   # torchvision's FCOSHead: GroupNorm(32, channels)
_RETURN_LAYERS = {"layer2": "0", "layer3": "1", "layer4": "2"}
_NAMES = [("head.classification_head.conv.", "head.cls_tower."),   # torchvision -> fcos.FCOS
          ("head.classification_head.cls_logits.", "head.cls_logits."),
          ("head.regression_head.conv.", "head.reg_tower."),
          ("head.regression_head.bbox_reg.", "head.box_reg."),
          ("head.regression_head.bbox_ctrness.", "head.ctr_logits.")]
_WEIGHTS_NAME = re.compile(r"^\w+_Weights\.\w+$")


def _rename(state: dict, table: list[tuple[str, str]]) -> dict:
    out = {}
    for k, v in state.items():
        out[next((new + k[len(old):] for old, new in table if k.startswith(old)), k)] = v
    return out


def from_torchvision_state(state: dict) -> dict:
    """A torchvision FCOS state dict under fcos.FCOS's names."""
    return _rename(state, _NAMES)


def torchvision_state_dict(model: nn.Module) -> dict:
    """An fcos.FCOS's state dict under torchvision's names (torchvision's FCOS.load_state_dict takes it);
    ValueError if it has learnt per-level scales, which torchvision's head has no place for."""
    state = model.state_dict()
    scales = state.pop("head.scales", None)
    if scales is not None and not torch.all(scales == 1):
        raise InputError(f"per-level scales {scales.tolist()} have no place in torchvision's FCOS")
    return _rename(state, [(new, old) for old, new in _NAMES])


def is_torchvision_fcos(state: dict) -> bool:
    return "head.classification_head.cls_logits.weight" in state and "head.regression_head.bbox_ctrness.weight" in state


def _load(path: Path):
    """torch.load, memory-mapped when the file allows (reading the keys then costs nothing)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:   # files in the legacy (pre-zip) format cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def read_torchvision_weights(weights: str | None) -> dict | None:
    """The torchvision FCOS state dict that `weights` names (a torchvision weights name, downloaded by
    torchvision's weights API, or a state-dict file recognised by its keys); None for None, "imagenet" and a
    ResNet's state dict (fcos/backbone.py loads those). ValueError, one line, for anything else."""
    if weights is None or weights == "imagenet":
        return None
    path = Path(weights)
    if not path.exists() and _WEIGHTS_NAME.match(weights):
        try:
            w = torchvision.models.get_weight(weights)
        except (KeyError, ValueError):
            raise InputError(f"model.weights {weights}: not a torchvision weights name") from None
        if not type(w).__name__.startswith("FCOS_"):
            raise InputError(f"model.weights {weights}: weights of another torchvision model (model.weights takes "
                             "FCOS detector weights, imagenet or a file)")
        try:
            return w.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as e:   # urllib's URLError is an OSError; a torn download a RuntimeError
            raise InputError(f"model.weights {weights}: torchvision could not download {w.url} "
                             f"({type(e).__name__}: {str(e)[:80]}); offline, download it elsewhere and set "
                             "model.weights to the path of that file") from None
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        state = _load(path)
    except Exception as e:  # torch raises several types for foreign or damaged files
        raise InputError(f"{path}: not a readable state dict ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a state dict")
    if is_torchvision_fcos(state):
        return state
    if any(k.startswith(("backbone.", "head.", "rpn.", "roi_heads.")) for k in state):
        raise InputError(f"{path}: a detector's state dict but not torchvision's FCOS "
                         "(no head.classification_head.cls_logits and head.regression_head.bbox_ctrness)")
    return None


def load_torchvision_weights(model: nn.Module, state: dict, source: str) -> None:
    """Copy a torchvision FCOS state dict into an fcos.FCOS in place. Another class count keeps the model's
    own (freshly initialised) classification layer; per-level scales, absent there, stay at 1 (torchvision's
    function). ValueError, one line naming `source`, when the architectures differ."""
    cfg = model.config
    if cfg.gn_groups != TV_GN_GROUPS:
        raise InputError(f"{source}: torchvision's FCOS head was trained with GroupNorm({TV_GN_GROUPS}): "
                         f"set gn_groups {TV_GN_GROUPS} (got {cfg.gn_groups})")
    state = from_torchvision_state(state)
    own = model.state_dict()
    if state["head.cls_logits.weight"].shape[0] != own["head.cls_logits.weight"].shape[0]:
        state = {k: v for k, v in state.items() if not k.startswith("head.cls_logits.")}
    for k, v in state.items():
        if k in own and v.shape != own[k].shape:
            raise InputError(f"{source}: a torchvision FCOS that differs from this model ({k}: {list(v.shape)} "
                             f"there, {list(own[k].shape)} here); backbone, fpn_channels and head_convs must match")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.scales", "head.cls_logits."))
               and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise InputError(f"{source}: a torchvision FCOS that differs from this model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def _resnet_name(body: nn.Module) -> str:
    """The torchvision ResNet builder whose parameter shapes `body` has (built on the meta device)."""
    def shapes(state: dict) -> dict:
        return {k: v.shape for k, v in state.items() if not k.startswith("fc.") and "num_batches" not in k}

    own = shapes(body.state_dict())
    for name in RESNETS:
        with torch.device("meta"):
            if shapes(getattr(torchvision.models, name)().state_dict()) == own:
                return name
    raise InputError(f"torchvision FCOS backbone is not a torchvision ResNet (one of {', '.join(RESNETS)})")


def config_from_torchvision(tv: TVFCOS) -> FCOSConfig:
    """The FCOSConfig that computes what the torchvision FCOS `tv` computes (ResNet-FPN backbone with C3-C5
    and P6/P7 from P5, its FCOSHead, one square anchor per location)."""
    body, fpn, anchors, t = tv.backbone.body, tv.backbone.fpn, tv.anchor_generator, tv.transform
    if getattr(body, "return_layers", None) != _RETURN_LAYERS:
        raise InputError("torchvision FCOS backbone must return ResNet layer2-layer4 (returned_layers [2, 3, 4])")
    if not (isinstance(fpn.extra_blocks, LastLevelP6P7) and fpn.extra_blocks.use_P5):
        raise InputError("torchvision FCOS FPN must make P6 and P7 from P5 (LastLevelP6P7(C, C))")
    if any(len(s) != 1 for s in anchors.sizes) or any(tuple(r) != (1.0,) for r in anchors.aspect_ratios):
        raise InputError("torchvision FCOS anchor generator must have one square anchor per location")
    if t.fixed_size is not None:
        raise InputError("torchvision FCOS transform with fixed_size has no fcos.FCOS equivalent")
    strides = tuple(int(s[0]) for s in anchors.sizes)
    if any(b != 2 * a for a, b in zip(strides, strides[1:], strict=False)):
        raise InputError(f"torchvision FCOS anchor sizes {strides} must double level to level")
    stages = ["layer4", "layer3", "layer2", "layer1", "conv1"]
    trainable = next((i for i, s in enumerate(stages)
                      if not any(p.requires_grad for p in getattr(body, s).parameters())), 5)
    tower = tv.head.classification_head.conv
    groups = [m.num_groups for m in tower if isinstance(m, nn.GroupNorm)]
    return FCOSConfig(
        num_classes=tv.head.classification_head.num_classes, backbone=_resnet_name(body),
        freeze_bn=isinstance(body.bn1, FrozenBatchNorm2d), trainable_layers=trainable,
        fpn_channels=tv.backbone.out_channels, head_convs=sum(isinstance(m, nn.Conv2d) for m in tower),
        gn_groups=groups[0] if groups else TV_GN_GROUPS, level_scales=False,
        min_size=tuple(t.min_size) if len(t.min_size) > 1 else t.min_size[0], max_size=t.max_size,
        size_divisible=t.size_divisible, resize_rounding="floor", strides=strides,
        range_bounds=(0, *(4 * s for s in strides[1:])), open_ranges=True, point_offset=0.0, point_spacing="padded",
        center_sampling_radius=tv.center_sampling_radius, score_thresh=tv.score_thresh,
        topk_candidates=tv.topk_candidates, nms_thresh=tv.nms_thresh, detections_per_img=tv.detections_per_img,
        drop_empty_boxes=False,
        image_mean=tuple(t.image_mean), image_std=tuple(t.image_std))


def to_torchvision(model: nn.Module) -> TVFCOS:
    """A torchvision FCOS with the configuration and weights of the fcos.FCOS `model`, giving its detections
    (plus boxes empty after clipping, if `model` drops them). ValueError naming what torchvision cannot express."""
    cfg = model.config
    needs = [(cfg.point_offset == 0, "point_offset 0"), (cfg.point_spacing == "padded", "point_spacing 'padded'"),
             (cfg.resize_rounding == "floor", "resize_rounding 'floor'"), (cfg.open_ranges, "open_ranges"),
             (cfg.range_bounds == (0, *(4 * s for s in cfg.strides[1:])), "range_bounds (0, 4 * strides[1:])")]
    for ok, what in needs:
        if not ok:
            raise InputError(f"torchvision's FCOS needs {what}")
    state = torchvision_state_dict(model)
    norm = FrozenBatchNorm2d if cfg.freeze_bn else nn.BatchNorm2d
    net = getattr(torchvision.models, cfg.backbone)(weights=None, norm_layer=norm)
    freeze_stages(net, cfg.trainable_layers)
    c, e = cfg.fpn_channels, type(net.layer1[0]).expansion
    backbone = BackboneWithFPN(net, _RETURN_LAYERS, [128 * e, 256 * e, 512 * e], c, extra_blocks=LastLevelP6P7(c, c))
    head = TVHead(c, 1, cfg.num_classes, cfg.head_convs)
    for m in head.modules():
        if isinstance(m, nn.GroupNorm):
            m.num_groups = cfg.gn_groups
    tv = TVFCOS(backbone, cfg.num_classes, min_size=cfg.min_sizes, max_size=cfg.max_size,
                image_mean=list(cfg.image_mean), image_std=list(cfg.image_std),
                anchor_generator=AnchorGenerator(tuple((s,) for s in cfg.strides), ((1.0,),) * len(cfg.strides)),
                head=head, center_sampling_radius=cfg.center_sampling_radius, score_thresh=cfg.score_thresh,
                nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img,
                topk_candidates=cfg.topk_candidates, size_divisible=cfg.size_divisible)
    tv.load_state_dict(state)
    return tv.to(next(model.parameters()).device).train(model.training)


def match_to_reference(ref: dict, out: dict, min_iou: float = 0.98, tol: float = 2e-3):
    """For two detection sets of one image ({"boxes" [N, 4], "scores" [N], "labels" [N]}): each of ref's paired
    with an unpaired one of out's of its label within `tol` in score, at the highest IoU >= min_iou.
    Unmatched ref boxes [U, 4] and the largest score difference among ref's detections paired with out's
    (boxes empty after clipping, which have no IoU: corners within 0.01 pixel)."""
    same = (ref["boxes"][:, None] - out["boxes"][None]).abs().amax(-1) < 0.01
    iou = torch.where(same, 1.0, box_iou(ref["boxes"], out["boxes"]).nan_to_num(0.0))
    free = torch.ones(len(out["scores"]), dtype=torch.bool)
    unmatched, worst = [], 0.0
    for i in range(len(ref["scores"])):
        diff = (out["scores"] - ref["scores"][i]).abs()
        ok = (iou[i] >= min_iou) & (out["labels"] == ref["labels"][i]) & (diff <= tol) & free
        if ok.any():
            j = int(torch.where(ok, iou[i], -1.0).argmax())
            free[j] = False
            worst = max(worst, float(diff[j]))
        else:
            unmatched.append(ref["boxes"][i])
    return (torch.stack(unmatched) if unmatched else torch.zeros(0, 4)), worst
