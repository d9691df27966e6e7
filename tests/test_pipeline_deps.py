"""dvc.yaml cannot go stale: every module of pipeline/ and fcos/ that a stage's command imports (followed
through every import, module- and function-level, since the stages import lazily) is among the stage's deps
(the file, or a folder above it), and every code path a stage lists exists. A module that cannot change a
stage's outputs by construction is exempted below, by name, with its reason."""
import ast
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from pipeline.params_schema import SECTIONS

# Modules no stage output depends on, whatever they hold.
EXEMPT = {
    "pipeline/cli.py": "argument parsing; it hands the params file to the stage, whose behaviour lives in the "
                       "stage module and params.py",
    "pipeline/errors.py": "the exception class of one-line errors",
    "pipeline/progress.py": "terminal progress bars on stderr",
    "pipeline/provenance.py": "git commit and dataset hash, written only as MLflow tags",
    "pipeline/tracking/": "MLflow side effects (runs, metrics, artifacts); no DVC output is written there",
    "fcos/files.py": "file-write mechanics (a temp file renamed over the target): the bytes are the caller's",
    "fcos/distributed.py": "process-group helpers; a single process (what DVC runs) takes none of their paths",
}
# Where each stage's command starts: its stage module, and the params loading every command goes through.
ENTRY = "pipeline/params.py"


def module_file(name: str) -> Path | None:
    """The file of a dotted module name inside this repository (a package's __init__.py), if any."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_of(path: Path) -> set[Path]:
    """Files of fcos/ and pipeline/ that `path` imports anywhere in it, with the packages above each (Python
    runs their __init__.py first)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] + ".__init__"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:-node.level]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}   # `from pkg import module`
    found = set()
    for name in names:
        if name.split(".")[0] not in ("fcos", "pipeline"):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            if (f := module_file(".".join(parts[:i]))) is not None:
                found.add(f)
    return found


def closure(start: list[Path]) -> set[Path]:
    seen, todo = set(), list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += imports_of(path) - seen
    return seen


def is_empty(path: Path) -> bool:
    """A module with no statement but its docstring (a package marker) cannot change anything."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def stages():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage for name, stage in spec.items() if stage["cmd"].startswith("fcos-exp ")}


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_depends_on_every_module_it_imports(name):
    stage = stages()[name]
    command = stage["cmd"].split()[1]
    start = [ROOT / "pipeline/stages" / f"{command}.py", ROOT / ENTRY]
    modules = sorted(str(p.relative_to(ROOT)) for p in closure(start) if not is_empty(p))
    deps = [str(d) for d in stage["deps"]]
    missing = [m for m in modules if not covered(m, deps) and not covered(m, list(EXEMPT))]
    assert not missing, f"dvc.yaml stage {name}: deps miss {missing}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_lists_no_code_path_that_is_gone(name):
    code = [d for d in stages()[name]["deps"] if str(d).startswith(("fcos", "pipeline"))]
    assert all((ROOT / d).exists() for d in code), [d for d in code if not (ROOT / d).exists()]


def test_the_exemptions_name_real_modules():
    assert all((ROOT / m).exists() for m in EXEMPT), [m for m in EXEMPT if not (ROOT / m).exists()]


def test_the_analysis_sees_lazy_and_relative_imports():
    found = {str(p.relative_to(ROOT)) for p in closure([ROOT / "pipeline/stages/evaluate.py"])}
    # eval_analysis is imported inside run(); fcos.data through `from fcos.data import ...` inside run() too
    assert {"pipeline/eval_analysis.py", "pipeline/artifacts.py", "fcos/data/__init__.py", "fcos/engine.py",
            "pipeline/tracking/run.py"} <= found


# What a Params method reads, by section (pipeline/params_schema.py).
METHOD_READS = {"model_config": ("model",), "train_config": ("train", "eval.backend")}   # + decode if asked
NOT_READ_BY_OUTPUTS = {"tracking", "tune"}   # MLflow side effects and the study: never a stage's output


def params_read(path: Path) -> set[str]:
    """`section.key` (or a whole `section`) that `params.section.key` chains and Params methods read in a file;
    `params` is any name or attribute called params, or a local alias of one of its sections (`d =
    params.data` -> `d.root`)."""
    found, aliases = set(), {}
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            pairs = zip(node.targets[0].elts, node.value.elts) if isinstance(node.targets[0], ast.Tuple) and \
                isinstance(node.value, ast.Tuple) else [(node.targets[0], node.value)]
            for target, v in pairs:
                if isinstance(target, ast.Name) and isinstance(v, ast.Attribute) and _is_params(v.value):
                    aliases[target.id] = v.attr
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "model_config" \
                and any(k.arg == "decode" and getattr(k.value, "value", False) for k in node.keywords):
            found.add("decode")
    inner, alias_values = set(), {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)}
    alias_values |= {id(e) for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Tuple)
                     for e in n.value.elts}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and _is_params(node.value.value):
            inner.add(id(node.value))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if _is_params(node.value) and node.attr in SECTIONS and id(node) not in inner | alias_values:
            found.add(node.attr)                               # a whole section: asdict(params.decode)
        elif isinstance(node.value, ast.Attribute) and _is_params(node.value.value):
            found.add(f"{node.value.attr}.{node.attr}")
        elif isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.add(f"{aliases[node.value.id]}.{node.attr}")
        elif _is_params(node.value) and node.attr in METHOD_READS:
            found.update(METHOD_READS[node.attr])
    return found


def _is_params(node) -> bool:
    return (isinstance(node, ast.Name) and node.id == "params") or \
        (isinstance(node, ast.Attribute) and node.attr == "params")


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_declares_every_param_it_reads(name):
    stage = stages()[name]
    start = [ROOT / "pipeline/stages" / f"{stage['cmd'].split()[1]}.py", ROOT / ENTRY]
    modules = [p for p in closure(start) if not covered(str(p.relative_to(ROOT)), list(EXEMPT))]
    read = {k for p in modules for k in params_read(p)}
    read = {k for k in read if k.split(".")[0] not in NOT_READ_BY_OUTPUTS}
    declared = [str(p) for p in stage.get("params", [])]
    missing = sorted(k for k in read if not any(k == d or k.startswith(d + ".") for d in declared))
    assert not missing, f"dvc.yaml stage {name}: params miss {missing}"


def test_the_params_analysis_sees_chains_aliases_and_methods():
    found = params_read(ROOT / "pipeline/training.py")
    assert {"data.train_difficult", "train.seed", "eval.batch_size", "model", "train"} <= found
    assert "decode" not in found                           # training keeps the default decoding
    assert "decode" in params_read(ROOT / "pipeline/inference.py")
