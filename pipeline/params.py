"""params.yaml: load (safe; overlays merged over their base), validate (one line per problem) and turn
into the library's configs. The model, decode and train sections are checked by fcos.config's own
validators; the rest by the schema below."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from fcos.coco_eval import STAT_NAMES
from fcos.config import DECODE_KEYS, FCOSConfig, TrainConfig, choice, number, of_type

from .errors import UserError

DEFAULT_PARAMS = Path("params.yaml")
MAX_BYTES = 1_000_000          # a params file is a few KB; this refuses YAML alias bombs before parsing
MAX_NODES = 20_000             # ... and after parsing, counting every value reached through aliases
MODEL_KEYS = ("backbone", "weights", "freeze_bn", "trainable_layers", "fpn_channels", "head_convs", "gn_groups",
              "min_size", "max_size", "center_sampling_radius",
              "level_scales", "resize_rounding", "point_offset", "point_spacing", "open_ranges")
PIPELINE_TRAIN_KEYS = ("batch_size", "device")


def _device(v) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, got {v!r}"
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
        return f"must be auto, cpu, cuda, cuda:N or mps, got {v!r}"
    return None


def _classes(v) -> str | None:
    if v is None:
        return None
    if not isinstance(v, list) or not v or not all(isinstance(c, str) and c.strip() for c in v):
        return f"must be null or a non-empty list of class names (quote names like yes/no/null), got {v!r}"
    if len(set(v)) != len(v):
        return f"must not repeat a class name, got {v!r}"
    return None


def _thresh(v) -> str | None:
    """A score threshold: a number in [0, 1] or `f1` (each class's F1-optimal one, from metrics/pr.json)."""
    return None if v == "f1" or not number(0, 1)(v) else f"must be a number in [0, 1] or f1, got {v!r}"


def _winograd(v) -> str | None:
    return None if v == "auto" or isinstance(v, bool) else f"must be auto, true or false, got {v!r}"


def _fraction(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
    return None if ok else f"must be a number in (0, 1], got {v!r}"


def _nonempty(v) -> str | None:
    return None if isinstance(v, str) and v.strip() else f"must be a non-empty string, got {v!r}"


SCHEMA: dict[str, Any] = {
    "data": {
        "format": choice("shapes", "voc", "coco"), "root": _nonempty, "train_split": _nonempty,
        "test_split": _nonempty, "classes": _classes, "train_difficult": of_type(bool),
        "eval_difficult": of_type(bool),
        "coco": {k: of_type(str, optional=True) for k in ("train_ann", "train_images", "test_ann", "test_images")},
        "shapes": {"seed": number(0, 2**32 - 1, integer=True), "num_trainval": number(2, 1_000_000, integer=True),
                   "num_test": number(1, 1_000_000, integer=True), "image_size": number(32, 4096, integer=True),
                   "min_radius": number(0.01, 0.5), "colours": choice("class", "random")},
        "val_fraction": number(0, 0.9), "strict": of_type(bool), "num_workers": number(0, 64, integer=True),
    },
    "model": {},      # FCOSConfig.check
    "decode": {},     # FCOSConfig.check
    "train": {"batch_size": number(1, 4096, integer=True), "device": _device},   # + TrainConfig.check
    "eval": {"batch_size": number(1, 4096, integer=True), "backend": choice("faster", "pycocotools"),
             "winograd": _winograd, "confusion_thresh": _thresh},
    "visualize": {"num_images": number(1, 1000, integer=True), "score_thresh": _thresh},
    "tracking": {"enabled": of_type(bool), "experiment": _nonempty, "log_every": number(1, 100000, integer=True)},
    "tune": {"space": _nonempty, "trials": number(1, 100000, integer=True), "metric": choice(*STAT_NAMES),
             "direction": choice("maximize", "minimize"), "seed": number(0, 2**32 - 1, integer=True),
             "pruner": choice("asha", "hyperband", "median", "none"), "storage": of_type(str, optional=True),
             "study_name": _nonempty, "heartbeat_seconds": number(1, 3600, integer=True),
             "train_fraction": _fraction, "startup_trials": number(0, 1000, integer=True)},
}
# Keys of the sections that library configs validate (so unknown and missing keys are still reported).
DELEGATED = {"model": MODEL_KEYS, "decode": DECODE_KEYS,
             "train": PIPELINE_TRAIN_KEYS + tuple(k for k in TrainConfig.RULES
                                                  if k not in ("eval_backend", "sync_every", "extra"))}


def _validate(node: Any, schema: Any, where: str, problems: list[str]) -> None:
    if isinstance(schema, dict):
        if not isinstance(node, dict):
            problems.append(f"{where or 'params'}: must be a mapping, got {node!r}")
            return
        keys = DELEGATED.get(where, ())
        expected = list(schema) + [k for k in keys if k not in schema]
        problems += [f"{where + '.' if where else ''}{key}: unknown key" for key in node if key not in expected]
        for key in expected:
            path = f"{where}.{key}" if where else key
            if key not in node:
                problems.append(f"{path}: missing")
            elif key in schema:
                _validate(node[key], schema[key], path, problems)
        if where in DELEGATED:
            values = {k: v for k, v in node.items() if k in keys and k not in schema}
            if where == "train":
                problems += [f"train.{p}" for p in TrainConfig.check(values)]
            elif where == "model":
                problems += [f"model.{p}" for p in FCOSConfig.check(_tupled(values))]
            elif where == "decode":
                problems += [f"decode.{p}" for p in FCOSConfig.check(values)]
        return
    message = schema(node)
    if message:
        problems.append(f"{where}: {message}")


def _tupled(model: dict) -> dict:
    return {**model, "min_size": tuple(model["min_size"])} if isinstance(model.get("min_size"), list) else model


def validate(params: Any) -> list[str]:
    """Every problem of a full params dict, one 'section.key: problem' line each."""
    problems: list[str] = []
    _validate(params if params is not None else {}, SCHEMA, "", problems)
    return problems


def _count_nodes(node: Any, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise UserError("too many values (a YAML alias bomb?)")
    for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
        _count_nodes(child, budget)


def _read_yaml(path: Path) -> Any:
    try:
        if path.is_file() and path.stat().st_size > MAX_BYTES:
            raise UserError(f"{path}: larger than {MAX_BYTES // 1000} KB: not a params file")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        _count_nodes(data, [MAX_NODES])
        return data
    except FileNotFoundError:
        raise UserError(f"{path}: params file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a params file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UserError as e:
        raise UserError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply") from None


def merge(base: dict, overlay: dict) -> dict:
    """A copy of `base` with `overlay`'s values set, section by section (a mapping merges, any other value
    replaces)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_params(path: str | Path = DEFAULT_PARAMS, _seen: tuple = ()) -> dict:
    """The params of a file, unvalidated. A file with a top-level `base: OTHER.yaml` is an overlay: only
    the keys it sets differ from OTHER (a path relative to the working directory, like every path)."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of sections, got {type(data).__name__}")
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str):
        raise UserError(f"{path}: base: must be the path of a params file, got {base!r}")
    if Path(base).resolve() in _seen or len(_seen) > 8:
        raise UserError(f"{path}: base: {base} includes itself")
    return merge(read_params(base, (*_seen, path.resolve())), data)


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict:
    """Read (overlays merged) and validate; UserError lists every problem, one per line, each prefixed with
    the file."""
    params = read_params(path)
    problems = validate(params)
    if problems:
        raise UserError("\n".join(f"{path}: {p}" for p in problems))
    return params


def model_config(params: dict, num_classes: int, decode: bool = False) -> FCOSConfig:
    """The detector's config from the model section (and the decode section when asked: inference
    stages; training keeps FCOSConfig's decoding defaults so that changing decode never retrains)."""
    values = _tupled(dict(params["model"]))
    if decode:
        values.update(params["decode"])
    return FCOSConfig(num_classes=num_classes, **values)


def train_config(params: dict) -> TrainConfig:
    t = {k: v for k, v in params["train"].items() if k not in PIPELINE_TRAIN_KEYS}
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
    """train.device as a torch.device; a clear error for CUDA on a machine without it."""
    import torch
    d = params["train"]["device"]
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device: {d} asked for, but torch sees no CUDA GPU here (use auto or cpu)")
    if d.startswith("cuda:") and int(d[5:]) >= torch.cuda.device_count():
        raise UserError(f"train.device: {d} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    if d == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("train.device: mps asked for, but this torch has no MPS device")
    return torch.device(d)



def set_values(path: str | Path, values: dict[str, Any]) -> None:
    """Set dotted keys ({"train.lr": 0.01, "data.coco.train_ann": "a.json"}) in a params file in place,
    keeping its comments and layout (ruamel.yaml round trip); the result must validate."""
    from io import StringIO

    from ruamel.yaml import YAML

    path = Path(path)
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    doc = rt.load(path.read_text(encoding="utf-8"))
    for key, value in values.items():
        node, *parents = doc, *key.split(".")[:-1]
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise UserError(f"{path}: {key}: no such section to set")
            node = node[part]
        leaf = key.split(".")[-1]
        if leaf not in node:
            raise UserError(f"{path}: {key}: not a params key")
        node[leaf] = value
    text = StringIO()
    rt.dump(doc, text)
    problems = validate(yaml.safe_load(text.getvalue()))
    if problems:
        raise UserError("\n".join(f"{path}: {p}" for p in problems))
    from .artifacts import write_text
    write_text(path, text.getvalue())
