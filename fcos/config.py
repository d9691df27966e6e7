"""The library's configs, as plain types: `FCOSConfig` (the detector; it travels inside checkpoints) and
`TrainConfig` (the training loop). Each has one set of defaults and one validator, `check`, which
pipeline/params.py delegates to: a value that passes here is one the library can run."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .coco_eval import STAT_NAMES
from .errors import InputError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
_LEGACY_KEYS = ("winograd",)   # once a model field, now an inference option (fcos.inference.for_inference)

Rule = Callable[[Any], "str | None"]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(lo: float | None = None, hi: float | None = None, *, integer: bool = False, lo_open: bool = False,
           hi_open: bool = False) -> Rule:
    """A rule for a finite number (an integer if asked) in [lo, hi]; open ends where asked."""
    def check(v):
        if not (_is_int(v) if integer else _is_num(v)):
            return f"must be {'an integer' if integer else 'a number'}, got {v!r}"
        if not math.isfinite(v):
            return f"must be a finite number, got {v!r}"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}, got {v!r}"
        if hi is not None and (v >= hi if hi_open else v > hi):
            return f"must be {'<' if hi_open else '<='} {hi}, got {v!r}"
        return None
    return check


def choice(*options) -> Rule:
    return lambda v: None if isinstance(v, str) and v in options else \
        f"must be one of {', '.join(map(str, options))}, got {v!r}"


def of_type(t: type, optional: bool = False) -> Rule:
    names = {str: "a string", bool: "true or false", list: "a list", dict: "a mapping"}
    return lambda v: None if (optional and v is None) or isinstance(v, t) else \
        f"must be {names.get(t, t.__name__)}{' or null' if optional else ''}, got {v!r}"


def auto_or_bool(v) -> str | None:
    return None if v == "auto" or isinstance(v, bool) else f"must be auto, true or false, got {v!r}"


def numbers(n: int, rule: Rule) -> Rule:
    """A list or tuple of exactly n values, each passing `rule`."""
    def check(v):
        if not isinstance(v, (list, tuple)) or len(v) != n:
            return f"must be a list of {n} values, got {v!r}"
        return next((f"item {i}: {m}" for i, x in enumerate(v) if (m := rule(x))), None)
    return check


def _sizes(v) -> str | None:
    vals = list(v) if isinstance(v, (list, tuple)) else [v]
    if not vals or not all(_is_int(s) and 16 <= s <= 10000 for s in vals):
        return f"must be an integer in 16..10000 or a list of them, got {v!r}"
    return None


def _backbone(v) -> str | None:
    return None if v in RESNETS else f"unknown backbone {v!r} (one of {', '.join(RESNETS)})"


def _param(default, section: str):
    """A field that the `section` of the pipeline's params.yaml sets: the pipeline derives the keys of its
    model, decode and train sections from these marks (pipeline/params_schema.py), never from a copied list."""
    return field(default=default, metadata={"params": section})


def param_keys(config: type, section: str) -> tuple[str, ...]:
    """The fields of `config` marked for params.yaml's `section`, in their order."""
    return tuple(f.name for f in fields(config) if f.metadata.get("params") == section)


def _check(cls, values: dict, rules: dict[str, Rule], joint: Callable[[dict], list[str]]) -> list[str]:
    """'key: problem' lines for `values` (a partial or full set of cls's fields)."""
    known = {f.name for f in fields(cls)}
    problems = [f"{k}: unknown key" for k in values if k not in known]
    problems += [f"{k}: {m}" for k, v in values.items() if k in rules and (m := rules[k](v))]
    if not problems:
        full = {f.name: getattr(cls, f.name, None) for f in fields(cls) if f.name in rules}
        problems += joint({**full, **values})
    return problems


