"""params.yaml: load (safe), validate (one line per problem) and turn into library configs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = Path("params.yaml")

def _num(lo=None, hi=None, integer=False, lo_open=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            return f"must be {'an integer' if integer else 'a number'}, got {v!r}"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}, got {v!r}"
        if hi is not None and v > hi:
            return f"must be <= {hi}, got {v!r}"
    return check


def _choice(*options):
    return lambda v: None if v in options else f"must be one of {', '.join(map(str, options))}, got {v!r}"


def _type(t, optional=False):
    names = {str: "a string", bool: "true or false", list: "a list", dict: "a mapping"}
    return lambda v: None if (optional and v is None) or isinstance(v, t) else \
        f"must be {names.get(t, t.__name__)}{' or null' if optional else ''}, got {v!r}"


def _thresh(v):
    """A score threshold: a number in [0, 1] or `f1` (per class, from metrics/pr.json)."""
    if v != "f1" and _num(0, 1)(v):
        return f"must be a number in [0, 1] or f1, got {v!r}"


def _sizes(v):
    vals = v if isinstance(v, list) else [v]
    if not vals or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 16 for s in vals):
        return f"must be an integer >= 16 or a list of them, got {v!r}"


def _backbone(v):
    from fcos.config import RESNETS
    if v not in RESNETS:
        return f"unknown backbone {v!r} (one of {', '.join(RESNETS)})"


_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

SCHEMA: dict[str, Any] = {
    "data": {
        "format": _choice("shapes", "voc", "coco"), "root": _type(str), "train_split": _type(str),
        "test_split": _type(str), "classes": _type(list, optional=True), "train_difficult": _type(bool),
        "eval_difficult": _type(bool),
        "coco": {k: _type(str, optional=True) for k in ("train_ann", "train_images", "test_ann", "test_images")},
        "shapes": {"seed": _num(0, integer=True), "num_trainval": _num(2, integer=True),
                   "num_test": _num(1, integer=True), "image_size": _num(32, 4096, integer=True),
                   "min_radius": _num(0.01, 0.5), "colours": _choice("class", "random")},
        "val_fraction": _num(0, 0.9), "strict": _type(bool), "num_workers": _num(0, 64, integer=True),
    },
    "model": {
        "backbone": _backbone, "weights": _type(str, optional=True), "freeze_bn": _type(bool),
        "trainable_layers": _num(0, 5, integer=True), "fpn_channels": _num(1, 4096, integer=True),
        "head_convs": _num(0, 16, integer=True), "gn_groups": _num(1, 512, integer=True), "winograd": _type(bool),
        "min_size": _sizes,
        "max_size": _num(16, 10000, integer=True), "center_sampling_radius": _num(0, lo_open=True),
        "score_thresh": _num(0, 1), "nms_thresh": _num(0, 1, lo_open=True),
        "topk_candidates": _num(1, integer=True), "detections_per_img": _num(1, integer=True),
    },
    "train": {
        "epochs": _num(1, 100000, integer=True), "batch_size": _num(1, 4096, integer=True),
        "optimizer": _choice("sgd", "adamw"), "lr": _num(0, 10, lo_open=True), "momentum": _num(0, 1),
        "weight_decay": _num(0, 1), "scheduler": _choice("cosine", "multistep"), "warmup_epochs": _num(0),
        "milestones": _type(list), "gamma": _num(0, 1, lo_open=True), "clip_grad_norm": _num(0),
        "amp": _choice("none", "fp16", "bf16"), "channels_last": _type(bool), "nonfinite": _choice("stop", "skip"),
        "seed": _num(0, integer=True), "eval_every": _num(0, integer=True), "device": _type(str),
    },
    "eval": {"batch_size": _num(1, 4096, integer=True), "backend": _choice("faster", "pycocotools"),
             "confusion_thresh": _thresh},
    "visualize": {"num_images": _num(1, 1000, integer=True), "score_thresh": _thresh},
    "tracking": {"enabled": _type(bool), "experiment": _type(str), "log_every": _num(1, integer=True)},
    "tune": {"space": _type(str), "trials": _num(1, integer=True), "metric": _choice(*_STATS),
             "direction": _choice("maximize", "minimize"), "seed": _num(0, integer=True),
             "pruner": _choice("hyperband", "median", "none"), "storage": _type(str, optional=True),
             "study_name": _type(str), "heartbeat_seconds": _num(1, integer=True)},
}


def _validate(node: Any, schema: Any, where: str, problems: list[str]) -> None:
    if isinstance(schema, dict):
        if not isinstance(node, dict):
            problems.append(f"{where or 'params'}: must be a mapping, got {node!r}")
            return
        for key in node:
            if key not in schema:
                problems.append(f"{where + '.' if where else ''}{key}: unknown key")
        for key, sub in schema.items():
            path = f"{where}.{key}" if where else key
            if key not in node:
                problems.append(f"{path}: missing")
            else:
                _validate(node[key], sub, path, problems)
        return
    message = schema(node)
    if message:
        problems.append(f"{where}: {message}")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict:
    """Read and validate; UserError lists every problem, one per line, each prefixed with the file."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: params file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    problems: list[str] = []
    _validate(params if params is not None else {}, SCHEMA, "", problems)
    if not problems:
        m = params["model"]
        if m["fpn_channels"] % m["gn_groups"]:
            problems.append(f"model.gn_groups: must divide model.fpn_channels ({m['fpn_channels']}), got {m['gn_groups']}")
        sizes = m["min_size"] if isinstance(m["min_size"], list) else [m["min_size"]]
        if m["max_size"] < max(sizes):
            problems.append(f"model.max_size: must be >= model.min_size ({max(sizes)}), got {m['max_size']}")
    if problems:
        raise UserError("\n".join(f"{path}: {p}" for p in problems))
    return params


def model_config(params: dict, num_classes: int):
    from fcos import FCOSConfig
    m = dict(params["model"])
    m["min_size"] = tuple(m["min_size"]) if isinstance(m["min_size"], list) else m["min_size"]
    return FCOSConfig(num_classes=num_classes, **m)


def train_config(params: dict):
    from fcos.engine import TrainConfig
    t = {k: v for k, v in params["train"].items() if k not in ("batch_size", "device")}
    t["milestones"] = tuple(t["milestones"])
    return TrainConfig(**t, eval_backend=params["eval"]["backend"])


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1} (for MLflow params and reports)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def device_of(params: dict):
    import torch
    d = params["train"]["device"]
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(d)
