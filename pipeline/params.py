"""params.yaml: load (safe; overlays merged over their base), validate (one line per problem) and turn
into the library's configs. The model, decode and train sections are checked by fcos.config's own
validators; the rest by the schema below."""
from __future__ import annotations

import copy
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from fcos.coco_eval import STAT_NAMES
from fcos.config import DECODE_KEYS, FCOSConfig, TrainConfig, choice, number, of_type
from fcos.voc_eval import INTERPOLATIONS

from .errors import UserError
from .paths import PARAMS

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


def _voc_metric(v) -> str | None:
    """eval.voc_metric: null, one of VOC's interpolations or a list of them (pipeline/eval_protocol.py)."""
    values = [] if v is None else [v] if isinstance(v, str) else v if isinstance(v, list) else None
    if values is None or not all(isinstance(x, str) and x in INTERPOLATIONS for x in values) \
            or len(set(values)) != len(values):
        return f"must be null, {', '.join(INTERPOLATIONS)} or a list of them, got {v!r}"
    return None


def _fraction(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
    return None if ok else f"must be a number in (0, 1], got {v!r}"


def _nonempty(v) -> str | None:
    return None if isinstance(v, str) and v.strip() else f"must be a non-empty string, got {v!r}"


EXPERIMENT_NAME_MAX = 500   # MLflow's MAX_EXPERIMENT_NAME_LENGTH (tests/test_reliability_tracking.py checks it)


def _experiment(v) -> str | None:
    if _nonempty(v):
        return _nonempty(v)
    return None if len(v) <= EXPERIMENT_NAME_MAX else \
        f"must be at most {EXPERIMENT_NAME_MAX} characters (MLflow's limit), got {len(v)}"


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
             "device": _device, "amp": choice("none", "auto", "fp16", "bf16"), "winograd": _winograd,
             "confusion_thresh": _thresh, "voc_metric": _voc_metric, "worst_images": number(0, 1000, integer=True),
             "checkpoint": choice("last", "best")},
    "visualize": {"num_images": number(1, 1000, integer=True), "score_thresh": _thresh},
    "tracking": {"enabled": of_type(bool), "experiment": _experiment, "log_every": number(1, 100000, integer=True)},
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
    return problems or _across_sections(params)


def _across_sections(params: dict) -> list[str]:
    """Rules that join keys of different sections (checked once each key is valid on its own)."""
    if params["eval"]["checkpoint"] == "best" and not params["train"]["eval_every"]:
        return ["eval.checkpoint: best needs validation during training (the best epoch is the best validated "
                "one): set train.eval_every > 0, or eval.checkpoint: last"]
    return []


def _count_nodes(node: Any, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise UserError("too many values (a YAML alias bomb?)")
    for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
        _count_nodes(child, budget)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently, so
    the first value would be ignored without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *anchor`: its keys are overridable defaults
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_text_file(path: Path, limit: int = MAX_BYTES) -> str:
    """The text of a regular file of at most `limit` bytes: a FIFO, device or folder is refused without
    blocking or reading without end (UserError naming the file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a FIFO opens at once instead of waiting for a writer
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{path}: is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path}: not a regular file (a pipe, device or socket)")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UserError(f"{path}: larger than {limit // 1000} KB: not a params file")
    return data.decode("utf-8")


def _read_yaml(path: Path) -> Any:
    try:
        data = yaml.load(read_text_file(path), Loader=_UniqueKeyLoader)
        _count_nodes(data, [MAX_NODES])
        return data
    except FileNotFoundError:
        raise UserError(f"{path}: params file not found") from None
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


MAX_OVERLAYS = 16   # a chain of `base:` files longer than this is refused (no real config needs more)


def _sections(data: dict, path: Path) -> None:
    """A params file's top level holds sections of params.yaml only. Unknown names are quoted only when they
    look like a mistyped section (a short identifier): a file that is no params file at all (`base:
    /etc/passwd`) is refused without copying its lines into the message."""
    unknown = [k for k in data if k not in SCHEMA and k != "base"]
    if not unknown:
        return
    names = [k for k in unknown if isinstance(k, str) and re.fullmatch(r"[A-Za-z_][\w-]{0,30}", k)]
    if len(unknown) <= 3 and len(names) == len(unknown):
        raise UserError(f"{path}: {', '.join(names)}: not a section of params.yaml ({', '.join(SCHEMA)})")
    raise UserError(f"{path}: not a params file ({len(unknown)} top-level keys are not sections of params.yaml)")


def read_params(path: str | Path = PARAMS, _seen: tuple = ()) -> dict:
    """The params of a file, unvalidated. A file with a top-level `base: OTHER.yaml` is an overlay: only
    the keys it sets differ from OTHER (a path relative to the working directory, like every path)."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of sections, got {type(data).__name__}")
    _sections(data, path)
    if "base" not in data:
        return data
    return _over_base(data, path, _seen)


def _over_base(data: dict, path: Path, seen: tuple = ()) -> dict:
    """An overlay's values merged over its base file's."""
    data = dict(data)
    base = data.pop("base")
    if not isinstance(base, str):
        raise UserError(f"{path}: base: must be the path of a params file, got {base!r}")
    chain = (*seen, path.resolve())
    if Path(base).resolve() in chain:
        raise UserError(f"{path}: base: {base} includes itself (through {' -> '.join(p.name for p in chain)})")
    if len(chain) >= MAX_OVERLAYS:
        raise UserError(f"{path}: base: a chain of more than {MAX_OVERLAYS} overlays")
    return merge(read_params(base, chain), data)


def load_params(path: str | Path = PARAMS) -> dict:
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


def device_of(params: dict, section: str = "train"):
    """`<section>.device` (train: training; eval: evaluate, visualize and predict) as a torch.device; a
    clear error for a device torch does not see."""
    import torch
    d, key = params[section]["device"], f"{section}.device"
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{key}: {d} asked for, but torch sees no CUDA GPU here (use auto or cpu)")
    if d.startswith("cuda:") and int(d[5:]) >= torch.cuda.device_count():
        raise UserError(f"{key}: {d} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    if d == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"{key}: mps asked for, but this torch has no MPS device")
    return torch.device(d)


def set_values(path: str | Path, values: dict[str, Any]) -> None:
    """Set dotted keys ({"train.lr": 0.01, "data.coco.train_ann": "a.json"}) in a params file in place,
    keeping its comments and layout (ruamel.yaml round trip); in an overlay, keys it does not hold yet are
    added. The result (an overlay: merged over its base) must validate."""
    from io import StringIO

    from ruamel.yaml import YAML

    path = Path(path)
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    _read_yaml(path)   # the checks every params file gets (size, regular file, YAML, no key twice)
    doc = rt.load(read_text_file(path))
    overlay = isinstance(doc, dict) and "base" in doc   # holds only some keys: the others are added to it
    for key, value in values.items():
        node, *parents = doc, *key.split(".")[:-1]
        for part in parents:
            if overlay and part not in node:
                node[part] = {}
            if not isinstance(node.get(part), dict):
                raise UserError(f"{path}: {key}: no such section to set")
            node = node[part]
        leaf = key.split(".")[-1]
        if leaf not in node and not overlay:
            raise UserError(f"{path}: {key}: not a params key")
        node[leaf] = value
    text = StringIO()
    rt.dump(doc, text)
    result = yaml.safe_load(text.getvalue())
    problems = validate(_over_base(result, path) if "base" in result else result)   # an overlay: as merged
    if problems:
        raise UserError("\n".join(f"{path}: {p}" for p in problems))
    from .artifacts import write_text
    write_text(path, text.getvalue())