@dataclass
class FCOSConfig:
    """Model, assignment, loss and decoding parameters; the defaults follow the FCOS paper."""

    num_classes: int = 20
    backbone: str = _param("resnet18", "model")
    # None | "imagenet" | a torchvision FCOS weights name ("FCOS_ResNet50_FPN_Weights.COCO_V1") | path to a
    # local state dict: a ResNet's (backbone only) or a torchvision FCOS's (the whole detector, fcos/interop.py)
    weights: str | None = _param(None, "model")
    freeze_bn: bool = _param(False, "model")             # FrozenBatchNorm2d in the backbone
    # backbone stages trained, counted from layer4 down to conv1 (0-5)
    trainable_layers: int = _param(5, "model")
    fpn_channels: int = _param(256, "model")
    head_convs: int = _param(4, "model")                 # conv3x3 + GroupNorm + ReLU blocks per head tower
    gn_groups: int = _param(16, "model")
    # learnable regression scale per level (FCOS paper); torchvision: none
    level_scales: bool = _param(True, "model")
    # short side; a tuple: random choice per batch in training, the last in eval
    min_size: int | tuple[int, ...] = _param(320, "model")
    max_size: int = _param(480, "model")
    size_divisible: int = 32
    # resized side: round(side * scale) | "floor" (torchvision's interpolate)
    resize_rounding: str = _param("round", "model")
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    # points at (k + point_offset) * step (FCOS paper); torchvision: 0
    point_offset: float = _param(0.5, "model")
    # step between points: "stride" (the level's) | "padded": padded batch side // map side per axis, as
    # torchvision's AnchorGenerator (differs from the stride on P6/P7 when the padded side is not a multiple of it)
    point_spacing: str = _param("stride", "model")
    # Level i takes points whose max(l, t, r, b) lies in [range_bounds[i], range_bounds[i+1]]; the last is open.
    range_bounds: tuple[float, ...] = (0, 64, 128, 256, 512)
    # the bounds themselves excluded, as torchvision (the paper includes them)
    open_ranges: bool = _param(False, "model")
    center_sampling_radius: float = _param(1.5, "model")
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_prob: float = 0.01
    score_thresh: float = _param(0.05, "decode")
    nms_thresh: float = _param(0.6, "decode")
    topk_candidates: int = _param(1000, "decode")         # per level, before NMS
    detections_per_img: int = _param(100, "decode")
    drop_empty_boxes: bool = True       # boxes empty after clipping to the image; torchvision keeps them
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    RULES = {
        "num_classes": number(1, 100000, integer=True), "backbone": _backbone, "weights": of_type(str, optional=True),
        "freeze_bn": of_type(bool), "trainable_layers": number(0, 5, integer=True),
        "fpn_channels": number(1, 4096, integer=True), "head_convs": number(0, 16, integer=True),
        "gn_groups": number(1, 512, integer=True), "min_size": _sizes, "max_size": number(16, 10000, integer=True),
        "size_divisible": number(1, 512, integer=True), "strides": numbers(5, number(1, integer=True)),
        "range_bounds": numbers(5, number(0)), "center_sampling_radius": number(0, lo_open=True),
        "focal_alpha": number(0, 1), "focal_gamma": number(0), "prior_prob": number(0, 1, lo_open=True, hi_open=True),
        "level_scales": of_type(bool), "resize_rounding": choice("round", "floor"), "point_offset": number(0, 1),
        "point_spacing": choice("stride", "padded"), "open_ranges": of_type(bool), "drop_empty_boxes": of_type(bool),
        "score_thresh": number(0, 1, hi_open=True), "nms_thresh": number(0, 1, lo_open=True),
        "topk_candidates": number(1, integer=True), "detections_per_img": number(1, integer=True),
        "image_mean": numbers(3, number(0, 1)), "image_std": numbers(3, number(0, lo_open=True)),
    }

    def __post_init__(self):
        if isinstance(self.min_size, (list, tuple)):
            self.min_size = tuple(self.min_size)
        for name in ("strides", "range_bounds", "image_mean", "image_std"):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    @property
    def min_sizes(self) -> tuple[int, ...]:
        return self.min_size if isinstance(self.min_size, tuple) else (self.min_size,)

    @staticmethod
    def _joint(v: dict) -> list[str]:
        sizes = list(v["min_size"]) if isinstance(v["min_size"], (list, tuple)) else [v["min_size"]]
        problems = []
        if v["fpn_channels"] % v["gn_groups"]:
            problems.append(f"gn_groups: must divide fpn_channels ({v['fpn_channels']}), got {v['gn_groups']}")
        if v["max_size"] < max(sizes):
            problems.append(f"max_size: must be >= min_size ({max(sizes)}), got {v['max_size']}")
        if list(v["range_bounds"]) != sorted(v["range_bounds"]):
            problems.append(f"range_bounds: must be increasing, got {list(v['range_bounds'])}")
        return problems

    @classmethod
    def check(cls, values: dict) -> list[str]:
        """'field: problem' lines for a dict of (some of) the fields; [] when they make a valid config."""
        return _check(cls, values, cls.RULES, cls._joint)

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        problems = self.check({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise InputError(problems[0])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FCOSConfig:
        """A config from a plain dict (e.g. a checkpoint's); keys of older versions are dropped."""
        d = {k: v for k, v in d.items() if k not in _LEGACY_KEYS}
        problems = cls.check(d)
        if problems:
            raise InputError("; ".join(problems))
        return cls(**d)


@dataclass
class TrainConfig:
    """The training loop's parameters (fcos.engine.fit)."""

    epochs: int = _param(12, "train")
    optimizer: str = _param("sgd", "train")           # sgd | adamw
    lr: float = _param(0.01, "train")
    momentum: float = _param(0.9, "train")
    weight_decay: float = _param(1e-4, "train")       # not applied to norm and bias parameters
    scheduler: str = _param("cosine", "train")        # cosine | multistep
    warmup_epochs: float = _param(1.0, "train")       # linear warmup, in epochs (fractions allowed)
    milestones: tuple[float, ...] = _param((0.67, 0.89), "train")   # multistep: fractions of training
    gamma: float = _param(0.1, "train")
    clip_grad_norm: float = _param(10.0, "train")     # 0: no clipping
    # none | auto (bf16 where native, else fp16 on CUDA, else none) | fp16 | bf16
    amp: str = _param("none", "train")
    # CPU (Winograd in NHWC never transposes) and CUDA (tensor cores) alike
    channels_last: bool = _param(True, "train")
    # CPU float32: 3x3 convolutions as Winograd where timing picks it (winograd_train)
    winograd: bool | str = _param("auto", "train")
    # DDP: BatchNorm statistics synchronised across ranks (SyncBatchNorm)
    sync_bn: bool = _param(False, "train")
    nonfinite: str = _param("stop", "train")          # stop | skip: what a NaN/inf loss does
    seed: int = _param(0, "train")
    eval_every: int = _param(0, "train")              # validate every N epochs (0: never)
    # validation stat whose best epoch is kept (higher is better, as every COCO stat)
    best_metric: str = _param("AP50", "train")
    # validations without improvement that stop training (0: never; needs eval_every)
    patience: int = _param(0, "train")
    eval_backend: str = "faster"     # faster | pycocotools
    sync_every: int = 0              # steps between reads of the losses by the host; 0: 10 on CUDA, 1 on CPU
    extra: dict = field(default_factory=dict)   # free-form, stored in the checkpoint

    RULES = {
        "epochs": number(1, 100000, integer=True), "optimizer": choice("sgd", "adamw"),
        "lr": number(0, 10, lo_open=True), "momentum": number(0, 1), "weight_decay": number(0, 1),
        "scheduler": choice("cosine", "multistep"), "warmup_epochs": number(0, 100000),
        "milestones": lambda v: of_type(list)(list(v) if isinstance(v, tuple) else v)
        or next((f"item {i}: {m}" for i, x in enumerate(v) if (m := number(0, 1)(x))), None),
        "gamma": number(0, 1, lo_open=True), "clip_grad_norm": number(0), "amp": choice("none", "auto", "fp16", "bf16"),
        "channels_last": of_type(bool), "winograd": auto_or_bool, "sync_bn": of_type(bool),
        "nonfinite": choice("stop", "skip"),
        "seed": number(0, 2**32 - 1, integer=True), "eval_every": number(0, integer=True),
        "best_metric": choice(*STAT_NAMES), "patience": number(0, 100000, integer=True),
        "eval_backend": choice("faster", "pycocotools"), "sync_every": number(0, 100000, integer=True),
        "extra": of_type(dict),
    }

    def __post_init__(self):
        self.milestones = tuple(self.milestones)
        problems = self.check({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise InputError(problems[0])

    @classmethod
    def check(cls, values: dict) -> list[str]:
        """'field: problem' lines for a dict of (some of) the fields; [] when they make a valid config."""
        return _check(cls, values, cls.RULES, cls._joint)

    @staticmethod
    def _joint(v: dict) -> list[str]:
        if v["patience"] and not v["eval_every"]:
            return [f"patience: counts validations, so it needs eval_every > 0 (got patience {v['patience']} with "
                    "eval_every 0)"]
        return []


DECODE_KEYS = param_keys(FCOSConfig, "decode")   # how outputs become detections: FCOS.set_decoding's keys
