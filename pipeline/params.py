"""params.yaml files: read safely (regular files of bounded size, no key given twice, overlays merged over
their base), validated and typed once (`load_params` -> `Params`, pipeline/params_schema.py), and edited in
place keeping comments (`set_values`)."""
from __future__ import annotations

import copy
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .params_schema import SECTIONS, Params, validate
from .paths import PARAMS

MAX_BYTES = 1_000_000          # a params file is a few KB; this refuses YAML alias bombs before parsing
MAX_NODES = 20_000             # ... and after parsing, counting every value reached through aliases


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
    unknown = [k for k in data if k not in SECTIONS and k != "base"]
    if not unknown:
        return
    names = [k for k in unknown if isinstance(k, str) and re.fullmatch(r"[A-Za-z_][\w-]{0,30}", k)]
    if len(unknown) <= 3 and len(names) == len(unknown):
        raise UserError(f"{path}: {', '.join(names)}: not a section of params.yaml ({', '.join(SECTIONS)})")
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


def load_params(path: str | Path = PARAMS) -> Params:
    """Read (overlays merged), validate and type; UserError lists every problem, one per line, each prefixed
    with the file."""
    return Params.from_dict(read_params(path), str(path))


def device_of(params: Params, section: str = "train"):
    """`<section>.device` (train: training; eval: evaluate, visualize and predict) as a torch.device; a
    clear error for a device torch does not see."""
    import torch
    d, key = getattr(params, section).device, f"{section}.device"
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
    # a null stays `null` (ruamel's round trip writes an empty value, which means the same but shows as a change)
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
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
