"""What params.yaml holds, typed: each section a frozen dataclass whose fields carry their rule, and `Params`,
the whole file, built once at a command's start (pipeline/params.py: load_params) and passed everywhere
after. The model, decode and train sections are the library's own: their keys are the fields fcos.config
marks for them (`param_keys`) and their values are checked by FCOSConfig.check / TrainConfig.check; the
pipeline adds only train.batch_size and train.device."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Any

from fcos.coco_eval import STAT_NAMES
from fcos.config import FCOSConfig, TrainConfig, choice, number, of_type, param_keys
from fcos.voc_eval import INTERPOLATIONS

from .errors import UserError

EXPERIMENT_NAME_MAX = 500   # MLflow's MAX_EXPERIMENT_NAME_LENGTH (tests/test_reliability_tracking_faults.py checks it)


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


def _experiment(v) -> str | None:
    if _nonempty(v):
        return _nonempty(v)
    return None if len(v) <= EXPERIMENT_NAME_MAX else \
        f"must be at most {EXPERIMENT_NAME_MAX} characters (MLflow's limit), got {len(v)}"


def key(rule) -> Any:
    """A params key checked by `rule` (value -> None, or what is wrong)."""
    return field(metadata={"rule": rule})


def section(cls: type) -> Any:
    """A nested section (a mapping in the file)."""
    return field(metadata={"section": cls})


@dataclass(frozen=True)
class CocoFiles:
    """data.coco: an instances json and an image folder per split, relative to data.root."""
    train_ann: str | None = key(of_type(str, optional=True))
    train_images: str | None = key(of_type(str, optional=True))
    test_ann: str | None = key(of_type(str, optional=True))
    test_images: str | None = key(of_type(str, optional=True))


@dataclass(frozen=True)
class ShapesParams:
    """data.shapes: the embedded generator (fcos/data/shapes.py)."""
    seed: int = key(number(0, 2**32 - 1, integer=True))
    num_trainval: int = key(number(2, 1_000_000, integer=True))
    num_test: int = key(number(1, 1_000_000, integer=True))
    image_size: int = key(number(32, 4096, integer=True))
    min_radius: float = key(number(0.01, 0.5))
    colours: str = key(choice("class", "random"))


@dataclass(frozen=True)
class DataParams:
    format: str = key(choice("shapes", "voc", "coco"))
    root: str = key(_nonempty)
    train_split: str = key(_nonempty)
    test_split: str = key(_nonempty)
    classes: list[str] | None = key(_classes)
    train_difficult: bool = key(of_type(bool))
    eval_difficult: bool = key(of_type(bool))
    coco: CocoFiles = section(CocoFiles)
    shapes: ShapesParams = section(ShapesParams)
    val_fraction: float = key(number(0, 0.9))
    strict: bool = key(of_type(bool))
    num_workers: int = key(number(0, 64, integer=True))


def _library_section(name: str, config: type, group: str, extra: dict[str, tuple[str, Any]] | None = None) -> type:
    """A frozen dataclass of the fields of `config` marked for params.yaml's `group` (their values checked by
    config.check, joint rules included), then the pipeline's own `extra` keys {name: (type, rule)}."""
    own = [(f.name, f.type, field(metadata={"library": config})) for f in fields(config) if f.name in
           param_keys(config, group)]
    return make_dataclass(name, own + [(n, t, key(rule)) for n, (t, rule) in (extra or {}).items()], frozen=True)


ModelParams = _library_section("ModelParams", FCOSConfig, "model")
DecodeParams = _library_section("DecodeParams", FCOSConfig, "decode")
TrainParams = _library_section("TrainParams", TrainConfig, "train",
                               {"batch_size": ("int", number(1, 4096, integer=True)), "device": ("str", _device)})


@dataclass(frozen=True)
class EvalParams:
    batch_size: int = key(number(1, 4096, integer=True))
    backend: str = key(choice("faster", "pycocotools"))
    device: str = key(_device)
    amp: str = key(choice("none", "auto", "fp16", "bf16"))
    winograd: str | bool = key(_winograd)
    confusion_thresh: float | str = key(_thresh)
    voc_metric: str | list[str] | None = key(_voc_metric)
    worst_images: int = key(number(0, 1000, integer=True))
    checkpoint: str = key(choice("last", "best"))


@dataclass(frozen=True)
class VisualizeParams:
    num_images: int = key(number(1, 1000, integer=True))
    score_thresh: float | str = key(_thresh)


@dataclass(frozen=True)
class TrackingParams:
    enabled: bool = key(of_type(bool))
    experiment: str = key(_experiment)
    log_every: int = key(number(1, 100000, integer=True))


