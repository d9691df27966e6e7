"""The docs stay true to the code: every module docs/architecture.md names exists and holds the names it
cites; every params.yaml key is documented in docs/params.md."""
import re

import pytest
import yaml
from conftest import ROOT

from pipeline.params_schema import flatten

ROW = re.compile(r"^\| (`[^|]+`(?:, `[^|]+`)*) \| (.+) \|$", re.M)


def rows():
    text = (ROOT / "docs/architecture.md").read_text()
    for m in ROW.finditer(text):
        paths = re.findall(r"`([\w/]+(?:\.py|/))`", m.group(1))
        if paths:
            yield paths, m.group(2)


def defines(files, name: str) -> bool:
    pattern = re.compile(rf"^\s*(?:def|class) {name}\b|^{name}\s*[:=]|^(?:from \S+ )?import .*\b{name}\b", re.M)
    return any(pattern.search(f.read_text()) for f in files)


ALL_SOURCES = sorted(ROOT.glob("fcos/**/*.py")) + sorted(ROOT.glob("pipeline/**/*.py"))


@pytest.mark.parametrize("paths,text", list(rows()), ids=lambda v: v[0] if isinstance(v, list) else "")
def test_architecture_rows_name_real_modules_and_names(paths, text):
    files = []
    for path in paths:
        assert (ROOT / path).exists(), path
        files += sorted((ROOT / path).glob("*.py")) if path.endswith("/") else [ROOT / path]
    # names in backticks that look like code: CamelCase, snake_case, UPPER_CASE or called `name(`
    cited = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)(?:\(|`)", text))
    code_like = {n for n in cited if "_" in n or (n[0].isupper() and n[1:].lower() != n[1:]) or f"`{n}(" in text}
    missing = [n for n in sorted(code_like) if not defines(files, n)]
    elsewhere = [n for n in missing if not defines(ALL_SOURCES, n)]
    assert not elsewhere, f"{paths}: {elsewhere} defined nowhere"
    assert len(missing) <= 1, f"{paths}: {missing} not defined in the module the row describes"


def test_every_params_key_is_documented():
    doc = (ROOT / "docs/params.md").read_text()
    for key in flatten(yaml.safe_load((ROOT / "params.yaml").read_text())):
        section, *rest = key.split(".")
        leaf = ".".join(rest)
        assert f"`{leaf}`" in doc or f"`{leaf.split('.')[-1]}`" in doc or f"{leaf.split('.')[0]}.*" in doc \
            or section == "tune", key


SECTIONS = ("data", "model", "decode", "train", "eval", "visualize", "tracking", "tune")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def params_keys() -> set[str]:
    flat = flatten(yaml.safe_load((ROOT / "params.yaml").read_text()))
    return {k for key in flat for k in (".".join(key.split(".")[:i + 1]) for i in range(key.count(".") + 1))}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_params_key_a_doc_names_exists(doc):
    """`section.key` in backticks (also inside `-S key=value` and `key: value`) names a params.yaml key."""
    from fcos import FCOS
    keys = params_keys()
    named = re.findall(rf"(?<![\w./-])((?:{'|'.join(SECTIONS)})\.[a-z_][a-z0-9_.]*[a-z0-9_])(?![\w(])", doc.read_text())
    model = FCOS(num_classes=1, fpn_channels=8, gn_groups=8, head_convs=0)
    python = {n for n in named if n.startswith("model.") and hasattr(model, n.split(".")[1])}   # model.config, ...
    files = {n for n in named if n.rsplit(".", 1)[-1] in ("py", "md", "json", "yaml", "csv", "png")}
    wrong = sorted(set(named) - keys - python - files)
    assert not wrong, f"{doc.name} names params keys that do not exist: {wrong}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_a_doc_runs_exists(doc):
    from typer.main import get_command

    from pipeline.cli import app
    commands = set(get_command(app).commands)
    used = set(re.findall(r"`(?:[^`]*&& )?fcos-exp ([a-z]+)\b", doc.read_text()))
    assert used <= commands | {"exp"}, f"{doc.name}: no such command: {sorted(used - commands)}"


def test_the_checkpoint_keys_are_those_fit_writes(tmp_path):
    """docs/architecture.md's checkpoint section lists the keys of a checkpoint `fit` really writes."""
    import torch

    from fcos import FCOS
    from fcos.config import TrainConfig
    from fcos.engine import fit
    text = (ROOT / "docs/architecture.md").read_text()
    section = text[text.index("### Checkpoint"):text.index("### Callbacks")]
    documented = set(re.findall(r"^- (.*)$", section, re.M) and
                     re.findall(r"`(\w+)`(?=[:,;]| \(| and|$)", "\n".join(re.findall(r"^[- ] .*$", section, re.M))))
    model = FCOS(num_classes=2, fpn_channels=16, gn_groups=8, head_convs=1, min_size=64, max_size=64)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    loader = torch.utils.data.DataLoader(list(zip(images, targets)), batch_size=2, collate_fn=lambda b: tuple(zip(*b)))
    fit(model, loader, TrainConfig(epochs=1, warmup_epochs=0), checkpoint_path=tmp_path / "m.pt", classes=["a", "b"])
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    written = set(ckpt) | set(ckpt["rng"])
    assert written - documented == set(), f"written but not documented: {sorted(written - documented)}"
    undocumented = documented - written - {"cuda", "FCOSConfig", "TrainConfig"}
    assert not undocumented or torch.cuda.is_available(), f"documented but not written: {sorted(undocumented)}"


def test_assign_targets_returns_what_the_architecture_page_says():
    """"matched box index [B, P] (-1 = negative) and the matched box itself [B, P, 4] (x1y1x2y2 pixels)"."""
    import torch

    from fcos.targets import assign_targets
    row = next(t for paths, t in rows() if "fcos/targets.py" in paths)
    assert "[B, P]" in row and "[B, P, 4]" in row and "x1y1x2y2" in row
    points = torch.tensor([[20.0, 20.0], [100.0, 100.0]])
    boxes = torch.tensor([[[10.0, 12.0, 30.0, 34.0]]])
    idx, matched = assign_targets(points, torch.tensor([8.0, 8.0]), torch.tensor([0.0, 0.0]),
                                  torch.tensor([64.0, 64.0]), boxes, torch.tensor([[True]]), 1.5)
    assert idx.tolist() == [[0, -1]] and matched.shape == (1, 2, 4)
    assert matched[0, 0].tolist() == [10.0, 12.0, 30.0, 34.0]
