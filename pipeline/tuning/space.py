"""The search space: a YAML of dotted params.yaml keys -> distributions, checked, sampled and applied."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..errors import UserError

if TYPE_CHECKING:
    from ..params_schema import Params


def load_space(path: str | Path, params: Params) -> dict:
    """{dotted key: {"type": float|int|categorical, ...}}, checked against params.yaml."""
    path = Path(path)
    try:
        space = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: search space file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(space, dict):
        raise UserError(f"{path}: must map dotted params keys to distributions")
    problems, keys = [], params.flat()
    for key, spec in space.items():
        if key not in keys:
            problems.append(f"{path}: {key}: not a params.yaml key")
            continue
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind in ("float", "int"):
            if not all(isinstance(spec.get(b), (int, float)) and not isinstance(spec.get(b), bool)
                       for b in ("low", "high")):
                problems.append(f"{path}: {key}: needs numeric low and high")
            elif spec["low"] > spec["high"]:   # low == high is a fixed value, as Optuna allows
                problems.append(f"{path}: {key}: empty range (low {spec['low']} > high {spec['high']})")
            elif spec.get("log") and spec["low"] <= 0:
                problems.append(f"{path}: {key}: a log range needs low > 0")
        elif kind == "categorical":
            if not spec.get("choices") or not isinstance(spec["choices"], list):
                problems.append(f"{path}: {key}: needs a non-empty choices list")
        else:
            problems.append(f"{path}: {key}: type must be float, int or categorical, got {kind!r}")
    if not space:
        problems.append(f"{path}: the search space is empty")
    if problems:
        raise UserError("\n".join(problems))
    return space


def suggest(trial, space: dict) -> dict:
    out = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            out[key] = trial.suggest_float(key, spec["low"], spec["high"], log=bool(spec.get("log")))
        elif spec["type"] == "int":
            out[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1))
        else:
            out[key] = trial.suggest_categorical(key, spec["choices"])
    return out


def apply_values(params: Params, values: dict) -> Params:
    """A copy of params with dotted-key values set, validated like params.yaml itself."""
    return params.with_values(values, "search space")


def short_params(values: dict) -> str:
    """backbone=resnet34, lr=0.0031, epochs=6 (dotted keys shortened to their last part)."""
    return ", ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                     for k, v in values.items())


def baseline_values(params: Params, space: dict) -> tuple[dict | None, str | None]:
    """The current params' values of the space's keys, the study's first trial (what the defaults score at
    the study's fidelity on its validation split); (None, why) when one lies outside the space."""
    values, current = {}, params.flat()
    for key, spec in space.items():
        v = current[key]
        inside = v in spec["choices"] if spec["type"] == "categorical" else \
            isinstance(v, (int, float)) and not isinstance(v, bool) and spec["low"] <= v <= spec["high"] and \
            (spec["type"] == "float" or float(v).is_integer())
        if not inside:
            return None, f"{key}={v!r} lies outside the search space"
        values[key] = v
    return values, None