@dataclass(frozen=True)
class TuneParams:
    space: str = key(_nonempty)
    trials: int = key(number(1, 100000, integer=True))
    metric: str = key(choice(*STAT_NAMES))
    direction: str = key(choice("maximize", "minimize"))
    seed: int = key(number(0, 2**32 - 1, integer=True))
    pruner: str = key(choice("asha", "hyperband", "median", "none"))
    storage: str | None = key(of_type(str, optional=True))
    study_name: str = key(_nonempty)
    heartbeat_seconds: int = key(number(1, 3600, integer=True))
    train_fraction: float = key(_fraction)
    startup_trials: int = key(number(0, 1000, integer=True))


@dataclass(frozen=True)
class Params:
    """A validated params.yaml: `params.train.lr`, `params.data.shapes.seed`, ..."""
    data: DataParams = section(DataParams)
    model: ModelParams = section(ModelParams)
    decode: DecodeParams = section(DecodeParams)
    train: TrainParams = section(TrainParams)
    eval: EvalParams = section(EvalParams)
    visualize: VisualizeParams = section(VisualizeParams)
    tracking: TrackingParams = section(TrackingParams)
    tune: TuneParams = section(TuneParams)

    @classmethod
    def from_dict(cls, values: Any, source: str = "params") -> Params:
        """Validated and typed; UserError lists every problem, one 'source: section.key: problem' per line."""
        problems = validate(values)
        if problems:
            raise UserError("\n".join(f"{source}: {p}" for p in problems))
        return _build(cls, values)

    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """{"train.lr": 0.002, ...}: MLflow params, reports."""
        return flatten(self.to_dict())

    def with_values(self, values: dict[str, Any], source: str = "params") -> Params:
        """A copy with dotted keys set ({"train.lr": 0.004}), validated like the file."""
        d = self.to_dict()
        for dotted, value in values.items():
            *parents, leaf = dotted.split(".")
            node = d
            for part in parents:
                node = node[part]
            node[leaf] = value
        return Params.from_dict(d, source)

    def model_config(self, num_classes: int, decode: bool = False) -> FCOSConfig:
        """The detector's config from the model section (and the decode section when asked: inference;
        training keeps FCOSConfig's decoding defaults so that changing decode never retrains)."""
        values = asdict(self.model) | (asdict(self.decode) if decode else {})
        return FCOSConfig(num_classes=num_classes, **values)

    def train_config(self) -> TrainConfig:
        t = {k: v for k, v in asdict(self.train).items() if k in param_keys(TrainConfig, "train")}
        return TrainConfig(**t, eval_backend=self.eval.backend)


SECTIONS = tuple(f.name for f in fields(Params))


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _build(cls: type, values: dict):
    return cls(**{f.name: _build(f.metadata["section"], values[f.name]) if "section" in f.metadata
                  else values[f.name] for f in fields(cls)})


def _tupled(values: dict) -> dict:
    return {**values, "min_size": tuple(values["min_size"])} if isinstance(values.get("min_size"), list) else values


def _check(cls: type, node: Any, where: str, problems: list[str]) -> None:
    if not isinstance(node, dict):
        problems.append(f"{where or 'params'}: must be a mapping, got {node!r}")
        return
    prefix = f"{where}." if where else ""
    names = [f.name for f in fields(cls)]
    problems += [f"{prefix}{k}: unknown key" for k in node if k not in names]
    library, config = {}, None
    for f in fields(cls):
        if f.name not in node:
            problems.append(f"{prefix}{f.name}: missing")
        elif "section" in f.metadata:
            _check(f.metadata["section"], node[f.name], prefix + f.name, problems)
        elif "rule" in f.metadata:
            message = f.metadata["rule"](node[f.name])
            if message:
                problems.append(f"{prefix}{f.name}: {message}")
        else:
            library[f.name], config = node[f.name], f.metadata["library"]
    if config is not None:
        problems += [f"{prefix}{p}" for p in config.check(_tupled(library))]


def validate(values: Any) -> list[str]:
    """Every problem of a full params dict, one 'section.key: problem' line each."""
    problems: list[str] = []
    _check(Params, values if values is not None else {}, "", problems)
    return problems or _across_sections(values)


def _across_sections(values: dict) -> list[str]:
    """Rules that join keys of different sections (checked once each key is valid on its own)."""
    if values["eval"]["checkpoint"] == "best" and not values["train"]["eval_every"]:
        return ["eval.checkpoint: best needs validation during training (the best epoch is the best validated "
                "one): set train.eval_every > 0, or eval.checkpoint: last"]
    return []
